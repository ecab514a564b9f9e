"""Stage two's inputs at scale (issue 13): it reads the layouts stage one stored instead of probing, and
`prepare`'s copies give the same samples (frame indices, windows, crops, flips) as the originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import write_test_pattern_videos

import distinit.distill.data as distill_data
import distinit.pipeline.video.backends as backends
from distinit.distill.data import TargetClipDataset
from distinit.extract.config import ExtractConfig
from distinit.extract.run import run_extraction
from distinit.pipeline.clips import views
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.prepared import PrepareConfig, run_prepare
from distinit.pipeline.shards import TargetStore, stored_layouts
from distinit.pipeline.video import decode as decode_module
from distinit.pipeline.video.probe import clear_probe_cache

CLIP = ClipSpec(frames=4, stride=2, short_side=32, crop=32)


def _write_videos(folder: Path) -> None:
    write_test_pattern_videos(folder, seconds=3, gop=25)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(videos folder, targets folder, prepared folder) of four 3-s clips."""
    base = tmp_path_factory.mktemp("stage_two")
    _write_videos(base / "videos")
    report = run_extraction(ExtractConfig(data="folder", root=str(base / "videos"), out=str(base / "targets"),
                                          shard_count=2, workers=0, max_frames_per_video=4), show_progress=False)
    run_prepare(PrepareConfig(data="folder", root=str(base / "videos"), out=str(base / "prepared"), short_side=32,
                              gop=8, workers=1), show_progress=False)
    return base / "videos", report.targets_dir, base / "prepared" / "folder"


def _dataset(targets_dir: Path, train: bool = True, **options) -> TargetClipDataset:
    with TargetStore(targets_dir) as store:
        video_ids = sorted(store.video_ids())
    return TargetClipDataset(targets_dir, video_ids, CLIP, train=train, clips_per_video=2, seed=3, **options)


def _no_probing(monkeypatch) -> None:
    def refuse(path, *arguments, **keywords):
        raise AssertionError(f"probed {path}")

    clear_probe_cache()
    monkeypatch.setattr(distill_data, "probe_layout", refuse)
    monkeypatch.setattr(decode_module, "probe_layout", refuse)


@pytest.mark.parametrize("decoder", ["ffmpeg", "pyav"])
def test_stage_two_never_probes_when_layouts_are_stored(extracted, monkeypatch, decoder):
    if backends.unavailable_reason(decoder):
        pytest.skip(backends.unavailable_reason(decoder))
    _, targets_dir, prepared = extracted
    assert len(stored_layouts(targets_dir)) == 4
    _no_probing(monkeypatch)
    for options in ({}, {"prepared": prepared}):
        dataset = _dataset(targets_dir, decoder=decoder, **options)
        for index in range(len(dataset)):
            assert dataset[(index, 1)]["video"].shape == (CLIP.decoded_frames, 32, 32, 3)


def _sample_trace(dataset: TargetClipDataset, monkeypatch) -> list[tuple]:
    """Per sample of two epochs: (video, clip start, crop box, flipped), and the decoded clips."""
    boxes: list[tuple[int, int]] = []
    crop_box = views.crop_box
    monkeypatch.setattr(views, "crop_box", lambda *a, **k: boxes.append(crop_box(*a, **k)) or boxes[-1])
    trace, clips = [], []
    for epoch in (0, 1):
        for index in range(len(dataset)):
            sample = dataset[(index, epoch)]
            trace.append((sample["video_id"], sample["clip_start"], boxes[-1], sample["flipped"]))
            clips.append(sample["video"].numpy().astype(np.int16))
    monkeypatch.undo()
    return trace, clips


def test_prepared_copies_give_the_same_samples_as_the_originals(extracted, monkeypatch):
    _, targets_dir, prepared = extracted
    original, original_clips = _sample_trace(_dataset(targets_dir), monkeypatch)
    copied, copied_clips = _sample_trace(_dataset(targets_dir, prepared=prepared), monkeypatch)
    assert copied == original  # the same windows, crops and flips, sample by sample
    assert any(flipped for *_, flipped in original) and len({start for _, start, *_ in original}) > 2
    # The same frames, re-encoded: pixel values move by compression only.
    differences = [np.abs(a - b).mean() for a, b in zip(original_clips, copied_clips)]
    assert max(differences) < 12, differences


def test_eval_reads_prepared_copies_without_probing(tmp_path, monkeypatch):
    import distinit.evaluate.clips as clips_module
    from dataset_fixtures import make_hmdb51
    from distinit.evaluate.clips import EvaluationClips, TrainingClips
    from distinit.pipeline.datasets import load_dataset
    from distinit.pipeline.prepared import prepared_videos

    _write_videos(tmp_path / "source")
    layout = make_hmdb51(tmp_path / "hmdb", video_source=tmp_path / "source" / "video_1.mp4")
    run_prepare(PrepareConfig(data="hmdb51", root=str(layout.root), out=str(tmp_path / "prepared"), short_side=32,
                              gop=8, workers=1), show_progress=False)
    records = load_dataset("hmdb51", str(layout.root)).records[:4]
    copies = prepared_videos(tmp_path / "prepared" / "hmdb51")
    original = TrainingClips(records, CLIP, seed=1)
    clear_probe_cache()
    monkeypatch.setattr(clips_module, "probe_layout", lambda path, *a, **k: pytest.fail(f"probed {path}"))
    monkeypatch.setattr(decode_module, "probe_layout", lambda path, *a, **k: pytest.fail(f"probed {path}"))
    copied = TrainingClips(records, CLIP, seed=1, prepared=copies)
    views = EvaluationClips(records, CLIP, clips_per_video=2, three_crop=False, prepared=copies)
    for index in range(len(records)):
        assert views[index]["failed"] is None and views[index]["video"].shape[0] == 2
    monkeypatch.undo()
    for index in range(len(records)):
        ours, theirs = original[(index, 2)], copied[(index, 2)]
        assert ours["clip_start"] == theirs["clip_start"]
        assert (ours["video"] - theirs["video"]).abs().mean() < 0.5  # normalised units: compression only


def test_a_prepared_folder_that_does_not_fit_the_run_is_refused(extracted, tmp_path):
    from distinit.pipeline.errors import DistinitError
    from distinit.pipeline.prepared import prepared_videos

    _, targets_dir, prepared = extracted
    with pytest.raises(DistinitError, match="prepared at short side 32, but clips are read at 24"):
        prepared_videos(prepared, short_side=24)
    with pytest.raises(DistinitError, match="was prepared from a file of .* bytes, not the 7 of the video read here"):
        prepared_videos(prepared, sources={"video_0": 7})
    assert len(prepared_videos(prepared, short_side=32, sources=distill_data.video_sizes(TargetStore(targets_dir)))) == 4


def test_decode_on_the_gpu_is_refused_until_the_loader_can_use_it():
    from distinit.distill.config import DistillConfig
    from distinit.evaluate.config import EvalConfig
    from distinit.pipeline.errors import ConfigError

    for config in (DistillConfig, EvalConfig):
        with pytest.raises(ConfigError, match="decode_device 'cuda': decoding on the GPU is not wired"):
            config(decode_device="cuda")
    assert "decoder" not in DistillConfig(decoder="pyav").key_fields()
    assert DistillConfig(decoder="torchcodec").key_fields()["decoder"] == "torchcodec"  # its resize is its own
