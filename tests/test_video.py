"""pipeline.video: probe fields, exact frame selection, clips, resizing, and every way a file can be bad.

Synthetic videos are written here from numpy frames: a lossless one (FFV1 in Matroska) whose decoded
frames must equal the source bit for bit, and lossy ones with B-frames and short GOPs (H.264 in MP4,
open-GOP H.264, MPEG-4 Part 2 in AVI, MPEG-2 in MPEG-TS, and a stream-copy cut of an MP4 whose edit list
hides its first decoded frames) checked against one full ffmpeg decode. The exactness tests run for every
decoder backend installed here (the `decoder` fixture; TorchCodec is optional and skipped without it);
tests/test_decoders.py compares the backends with each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from distinit.pipeline.video import VideoError, VideoInfo, ffmpeg_binary, probe, read_clip, read_frames
from distinit.pipeline.video import ffmpeg_decode, segments
from distinit.pipeline.video.backends import unavailable_reason
from distinit.pipeline.video.decode import Segment, frame_index_at, output_size, plan_segments
from distinit.pipeline.video.probe import probe_layout
from distinit.pipeline.video.process import ffmpeg_reason, run_ffmpeg

FPS = 25
WIDTH, HEIGHT = 64, 48
LOSSLESS_FRAMES = 40
LOSSY_FRAMES = 100


def lossless_frames() -> np.ndarray:
    """(40, 48, 64, 3): red encodes the frame index, green and blue a spatial pattern that moves with it."""
    index = np.arange(LOSSLESS_FRAMES)[:, None, None]
    y = np.arange(HEIGHT)[None, :, None]
    x = np.arange(WIDTH)[None, None, :]
    shape = (LOSSLESS_FRAMES, HEIGHT, WIDTH)
    red = np.broadcast_to(index * 6, shape)
    green = np.broadcast_to((x * 4 + index) % 256, shape)
    blue = np.broadcast_to((y * 5 + index * 3) % 256, shape)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def noise_frames() -> np.ndarray:
    """(100, 48, 64, 3) smooth random blobs: every frame far from every other, yet compressible."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 256, size=(LOSSY_FRAMES, HEIGHT // 8, WIDTH // 8, 3))
    return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.uint8)


def encode(frames: np.ndarray, path: Path, codec_arguments: list[str]) -> Path:
    command = [
        ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0",
        *codec_arguments, str(path),
    ]
    subprocess.run(command, input=frames.tobytes(), check=True, timeout=60)
    return path


def decode_everything(path: Path, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    command = [
        ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:V:0",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:",
    ]
    output = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(output, dtype=np.uint8).reshape(-1, height, width, 3)


DECODER_NAMES = ["ffmpeg", "pyav", "torchcodec"]


@pytest.fixture(params=DECODER_NAMES)
def decoder(request) -> str:
    """Each backend; TorchCodec (optional, not pinned) is skipped where it is missing or cannot load FFmpeg."""
    if request.param == "torchcodec":
        pytest.importorskip("torchcodec", exc_type=ImportError)
        if unavailable_reason("torchcodec"):
            pytest.skip(unavailable_reason("torchcodec"))
    return request.param


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def lossless_video(video_folder) -> Path:
    return encode(lossless_frames(), video_folder / "lossless.mkv", ["-c:v", "ffv1"])


LOSSY_CODECS = {
    "h264_bframes.mp4": ["-c:v", "libx264", "-qp", "4", "-g", "10", "-bf", "3", "-pix_fmt", "yuv420p"],
    "h264_open_gop.mp4": [
        "-c:v", "libx264", "-qp", "4", "-pix_fmt", "yuv420p",
        "-x264-params", "keyint=12:min-keyint=12:scenecut=0:bframes=3:b-adapt=0:open-gop=1",
    ],
    "mpeg4_bframes.avi": ["-c:v", "mpeg4", "-q:v", "2", "-g", "10", "-bf", "2", "-pix_fmt", "yuv420p"],
    # MPEG-TS seeks are not exact in ffmpeg: probe marks it unseekable and decoding starts at frame 0.
    "mpeg2_open_gop.ts": ["-c:v", "mpeg2video", "-q:v", "2", "-g", "12", "-bf", "2", "-pix_fmt", "yuv420p"],
}


@pytest.fixture(scope="module", params=sorted(LOSSY_CODECS))
def lossy_video(request, video_folder) -> Path:
    return encode(noise_frames(), video_folder / request.param, LOSSY_CODECS[request.param])


# A stream-copy cut at a time between keyframes (1.3 s = frame 32.5): the MP4 starts at the keyframe before
# the cut and carries an edit list that hides the frames before it (packets flagged discard, negative pts).
EDIT_LIST_CUT_SECONDS = 1.3


@pytest.fixture(scope="module")
def edit_list_video(video_folder) -> Path:
    whole = encode(noise_frames(), video_folder / "before_cut.mp4", LOSSY_CODECS["h264_bframes.mp4"])
    cut = video_folder / "edit_list_cut.mp4"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-ss", str(EDIT_LIST_CUT_SECONDS),
         "-i", str(whole), "-c", "copy", str(cut)],
        check=True, timeout=60,
    )
    return cut


def _nearest_source_frames(frames: np.ndarray) -> list[int]:
    distances = np.abs(frames.astype(np.int16)[:, None] - noise_frames().astype(np.int16)[None]).mean(axis=(2, 3, 4))
    return distances.argmin(axis=1).tolist()


def test_probe_counts_only_the_shown_frames_of_an_edit_list_cut(edit_list_video):
    shown = decode_everything(edit_list_video)
    layout = probe_layout(edit_list_video)
    assert layout.info.frame_count == len(shown) < LOSSY_FRAMES
    first_shown = LOSSY_FRAMES - len(shown)
    assert _nearest_source_frames(shown) == list(range(first_shown, LOSSY_FRAMES))
    assert first_shown % 10 != 0  # the cut is not at a keyframe of the source
    np.testing.assert_allclose(layout.frame_times, np.arange(len(shown)) / FPS)
    assert layout.seekable and 0 < layout.keyframe_indices[0] < 10  # the first shown frame is no keyframe
    assert np.all(np.diff(layout.keyframe_indices) > 0) and layout.keyframe_indices[-1] < len(shown)


def test_probe_parses_discard_flags_and_never_reports_a_time_before_the_start():
    from distinit.pipeline.video.probe import _parse_framecrc

    header = "#tb 0: 1/100\n#codec_id 0: h264\n#dimensions 0: 64x48\n"
    stderr_text = "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':\n"
    # Discarded pre-roll (F=0x5: a keyframe, discarded); a keyframe with side data and no F= field; an edit
    # list starting inside a frame leaves one shown frame at -2 ticks: no seeks then, times from 0.
    lines = ["0, -12, -8, 4, 10, 0x1, F=0x5", "0, -8, -4, 4, 10, 0x1, F=0x4", "0, -4, -2, 4, 10, 0x1, F=0x0",
             "0, 0, 2, 4, 10, 0x1, S=1, 8, 0x2", "0, 4, 6, 4, 10, 0x1, F=0x0"]
    layout = _parse_framecrc("x.mp4", header + "\n".join(lines), stderr_text)
    assert layout.info.frame_count == 3 and not layout.seekable
    np.testing.assert_allclose(layout.frame_times, [0.0, 0.04, 0.08])
    assert layout.keyframe_indices.tolist() == [1]
    layout = _parse_framecrc("x.mp4", header + "\n".join(lines[:2] + lines[3:]), stderr_text)
    assert layout.seekable and layout.frame_times.tolist() == [0.02, 0.06]


@pytest.mark.parametrize("strategy", ["seek", "auto", "sequential"])
def test_edit_list_cut_frames_equal_a_full_decode(edit_list_video, strategy, decoder):
    reference = decode_everything(edit_list_video)
    count = len(reference)
    indices = [count - 1, 0, 1, 2, 5, 9, 10, 11, 12, 13, 20, 21, 33, count - 2, 3]
    frames = read_frames(edit_list_video, [index / FPS for index in indices], strategy=strategy, decoder=decoder)
    np.testing.assert_array_equal(frames, reference[indices])
    everything = read_frames(edit_list_video, [index / FPS for index in range(count)], strategy=strategy,
                             decoder=decoder)
    np.testing.assert_array_equal(everything, reference)
    for start, stride in [(0, 1), (2, 3), (11, 2), (count - 3, 1)]:
        clip = read_clip(edit_list_video, start / FPS, 6, stride=stride, decoder=decoder)
        expected = [min(index, count - 1) for index in range(start, start + 6 * stride, stride)]
        np.testing.assert_array_equal(clip, reference[expected])


def test_probe_reports_exact_fields(lossless_video):
    info = probe(lossless_video)
    assert info == VideoInfo(
        path=str(lossless_video), duration=1.6, fps=25.0, frame_count=40, width=64, height=48, codec="ffv1"
    )


def test_probe_counts_frames_of_lossy_videos(lossy_video):
    info = probe(lossy_video)
    assert (info.frame_count, info.fps, info.width, info.height) == (LOSSY_FRAMES, 25.0, WIDTH, HEIGHT)
    assert info.duration == pytest.approx(4.0)


def test_frame_index_at_boundaries():
    assert [frame_index_at(k / 25, 25.0, 40) for k in range(40)] == list(range(40))
    assert frame_index_at(12 / 25 - 1e-4, 25.0, 40) == 11
    assert frame_index_at(12.5 / 25, 25.0, 40) == 12
    assert frame_index_at(99.0, 25.0, 40) == 39
    assert frame_index_at(1 / (30000 / 1001) * 7, 30000 / 1001, 100) == 7
    with pytest.raises(ValueError):
        frame_index_at(-0.5, 25.0, 40)
    with pytest.raises(ValueError):
        frame_index_at(float("nan"), 25.0, 40)


BOUNDARY_TIMES = [0.0, 12 / 25, 12.5 / 25, 12 / 25 - 1e-4, 39 / 25, 1.599, 7.0, 0.3, 0.1, 0.3, 0.0]


@pytest.mark.parametrize("strategy", ["auto", "sequential", "seek"])
def test_read_frames_equals_source_exactly(lossless_video, strategy, decoder):
    source = lossless_frames()
    expected = [min(int(np.floor(t * FPS + 1e-6)), LOSSLESS_FRAMES - 1) for t in BOUNDARY_TIMES]
    assert expected == [0, 12, 12, 11, 39, 39, 39, 7, 2, 7, 0]
    frames = read_frames(lossless_video, BOUNDARY_TIMES, strategy=strategy, decoder=decoder)
    assert frames.dtype == np.uint8 and frames.shape == (len(BOUNDARY_TIMES), HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(frames, source[expected])


@pytest.mark.parametrize("strategy", ["sequential", "seek"])
def test_every_exact_frame_boundary(lossless_video, strategy, decoder):
    times = [k / FPS for k in range(LOSSLESS_FRAMES)][::-1]
    frames = read_frames(lossless_video, times, strategy=strategy, decoder=decoder)
    np.testing.assert_array_equal(frames, lossless_frames()[::-1])


def test_many_inputs_and_processes_stay_exact(lossless_video, monkeypatch, decoder):
    # Force several inputs per process and several processes on the tiny video (several seeks in process).
    monkeypatch.setattr(segments, "MAX_SELECTED_PER_INPUT", 3)
    monkeypatch.setattr(ffmpeg_decode, "MAX_INPUTS_PER_PROCESS", 2)
    times = [k / FPS for k in (1, 2, 3, 5, 8, 13, 21, 34, 39)]
    frames = read_frames(lossless_video, times, strategy="seek", decoder=decoder)
    np.testing.assert_array_equal(frames, lossless_frames()[[1, 2, 3, 5, 8, 13, 21, 34, 39]])


def test_read_frames_pipes_only_the_requested_frames(lossless_video, monkeypatch):
    requested_bytes: list[int | None] = []
    real_run = ffmpeg_decode.run_ffmpeg

    def spy(command, path, timeout, expected_bytes=None, **options):
        requested_bytes.append(expected_bytes)
        return real_run(command, path, timeout, expected_bytes, **options)

    monkeypatch.setattr(ffmpeg_decode, "run_ffmpeg", spy)
    read_frames(lossless_video, [0.5, 0.1, 0.5], strategy="sequential", decoder="ffmpeg")
    assert requested_bytes == [2 * WIDTH * HEIGHT * 3]


def test_read_frames_with_no_times(lossless_video, decoder):
    assert read_frames(lossless_video, [], decoder=decoder).shape == (0, HEIGHT, WIDTH, 3)


def test_read_frames_rejects_bad_arguments(lossless_video):
    with pytest.raises(ValueError):
        read_frames(lossless_video, [-1.0])
    with pytest.raises(ValueError):
        read_frames(lossless_video, [0.0], strategy="fastest")


@pytest.mark.parametrize(
    "start, num_frames, stride, expected",
    [
        (0.0, 8, 1, list(range(8))),
        (10 / 25, 5, 2, [10, 12, 14, 16, 18]),
        (10.5 / 25, 4, 3, [10, 13, 16, 19]),
        (35 / 25, 4, 2, [35, 37, 39, 39]),  # runs past the end: the last decoded frame repeats
        (39 / 25, 3, 1, [39, 39, 39]),
        (5.0, 2, 1, [39, 39]),
    ],
)
def test_read_clip_equals_source_exactly(lossless_video, start, num_frames, stride, expected, decoder):
    clip = read_clip(lossless_video, start, num_frames, stride=stride, decoder=decoder)
    np.testing.assert_array_equal(clip, lossless_frames()[expected])


def test_read_clip_rejects_bad_arguments(lossless_video):
    with pytest.raises(ValueError):
        read_clip(lossless_video, 0.0, 0)
    with pytest.raises(ValueError):
        read_clip(lossless_video, 0.0, 4, stride=0)


def test_lossy_seeks_land_on_the_right_frame(lossy_video, decoder):
    reference = decode_everything(lossy_video)
    assert len(reference) == LOSSY_FRAMES
    # 9-11, 22-23, 35 and 47 display just before a keyframe (at 12, 24, 36, 48 in the open-GOP file)
    # but decode after it: only decodable from the keyframe before.
    times = [3.99, 0.0, 0.4, 0.44, 11 / 25, 9 / 25, 1.0, 2.36, 2.4, 0.04, 3.5, 0.96, 23 / 25, 35 / 25, 47 / 25, 1.0]
    indices = [frame_index_at(t, FPS, LOSSY_FRAMES) for t in times]
    source = noise_frames().astype(np.int16)
    for strategy in ("seek", "auto", "sequential"):
        frames = read_frames(lossy_video, times, strategy=strategy, decoder=decoder)
        # Nearest source frame: the index must be right even where the codec is lossy.
        distances = np.abs(frames.astype(np.int16)[:, None] - source[None]).mean(axis=(2, 3, 4))
        assert distances.argmin(axis=1).tolist() == indices, strategy
        assert np.abs(frames.astype(np.int16) - reference[indices].astype(np.int16)).max() <= 2, strategy


def test_lossy_clip_after_seek(lossy_video, decoder):
    reference = decode_everything(lossy_video)
    clip = read_clip(lossy_video, 2.5, 6, stride=3, decoder=decoder)
    assert np.abs(clip.astype(np.int16) - reference[62:80:3].astype(np.int16)).max() <= 2


def test_all_frames_in_one_select(lossy_video, decoder):
    # 100 selected frames: deeper than ffmpeg's expression parser allows for a flat sum.
    frames = read_frames(lossy_video, [k / FPS for k in range(LOSSY_FRAMES)], strategy="sequential", decoder=decoder)
    assert np.abs(frames.astype(np.int16) - decode_everything(lossy_video).astype(np.int16)).max() <= 2


def test_output_size():
    assert output_size(64, 48, None) == (64, 48)
    assert output_size(64, 48, 24) == (32, 24)
    assert output_size(64, 48, 96) == (128, 96)  # upscales when asked
    assert output_size(176, 144, 112) == (136, 112)  # 136.9 rounds to the nearest even number
    assert output_size(48, 64, 24) == (24, 32)
    with pytest.raises(ValueError):
        output_size(64, 48, 0)


def test_short_side_resizes_inside_the_decoder(lossless_video, decoder):
    frames = read_frames(lossless_video, [0.0, 1.0], short_side=24, decoder=decoder)
    assert frames.shape == (2, 24, 32, 3)
    # Frame 0 is red 0, frame 25 red 150, everywhere: resizing keeps a flat channel flat. TorchCodec's own
    # resize (bilinear, on RGB) leaves a column of 173 near the right edge: only its median is checked.
    error = np.abs(frames[:, :, :, 0].astype(int) - np.array([0, 150])[:, None, None])
    assert (np.median(error) if decoder == "torchcodec" else error.max()) <= 1
    assert read_clip(lossless_video, 0.0, 3, short_side=96, decoder=decoder).shape == (3, 96, 128, 3)


def test_threads_option(lossless_video, decoder):
    frames = read_frames(lossless_video, [0.2], threads=1, decoder=decoder)
    np.testing.assert_array_equal(frames, lossless_frames()[[5]])


def test_rotated_video_reports_display_size(lossy_video_mp4, video_folder, decoder):
    rotated = video_folder / "rotated.mp4"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-display_rotation", "90",
         "-i", str(lossy_video_mp4), "-c", "copy", str(rotated)],
        check=True, timeout=60,
    )
    info = probe(rotated)
    assert (info.width, info.height) == (HEIGHT, WIDTH)  # ffmpeg turns the frames upright when decoding
    frames = read_frames(rotated, [0.5, 3.0], decoder=decoder)
    assert frames.shape == (2, WIDTH, HEIGHT, 3)
    upright = np.rot90(decode_everything(lossy_video_mp4)[[12, 75]], k=1, axes=(1, 2))
    assert np.abs(frames.astype(np.int16) - upright.astype(np.int16)).max() <= 2


# ---- bad inputs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(video_folder, lossy_video_mp4) -> dict[str, Path]:
    folder = video_folder / "bad"
    folder.mkdir()
    files = {"missing": folder / "missing.mp4", "zero_bytes": folder / "empty.mp4"}
    files["zero_bytes"].write_bytes(b"")
    data = lossy_video_mp4.read_bytes()
    files["truncated"] = folder / "truncated.mp4"
    files["truncated"].write_bytes(data[: int(len(data) * 0.3)])
    files["text"] = folder / "notes.mp4"
    files["text"].write_text("this is not a video\n")
    files["audio_only"] = folder / "tone.m4a"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1",
         "-c:a", "aac", str(files["audio_only"])],
        check=True, timeout=60,
    )
    files["fifo"] = folder / "pipe.mp4"
    os.mkfifo(files["fifo"])
    files["directory"] = folder / "folder.mp4"
    files["directory"].mkdir()
    return files


@pytest.fixture(scope="module")
def lossy_video_mp4(video_folder) -> Path:
    return encode(noise_frames(), video_folder / "for_truncation.mp4", LOSSY_CODECS["h264_bframes.mp4"])


EXPECTED_REASONS = {
    "missing": "no such file",
    "zero_bytes": "empty file",
    "truncated": "moov atom not found",
    "text": "Invalid data found",
    "audio_only": "no video stream",
    "fifo": "named pipe",
    "directory": "directory",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASONS))
@pytest.mark.parametrize("call", ["probe", "read_frames", "read_clip"])
def test_bad_inputs_raise_video_error(bad_files, kind, call, decoder):
    path = bad_files[kind]
    started = time.monotonic()
    with pytest.raises(VideoError) as caught:
        if call == "probe":
            probe(path, timeout=10)
        elif call == "read_frames":
            read_frames(path, [0.0], timeout=10, decoder=decoder)
        else:
            read_clip(path, 0.0, 4, timeout=10, decoder=decoder)
    assert time.monotonic() - started < 5
    assert caught.value.path == str(path)
    assert EXPECTED_REASONS[kind] in caught.value.reason
    assert "\n" not in str(caught.value)


def test_truncated_file_with_index_first_is_rejected(video_folder, lossy_video_mp4):
    faststart = video_folder / "faststart.mp4"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-i", str(lossy_video_mp4), "-c", "copy",
         "-movflags", "+faststart", str(faststart)],
        check=True, timeout=60,
    )
    truncated = video_folder / "faststart_truncated.mp4"
    data = faststart.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(VideoError, match="truncated"):
        probe(truncated)


def test_zeroed_frame_data_is_rejected(video_folder, lossy_video_mp4, decoder):
    # The index (moov) is intact but every coded frame is zeros: nothing decodes.
    faststart = video_folder / "faststart_for_zeroing.mp4"
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-i", str(lossy_video_mp4), "-c", "copy",
         "-movflags", "+faststart", str(faststart)],
        check=True, timeout=60,
    )
    data = bytearray(faststart.read_bytes())
    payload_start = data.find(b"mdat") + 4
    data[payload_start:] = bytes(len(data) - payload_start)
    zeroed = video_folder / "zeroed.mp4"
    zeroed.write_bytes(bytes(data))
    with pytest.raises(VideoError):
        probe(zeroed)
    with pytest.raises(VideoError):
        read_clip(zeroed, 0.0, 4, decoder=decoder)


def test_no_decoded_frames_is_an_error_and_a_short_read_pads(lossless_video, monkeypatch):
    frame_bytes = WIDTH * HEIGHT * 3
    real_run = ffmpeg_decode.run_ffmpeg

    def run_keeping(count):
        def fake(command, path, timeout, expected_bytes=None, **options):
            stdout, stderr_text = real_run(command, path, timeout, expected_bytes, **options)
            return stdout[: count * frame_bytes], stderr_text
        return fake

    monkeypatch.setattr(ffmpeg_decode, "run_ffmpeg", run_keeping(0))
    with pytest.raises(VideoError, match="decoded no frames"):
        read_frames(lossless_video, [0.0, 0.4], decoder="ffmpeg")
    monkeypatch.setattr(ffmpeg_decode, "run_ffmpeg", run_keeping(1))
    frames = read_frames(lossless_video, [0.4, 0.0, 0.8], strategy="sequential", decoder="ffmpeg")
    np.testing.assert_array_equal(frames, lossless_frames()[[0, 0, 0]])


def test_probe_sees_a_replaced_file(lossless_video, tmp_path):
    target = tmp_path / "replaced.mkv"
    shutil.copy(lossless_video, target)
    assert probe(target).frame_count == LOSSLESS_FRAMES
    encode(lossless_frames()[:10], tmp_path / "short.mkv", ["-c:v", "ffv1"])
    os.replace(tmp_path / "short.mkv", target)
    assert probe(target).frame_count == 10


def _child_processes() -> list[str]:
    """ffmpeg children of this process (other children, e.g. multiprocessing's resource tracker, are not ours)."""
    children = []
    for task in Path("/proc/self/task").iterdir():
        children += (task / "children").read_text().split()
    ffmpeg_children = []
    for pid in children:
        try:
            if "ffmpeg" in Path(f"/proc/{pid}/comm").read_text():
                ffmpeg_children.append(pid)
        except OSError:  # exited meanwhile
            pass
    return ffmpeg_children


def test_tiny_timeout_kills_ffmpeg(lossless_video, tmp_path):
    fresh = tmp_path / "fresh.mkv"  # a new file, so probe's cache cannot answer without ffmpeg
    shutil.copy(lossless_video, fresh)
    with pytest.raises(VideoError, match="timed out after"):
        probe(fresh, timeout=0.001)
    probe(lossless_video)
    with pytest.raises(VideoError, match="timed out after 0.001s"):
        read_frames(lossless_video, [0.0, 1.0], timeout=0.001, decoder="ffmpeg")
    assert _child_processes() == []


def test_timeout_covers_a_fifo_ffmpeg_would_block_on(bad_files):
    started = time.monotonic()
    command = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(bad_files["fifo"]), "-f", "null", "-"]
    with pytest.raises(VideoError, match="timed out after 0.5s"):
        run_ffmpeg(command, str(bad_files["fifo"]), timeout=0.5)
    assert time.monotonic() - started < 3
    assert _child_processes() == []


def test_ffmpeg_reason_keeps_the_cause():
    stderr = (
        "[in#0 @ 0x559615da30c0] moov atom not found\n"
        "[in#0 @ 0x559615da2d40] Error opening input: Invalid data found when processing input\n"
        "Error opening input file /data/a.mp4.\n"
        "Error opening input files: Invalid data found when processing input\n"
    )
    expected = "moov atom not found; Error opening input: Invalid data found when processing input"
    assert ffmpeg_reason(stderr, "/data/a.mp4") == expected
    assert ffmpeg_reason("Stream map '0:V:0' matches no streams.\n", "x") == "no video stream"
    assert ffmpeg_reason("", "x") == "ffmpeg failed without an error message"


def test_plan_segments():
    keyframes = np.array([0, 10, 20, 30, 40])
    # Near targets share an input; a far target past a keyframe gets its own, started at that keyframe.
    assert plan_segments([1, 3, 25, 27, 44], keyframes, 2.0) == [
        Segment(0, (1, 3)), Segment(20, (25, 27)), Segment(40, (44,))
    ]
    assert plan_segments([12, 35], keyframes, np.inf) == [Segment(10, (12, 35))]
    assert plan_segments([12, 13], keyframes, -np.inf) == [Segment(10, (12,)), Segment(10, (13,))]
    assert plan_segments([], keyframes, 2.0) == []
