"""Decoder backends (pipeline/video/backends.py): every backend returns the frames of the ffmpeg path.

Parity is checked on the fixtures of tests/test_video.py: the lossless FFV1 video bit for bit at its own
size and resized; the lossy ones (H.264 with B-frames and with open GOPs in MP4, MPEG-4 with B-frames in
AVI, MPEG-2 in MPEG-TS, an MP4 cut by stream copy whose edit list hides its first decoded frames) frame by
frame, each decoded frame named by its nearest frame of one full decode (every noise frame is far from
every other), then pixel for pixel. PyAV scales with the same filter and
flags as the ffmpeg path and must be equal; TorchCodec is equal at the stored size, while its own resize
(bilinear with antialiasing, on RGB) is held to RESIZE_TOLERANCE. TorchCodec seeks from the stored layout
instead of scanning the file: its frames must equal those of its own scanning ("exact") mode. TorchCodec is
optional: its cases skip where it is not installed or cannot load FFmpeg's shared libraries (CI installs both).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from test_video import FPS, LOSSLESS_FRAMES, LOSSY_FRAMES, decoder, lossless_frames  # noqa: F401  (fixtures)
from test_video import bad_files, edit_list_video, lossless_video, lossy_video, lossy_video_mp4, video_folder  # noqa: F401

from distinit.pipeline.errors import ConfigError, DistinitError, VideoError
from distinit.pipeline.video import backends, decode, read_clip, read_frames, slow_path, torchcodec_decode
from distinit.pipeline.video.layout_record import layout_from_record, layout_record
from distinit.pipeline.video.probe import probe_layout
from distinit.pipeline.video.segments import Deadline, DecodePlan, Segment

IN_PROCESS = ["pyav", "torchcodec"]
# TorchCodec's resize against ffmpeg's area/bicubic scale on these blocky noise frames (measured: mean 4.5
# to 6.8, every block edge differs); on real footage (data/demo) the mean is 1.4 to 3.3 levels.
RESIZE_TOLERANCE = 8.0
FRAME_TIMES = [3.99, 0.0, 0.4, 0.44, 11 / 25, 9 / 25, 1.0, 2.36, 2.4, 0.04, 3.5, 0.96, 23 / 25, 35 / 25, 47 / 25, 1.0]


def _skip_without_torchcodec() -> None:
    pytest.importorskip("torchcodec", exc_type=ImportError)
    if backends.unavailable_reason("torchcodec"):
        pytest.skip(backends.unavailable_reason("torchcodec"))


@pytest.fixture(params=IN_PROCESS)
def in_process(request) -> str:
    if request.param == "torchcodec":
        _skip_without_torchcodec()
    return request.param


@pytest.fixture
def fresh_warnings(monkeypatch, caplog):
    """slow_path's warnings as if this process had given none yet, recorded."""
    monkeypatch.setattr(slow_path, "_warned", set())
    caplog.set_level(logging.DEBUG, logger=slow_path.__name__)
    return caplog


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == slow_path.__name__ and record.levelno == logging.WARNING]


def _nearest(frames: np.ndarray, reference: np.ndarray) -> list[int]:
    """For each frame, the index of the closest reference frame (mean absolute difference)."""
    distances = np.abs(frames.astype(np.int16)[:, None] - reference.astype(np.int16)[None]).mean(axis=(2, 3, 4))
    return distances.argmin(axis=1).tolist()


def _assert_same_frames(frames: np.ndarray, reference: np.ndarray, indices: list[int], backend: str, resized: bool):
    assert frames.shape == (len(indices), *reference.shape[1:])
    assert _nearest(frames, reference) == indices
    difference = np.abs(frames.astype(np.int16) - reference[indices].astype(np.int16))
    if backend == "torchcodec" and resized:
        assert difference.mean() <= RESIZE_TOLERANCE
    else:
        assert difference.max() == 0


@pytest.mark.parametrize("short_side", [None, 24, 96])
def test_lossless_parity_with_the_ffmpeg_path(lossless_video, in_process, short_side):
    times = [k / FPS for k in range(LOSSLESS_FRAMES)][::-1]
    reference = read_frames(lossless_video, [k / FPS for k in range(LOSSLESS_FRAMES)], short_side=short_side,
                            decoder="ffmpeg", strategy="sequential")
    if short_side is None:
        np.testing.assert_array_equal(reference, lossless_frames())
    for strategy in ("seek", "auto", "sequential"):
        frames = read_frames(lossless_video, times, short_side=short_side, decoder=in_process, strategy=strategy)
        _assert_same_frames(frames, reference, list(range(LOSSLESS_FRAMES))[::-1], in_process, short_side is not None)


@pytest.mark.parametrize("short_side", [None, 24, 96])
def test_lossy_parity_with_the_ffmpeg_path(lossy_video, in_process, short_side):
    reference = read_frames(lossy_video, [k / FPS for k in range(LOSSY_FRAMES)], short_side=short_side,
                            decoder="ffmpeg", strategy="sequential")
    indices = [decode.frame_index_at(t, FPS, LOSSY_FRAMES) for t in FRAME_TIMES]
    resized = short_side is not None
    for strategy in ("seek", "auto", "sequential"):
        frames = read_frames(lossy_video, FRAME_TIMES, short_side=short_side, decoder=in_process, strategy=strategy)
        _assert_same_frames(frames, reference, indices, in_process, resized)
    # Clips: after a seek, across open-GOP keyframes, and running past the end (the last frame repeats).
    for start, stride, expected in [(2.5, 3, list(range(62, 80, 3))), (0.4, 1, list(range(10, 16))),
                                    (3.8, 2, [95, 97, 99, 99, 99, 99])]:
        clip = read_clip(lossy_video, start, 6, stride=stride, short_side=short_side, decoder=in_process)
        _assert_same_frames(clip, reference, expected, in_process, resized)


@pytest.mark.parametrize("short_side", [None, 24])
def test_edit_list_cut_parity_with_the_ffmpeg_path(edit_list_video, in_process, short_side):
    # Frames decoded but hidden by the edit list are no frames: index 0 is the first shown frame everywhere.
    count = probe_layout(edit_list_video).info.frame_count
    reference = read_frames(edit_list_video, [k / FPS for k in range(count)], short_side=short_side,
                            decoder="ffmpeg", strategy="sequential")
    indices = [count - 1, 0, 1, 4, 9, 10, 11, 12, 20, 33, count - 2, 2]
    resized = short_side is not None
    for strategy in ("seek", "auto", "sequential"):
        frames = read_frames(edit_list_video, [index / FPS for index in indices], short_side=short_side,
                             decoder=in_process, strategy=strategy)
        _assert_same_frames(frames, reference, indices, in_process, resized)
    for start, stride in [(0, 2), (3, 1), (11, 3)]:
        clip = read_clip(edit_list_video, start / FPS, 6, stride=stride, short_side=short_side, decoder=in_process)
        _assert_same_frames(clip, reference, list(range(start, start + 6 * stride, stride)), in_process, resized)


def test_a_given_layout_is_never_probed(lossy_video, decoder, monkeypatch):
    layout = layout_from_record(lossy_video, layout_record(probe_layout(lossy_video)))
    expected_clip = read_clip(lossy_video, 1.0, 4, stride=2, decoder="ffmpeg")
    expected_frames = read_frames(lossy_video, [0.5, 3.0, 0.1], decoder="ffmpeg")

    def refuse(*arguments, **options):
        raise AssertionError("probe_layout called although a layout was given")

    monkeypatch.setattr(decode, "probe_layout", refuse)
    clip = read_clip(lossy_video, 1.0, 4, stride=2, decoder=decoder, layout=layout)
    np.testing.assert_array_equal(clip, expected_clip)
    frames = read_frames(lossy_video, [0.5, 3.0, 0.1], decoder=decoder, layout=layout)
    np.testing.assert_array_equal(frames, expected_frames)


@pytest.mark.parametrize("kind", ["truncated", "text", "audio_only", "missing", "zero_bytes", "directory"])
def test_a_given_layout_of_another_file_still_gives_a_video_error(bad_files, lossy_video_mp4, decoder, kind):
    layout = probe_layout(lossy_video_mp4)  # what a stale record would hold
    with pytest.raises(VideoError) as caught:
        read_clip(bad_files[kind], 0.0, 4, decoder=decoder, layout=layout, timeout=10)
    assert caught.value.path == str(bad_files[kind])
    assert "\n" not in str(caught.value)


def test_a_layout_longer_than_the_file_repeats_the_last_frame(lossless_video, tmp_path, decoder):
    from test_video import encode

    short = encode(lossless_frames()[:20], tmp_path / "short.mkv", ["-c:v", "ffv1"])
    layout = probe_layout(lossless_video)  # 40 frames; the file has 20
    frames = read_frames(short, [0.2, 1.2, 0.3], decoder=decoder, layout=layout)
    np.testing.assert_array_equal(frames, lossless_frames()[[5, 7, 7]])
    clip = read_clip(short, 0.7, 4, decoder=decoder, layout=layout)
    np.testing.assert_array_equal(clip, lossless_frames()[[17, 18, 19, 19]])


def test_in_process_timeout(lossless_video, in_process):
    layout = probe_layout(lossless_video)
    with pytest.raises(VideoError, match="timed out after 0.001s"):
        read_frames(lossless_video, [0.0, 1.0], timeout=0.001, decoder=in_process, layout=layout)


def test_decoder_option_errors(lossless_video, monkeypatch):
    with pytest.raises(ConfigError, match="'fastest' is not one of auto, torchcodec, pyav, ffmpeg"):
        read_clip(lossless_video, 0.0, 2, decoder="fastest")
    with pytest.raises(ConfigError, match="decode_device 'tpu'"):
        read_frames(lossless_video, [0.0], decode_device="tpu")
    with pytest.raises(ConfigError, match="needs decoder 'torchcodec'"):
        read_clip(lossless_video, 0.0, 2, decoder="pyav", decode_device="cuda")
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: "not installed" if name != "ffmpeg" else None)
    with pytest.raises(DistinitError, match="'torchcodec' cannot run here: not installed; pip install torchcodec"):
        read_clip(lossless_video, 0.0, 2, decoder="torchcodec")
    with pytest.raises(DistinitError, match="pip install av=="):
        read_clip(lossless_video, 0.0, 2, decoder="pyav")
    with pytest.raises(DistinitError, match="'torchcodec' cannot run here"):
        read_clip(lossless_video, 0.0, 2, decode_device="cuda")
    assert backends.resolve_decoder("auto") == "ffmpeg"
    np.testing.assert_array_equal(read_clip(lossless_video, 0.0, 2), lossless_frames()[:2])


def test_auto_picks_torchcodec_only_where_its_pixels_are_exact(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: None)
    assert backends.resolve_decoder("auto", resizing=False) == "pyav"  # the faster one on CPU (bench/kinetics_like.py)
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: "not installed" if name == "pyav" else None)
    assert backends.resolve_decoder("auto", resizing=False) == "torchcodec"
    assert backends.resolve_decoder("auto", resizing=True) == "ffmpeg"
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: None)
    assert backends.resolve_decoder("auto", resizing=True) == "pyav"
    assert backends.resolve_decoder("auto", "cuda", resizing=True) == "torchcodec"
    assert backends.resolve_decoder("torchcodec", resizing=True) == "torchcodec"


def test_torchcodec_hands_inexact_layouts_and_its_failures_to_pyav(video_folder, lossless_video, monkeypatch,
                                                                   fresh_warnings):
    from test_video import LOSSY_CODECS, encode, noise_frames

    transport_stream = encode(noise_frames(), video_folder / "handoff.ts", LOSSY_CODECS["mpeg2_open_gop.ts"])
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: None)

    def refuse(*arguments, **options):
        raise AssertionError("torchcodec asked to seek in a file whose seeks are not exact")

    monkeypatch.setattr(torchcodec_decode, "decode_segments", refuse)
    expected = read_clip(transport_stream, 2.0, 4, decoder="ffmpeg")
    for _ in range(2):
        np.testing.assert_array_equal(read_clip(transport_stream, 2.0, 4, decoder="torchcodec"), expected)

    def fail(path, *arguments, **options):
        raise VideoError(path, "Requested next frame while there are no more frames left to decode.")

    monkeypatch.setattr(torchcodec_decode, "decode_segments", fail)
    for _ in range(2):
        np.testing.assert_array_equal(read_clip(lossless_video, 1.0, 3, decoder="torchcodec"), lossless_frames()[25:28])
    # One warning per kind of hand-off (this process), whatever the number of clips; the rest at debug level.
    cannot_seek, failed = [text for text in _warnings(fresh_warnings) if "torchcodec" in text]
    assert "seeks are not exact in this file; pyav decodes it instead of torchcodec" in cannot_seek
    assert "torchcodec failed (Requested next frame" in failed and "pyav decodes it instead" in failed


def _layout_and_scan_frames(path, layout, indices) -> tuple[np.ndarray, np.ndarray]:
    options = {"dimension_order": "NHWC", "num_ffmpeg_threads": 1, "transforms": None}
    from_layout = torchcodec_decode._frames_from_layout(str(path), layout, indices, "cpu", options)
    after_scan = torchcodec_decode._frames_after_scan(str(path), indices, "cpu", options)
    return from_layout.numpy(), after_scan.numpy()


@pytest.mark.parametrize("which", ["h264_bframes.mp4", "h264_open_gop.mp4", "edit_list_cut.mp4"])
def test_torchcodec_from_the_stored_layout_equals_its_scanning_mode(which, video_folder, edit_list_video):
    _skip_without_torchcodec()
    from test_video import LOSSY_CODECS, encode, noise_frames

    # This TorchCodec takes the layout as tensors (a version without that would scan every file: fail here).
    assert torchcodec_decode.layout_seeking_problem() is None
    path = edit_list_video if which == "edit_list_cut.mp4" else encode(noise_frames(), video_folder / f"layout_{which}",
                                                                       LOSSY_CODECS[which])
    layout = probe_layout(path)
    count = layout.info.frame_count
    # Not the open-GOP file's last frames: TorchCodec cannot seek there in either mode (backends.py).
    for indices in (list(range(count - 4)), [3, count // 2, count // 2 + 1, count - 6], [count - 5]):
        from_layout, after_scan = _layout_and_scan_frames(path, layout, indices)
        np.testing.assert_array_equal(from_layout, after_scan)


def test_torchcodec_places_a_layout_on_timestamps_that_do_not_start_at_zero(video_folder, monkeypatch,
                                                                            fresh_warnings):
    _skip_without_torchcodec()
    from test_video import encode

    # Stored times count from the file's start (0.0 here); the stream's own timestamps start at 3.5 s.
    path = encode(lossless_frames(), video_folder / "starts_late.mkv", ["-c:v", "ffv1", "-output_ts_offset", "3.5"])
    layout = probe_layout(path)
    assert layout.frame_times[0] == 0.0

    def refuse(*arguments, **options):
        raise AssertionError("TorchCodec scanned the file although its layout was given")

    monkeypatch.setattr(torchcodec_decode, "_frames_after_scan", refuse)
    frames = read_frames(path, [0.0, 1.0, 0.4, 1.56], decoder="torchcodec", layout=layout)
    np.testing.assert_array_equal(frames, lossless_frames()[[0, 25, 10, 39]])
    assert not _warnings(fresh_warnings)  # no hand-off to PyAV either


def test_torchcodec_refuses_a_layout_whose_times_are_not_the_file_s(lossless_video):
    _skip_without_torchcodec()
    layout = probe_layout(lossless_video)
    shifted = layout.frame_times.copy()
    shifted[10:] += 0.5 / FPS  # frames 10 on stored half a frame late
    plan = DecodePlan(str(lossless_video), dataclasses.replace(layout, frame_times=shifted), (Segment(0, (5, 12, 13)),),
                      (layout.info.width, layout.info.height), 1, Deadline(30))
    with pytest.raises(VideoError, match="decoded frame 12 at tick .*, where the stored layout has it at"):
        torchcodec_decode.decode_segments(plan)


def test_a_torchcodec_without_tensor_frame_mappings_scans_and_warns_once(lossless_video, monkeypatch, fresh_warnings):
    _skip_without_torchcodec()
    monkeypatch.setattr(torchcodec_decode, "layout_seeking_problem", lambda: "this TorchCodec has none (test)")
    for _ in range(2):
        np.testing.assert_array_equal(read_clip(lossless_video, 1.0, 3, decoder="torchcodec"), lossless_frames()[25:28])
    warned, = _warnings(fresh_warnings)
    assert "TorchCodec scans the file (this TorchCodec has none (test))" in warned


@pytest.mark.gpu
def test_torchcodec_on_cuda(lossy_video):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchcodec", exc_type=ImportError)
    if not torch.cuda.is_available() or backends.unavailable_reason("torchcodec"):
        pytest.skip("needs a CUDA device and a working TorchCodec")
    reference = read_frames(lossy_video, [k / FPS for k in range(LOSSY_FRAMES)], decoder="ffmpeg")
    clip = read_clip(lossy_video, 2.5, 6, stride=3, decoder="torchcodec", decode_device="cuda")
    assert clip.is_cuda and clip.dtype == torch.uint8 and tuple(clip.shape) == (6, *reference.shape[1:])
    # NVDEC's own YUV to RGB conversion: the same frames, pixels within a few levels.
    _assert_same_frames(clip.cpu().numpy(), reference, list(range(62, 80, 3)), "torchcodec", resized=True)
