"""The clip hot path from decoder to batch (issue 21 item 5): one host copy, the flip and permute on the device, PyAV's
filter graphs kept per process and thread, and a warning once per process when decoding falls back to frame 0."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_decoders import _warnings, fresh_warnings  # noqa: F401  (fresh_warnings: a fixture)
from torch.utils._python_dispatch import TorchDispatchMode

from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, Normalisation, rgb_to_tensor
from distinit.pipeline.clips.views import crop_frames, flip_frames, rgb_clip_tensor, video_to_device
from distinit.pipeline.video import ffmpeg_binary, pyav_decode, read_clip
from distinit.pipeline.video.probe import probe_layout

IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CROP = 8


# ---------------------------------------------------------------------------------------------- the batch
def _old_batch(clips: list[np.ndarray], flips: list[bool]) -> torch.Tensor:
    """The path before: mirrored on the host, copied to (3, T, H, W), collated."""
    mirrored = [clip[:, :, ::-1] if flip else clip for clip, flip in zip(clips, flips)]
    return torch.stack([torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2))) for clip in mirrored])


def _old_normalise(video: torch.Tensor, normalisation: Normalisation, memory_format) -> torch.Tensor:
    """normalise_video before: (B, 3, T, H, W) uint8 -> float32."""
    mean = torch.tensor(normalisation.mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
    std = torch.tensor(normalisation.std, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return video.to(torch.float32, memory_format=memory_format).div_(torch.full((), 255.0)).sub_(mean).div_(std)


def _random_crops(seed: int, count: int) -> tuple[list[np.ndarray], list[bool]]:
    """`count` crop views of random decoded clips (T, H, W, 3) at random offsets, and random flips (some of each)."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (3, 11, 13, 3), dtype=np.uint8) for _ in range(count)]
    crops = [crop_frames(clip, int(rng.integers(4)), int(rng.integers(6)), CROP) for clip in frames]
    return crops, [index % 2 == 1 for index in range(count)]


def test_device_flip_and_permute_give_the_normalised_values_of_the_host_flip():
    crops, flips = _random_crops(0, 4)
    batch = torch.utils.data.default_collate([{"video": rgb_clip_tensor(crop), "flipped": flip}
                                              for crop, flip in zip(crops, flips)])
    assert batch["video"].shape == (4, 3, CROP, CROP, 3) and batch["flipped"].tolist() == flips
    old = _old_batch(crops, flips)
    for normalisation in (VIDEO_NORMALISATION, IMAGENET):
        for channels_last, memory_format in ((False, torch.contiguous_format), (True, torch.channels_last_3d)):
            new = video_to_device(batch["video"], torch.device("cpu"), normalisation,
                                          channels_last=channels_last, flipped=batch["flipped"])
            assert new.is_contiguous(memory_format=memory_format)
            assert torch.equal(new, _old_normalise(old, normalisation, memory_format))
        host = torch.stack([rgb_to_tensor(flip_frames(crop) if flip else crop, normalisation)
                            for crop, flip in zip(crops, flips)])
        assert torch.equal(video_to_device(batch["video"], torch.device("cpu"), normalisation,
                                                   flipped=batch["flipped"]), host)
    unflipped = video_to_device(batch["video"], torch.device("cpu"), IMAGENET)
    assert torch.equal(unflipped, _old_normalise(_old_batch(crops, [False] * 4), IMAGENET, torch.contiguous_format))


class _OperatorLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_a_channels_last_batch_is_normalised_in_one_conversion_without_a_copy():
    crops, _ = _random_crops(1, 2)
    video = torch.stack([rgb_clip_tensor(crop) for crop in crops])  # (B, T, H, W, 3)
    video_to_device(video, torch.device("cpu"), VIDEO_NORMALISATION)  # its constants, made once
    with _OperatorLog() as log:
        video_to_device(video, torch.device("cpu"), VIDEO_NORMALISATION, channels_last=True)
    assert log.names == ["permute", "_to_copy", "div_", "sub_", "div_"]  # a view, the float pass, in place after
    none, second = torch.tensor([False, False]), torch.tensor([False, True])
    with _OperatorLog() as log:  # nothing flipped: no mirror pass either
        video_to_device(video, torch.device("cpu"), VIDEO_NORMALISATION, flipped=none)
    assert log.names == ["permute", "_to_copy", "div_", "sub_", "div_"]
    with _OperatorLog() as log:  # one clip flipped: it alone is mirrored (in uint8), on its way into the floats
        video_to_device(video, torch.device("cpu"), VIDEO_NORMALISATION, flipped=second)
    assert log.names.count("flip") == 1 and log.names.count("copy_") == 2 and "_to_copy" not in log.names


class _Crops(torch.utils.data.Dataset):
    def __init__(self, crops, flips):
        self.crops, self.flips = crops, flips

    def __len__(self):
        return len(self.crops)

    def __getitem__(self, index):
        return {"video": rgb_clip_tensor(self.crops[index]), "flipped": self.flips[index]}


def test_a_worker_collates_crop_views_into_the_batch():
    crops, flips = _random_crops(2, 4)
    loader = torch.utils.data.DataLoader(_Crops(crops, flips), batch_size=2, num_workers=1)
    batches = list(loader)
    videos = torch.cat([batch["video"] for batch in batches])
    assert torch.equal(videos, torch.from_numpy(np.stack(crops)))
    on_device = torch.cat([video_to_device(batch["video"], torch.device("cpu"), VIDEO_NORMALISATION,
                                                   flipped=batch["flipped"]) for batch in batches])
    expected = _old_normalise(_old_batch(crops, flips), VIDEO_NORMALISATION, torch.contiguous_format)
    assert torch.equal(on_device, expected)


# ---------------------------------------------------------------------------------------------- PyAV
FPS, FRAMES = 25, 48


def _encode(path: Path, size: str) -> Path:
    command = [ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}",
               "-frames:v", str(FRAMES), "-c:v", "libx264", "-g", "8", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("hot_path")
    return [_encode(folder / "wide.mp4", "96x64"), _encode(folder / "small.mp4", "48x32")]


def _own_graphs() -> dict:
    return pyav_decode._graphs_by_thread.get((os.getpid(), threading.get_ident()), {})


def test_pyav_builds_a_graph_per_kind_of_video_and_keeps_the_pixels(videos, monkeypatch):
    monkeypatch.setattr(pyav_decode, "_graphs_by_thread", {})
    built = []
    build = pyav_decode._build_graph
    monkeypatch.setattr(pyav_decode, "_build_graph",
                        lambda frame, size, threads: built.append((frame.width, size)) or build(frame, size, threads))
    expected = {(path, start): read_clip(path, start, 4, stride=2, short_side=24, decoder="ffmpeg")
                for path in videos for start in (0.0, 0.84)}
    for _ in range(2):
        for (path, start), frames in expected.items():
            assert np.array_equal(read_clip(path, start, 4, stride=2, short_side=24, decoder="pyav"), frames)
    assert sorted(built) == [(48, (36, 24)), (96, (36, 24))]  # one per input size, built once
    assert len(_own_graphs()) == 2
    monkeypatch.setattr(pyav_decode, "CACHED_GRAPHS", 1)  # a full cache drops its least recently used graph
    read_clip(videos[0], 0.0, 2, short_side=20, decoder="pyav")
    assert len(_own_graphs()) == 1 and len(built) == 3


def _decode_in_child(path: str) -> tuple[bytes, int]:
    frames = read_clip(path, 0.84, 4, stride=2, short_side=24, decoder="pyav")
    return frames.tobytes(), len(_own_graphs())


def test_a_forked_worker_builds_its_own_graphs(videos):
    parent = read_clip(videos[0], 0.84, 4, stride=2, short_side=24, decoder="pyav")  # the parent now holds a graph
    assert _own_graphs()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child_bytes, child_graphs = pool.apply(_decode_in_child, (str(videos[0]),))
    assert child_bytes == parent.tobytes() and child_graphs == 1


def test_rows_a_short_video_did_not_decode_repeat_the_row_before():
    frames = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(3, axis=3)
    filled = np.array([False, True, False, False, True])
    repaired = pyav_decode._fill_missing(frames.copy(), filled, "clip.mp4")
    assert repaired[:, 0, 0, 0].tolist() == [1, 1, 1, 1, 4]


# ---------------------------------------------------------------------------------------------- slow paths
@pytest.mark.parametrize("decoder", ["ffmpeg", "pyav"])
def test_a_layout_that_cannot_seek_warns_once_per_process(videos, fresh_warnings, decoder):
    layout = dataclasses.replace(probe_layout(videos[0]), seekable=False)
    read_clip(videos[0], 0.0, 4, stride=2, layout=layout, decoder=decoder)  # from frame 0 anyway: no warning
    assert not _warnings(fresh_warnings)
    expected = read_clip(videos[0], 1.2, 4, stride=2, decoder=decoder)
    for start in (1.2, 1.2):
        assert np.array_equal(read_clip(videos[0], start, 4, stride=2, layout=layout, decoder=decoder), expected)
    warned, = _warnings(fresh_warnings)
    assert "seeks are not exact" in warned and "decoding 30 frames before" in warned and "distinit prepare" in warned


def test_an_inexact_pyav_seek_warns_once_and_decodes_from_the_start(videos, fresh_warnings, monkeypatch):
    expected = read_clip(videos[0], 1.2, 4, stride=2, decoder="ffmpeg")
    monkeypatch.setattr(pyav_decode._FrameReader, "_seconds", lambda self, frame: None)  # cannot tell where it landed
    for _ in range(2):
        assert np.array_equal(read_clip(videos[0], 1.2, 4, stride=2, decoder="pyav"), expected)
    warned, = _warnings(fresh_warnings)
    assert "seek to frame 24 was not exact; decoding from the start" in warned and "distinit prepare" in warned
