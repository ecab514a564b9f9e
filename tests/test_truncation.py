"""Probe once, in stage one (issue 13 item 2): a file cut short is refused with what it declares and holds, stage
one skips it with that reason, and every extracted video's probed layout is stored, verified and read back."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import h5py
import pytest

from distinit.extract.config import ExtractConfig
from distinit.extract.run import run_extraction
from distinit.pipeline.errors import VideoError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.shards import (
    LAYOUTS_NAME, ShardError, ShardWriter, inspect, read_manifest, stored_layouts, verify, verify_shard, write_manifest,
)
from distinit.pipeline.shards.format import VIDEO_LAYOUTS
from distinit.pipeline.video.layout_record import layout_from_record, layout_record
from distinit.pipeline.video.probe import probe, probe_layout
from test_video import LOSSY_CODECS, encode, lossless_frames, noise_frames

TRUNCATED_REASON = r"truncated: declares 4\.0 s \(100 frames\), holds 0\.\d s \(\d+ frames\)"


def _cut(source: Path, target: Path, share: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * share)])
    return target


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """An HMDB-like folder: two intact MPEG-4 AVIs (4 s, 100 frames) and the first 20% of a third."""
    root = tmp_path_factory.mktemp("avi")
    encode(noise_frames(), root / "a_intact.avi", LOSSY_CODECS["mpeg4_bframes.avi"])
    encode(noise_frames()[::-1].copy(), root / "b_intact.avi", LOSSY_CODECS["mpeg4_bframes.avi"])
    whole = encode(noise_frames(), root.parent / "whole.avi", LOSSY_CODECS["mpeg4_bframes.avi"])
    _cut(whole, root / "c_cut.avi", 0.2)
    return root


# ---- the probe -------------------------------------------------------------------------------------


def test_probe_refuses_a_truncated_avi_saying_what_it_declares_and_holds(videos):
    with pytest.raises(VideoError, match=TRUNCATED_REASON) as caught:
        probe(videos / "c_cut.avi")
    assert caught.value.path == str(videos / "c_cut.avi")
    assert "\n" not in str(caught.value)
    assert probe(videos / "a_intact.avi").frame_count == 100


def test_avi_missing_only_its_index_is_kept(videos, tmp_path):
    # Cut right before the trailing index: the RIFF chunk runs past the end, yet every frame is there.
    data = (videos / "a_intact.avi").read_bytes()
    cut = tmp_path / "no_index.avi"
    cut.write_bytes(data[: data.rindex(b"idx1")])
    assert probe(cut).frame_count == 100


def test_a_stale_header_frame_count_alone_rejects_nothing(videos, tmp_path):
    # A writer that got the stream header wrong (1000 frames declared) but wrote the whole file.
    data = bytearray((videos / "a_intact.avi").read_bytes())
    stream_header = data.index(b"strh") + 8
    assert data[stream_header:stream_header + 4] == b"vids"
    assert struct.unpack_from("<I", data, stream_header + 32)[0] == 100
    struct.pack_into("<I", data, stream_header + 32, 1000)
    stale = tmp_path / "stale.avi"
    stale.write_bytes(bytes(data))
    assert probe(stale).frame_count == 100


@pytest.mark.parametrize("share", [0.2, 0.5, 0.8])
def test_probe_refuses_truncated_matroska(tmp_path, share):
    whole = encode(lossless_frames(), tmp_path / "whole.mkv", ["-c:v", "ffv1"])
    with pytest.raises(VideoError, match=r"truncated: declares 1\.6 s, holds"):
        probe(_cut(whole, tmp_path / "cut.mkv", share))


def test_mpeg_ts_declares_nothing_so_a_cut_one_is_a_shorter_video(tmp_path):
    whole = encode(noise_frames(), tmp_path / "whole.ts", LOSSY_CODECS["mpeg2_open_gop.ts"])
    assert 0 < probe(_cut(whole, tmp_path / "cut.ts", 0.5)).frame_count < 100


# ---- stage one -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extracted(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("targets")
    config = ExtractConfig(data="folder", root=str(videos), out=str(out), shard_count=2, workers=0, batch_size=8,
                           max_failure_rate=0.5)
    return run_extraction(config, show_progress=False).targets_dir


def test_stage_one_skips_a_truncated_avi_with_its_reason(extracted):
    manifest = read_manifest(extracted)
    skipped = {entry["video_id"]: entry for entry in manifest["skipped"]}
    assert set(skipped) == {"c_cut"}
    assert skipped["c_cut"]["path"] == "c_cut.avi"
    assert re.fullmatch(TRUNCATED_REASON + r"; .*", skipped["c_cut"]["reason"])  # the probe's one line
    assert manifest["total_videos"] == 2
    assert verify(extracted) == []


def test_stored_layouts_equal_the_probed_ones(extracted, videos):
    layouts = stored_layouts(extracted)
    assert sorted(layouts) == ["a_intact", "b_intact"]
    for video_id, record in layouts.items():
        path = videos / f"{video_id}.avi"
        probed = probe_layout(path)
        assert record == json.loads(json.dumps(layout_record(probed, sha256=sha256_file(path))))  # stage one hashes
        again = layout_from_record(path, record)
        assert again.info == probed.info and list(again.keyframe_indices) == list(probed.keyframe_indices)
    entry = read_manifest(extracted)["layouts"]
    assert entry["file"] == LAYOUTS_NAME and entry["videos"] == 2
    assert "stored video layouts 2" in inspect(extracted)[1]


def test_verify_reports_a_flipped_byte_in_the_layouts_file(extracted, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(extracted, copy)
    layouts_file = copy / LAYOUTS_NAME
    data = bytearray(layouts_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    layouts_file.write_bytes(bytes(data))
    problems = verify(copy)
    assert len(problems) == 1 and LAYOUTS_NAME in problems[0] and "sha256" in problems[0]
    with pytest.raises(ShardError, match="extract --finalize"):
        stored_layouts(copy)
    layouts_file.unlink()
    assert any("missing" in problem or "cannot be read" in problem for problem in verify(copy))


def test_a_folder_sealed_before_layouts_reads_as_none_stored(extracted, tmp_path):
    # An older distinit's folder: no layouts.jsonl, no manifest entry.
    old = tmp_path / "old"
    shutil.copytree(extracted, old)
    (old / LAYOUTS_NAME).unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["layouts"]
    (old / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert stored_layouts(old) == {}
    assert verify(old) == []
    (old / LAYOUTS_NAME).write_text("{}\n")
    assert any("not in the manifest" in problem for problem in verify(old))


def _write_tiny_shard(folder: Path, layouts: dict[str, dict]) -> Path:
    teacher = {"name": "t", "outputs": [{"name": "logits", "shape": [3], "dtype": "float32", "kind": "logits"}]}
    attributes = {"dataset": "d", "stage_key": "0" * 16, "code_version": "extract-2", "sampling": {}}
    path = folder / "shard-00000-of-00001.h5"
    with ShardWriter(path, teachers=[teacher], shard_index=0, shard_count=1, attributes=attributes) as writer:
        writer.append({"video_id": ["v"], "t_seconds": [0.5], "frame_index": [12], "t/logits": [[0.0, 1.0, 2.0]],
                       "t/view_box": [[0.0, 0.0, 1.0, 1.0]]})
        for video_id, record in layouts.items():
            writer.add_layout(video_id, record)
    return path


def test_shards_without_layouts_seal_without_a_layouts_file(tmp_path):
    # Shards as an older writer wrote them (no add_layout): no dataset, no file, no manifest entry.
    (tmp_path / LAYOUTS_NAME).write_text("left by an earlier finalize\n")
    write_manifest(tmp_path, config={}, shards=[_write_tiny_shard(tmp_path, {})])
    assert "layouts" not in read_manifest(tmp_path)
    assert not (tmp_path / LAYOUTS_NAME).exists()
    assert stored_layouts(tmp_path) == {}
    assert verify(tmp_path) == []


def test_verify_shard_reports_a_damaged_layout_dataset(tmp_path):
    path = _write_tiny_shard(tmp_path, {"v": {"fps": 25.0, "keyframes": list(range(0, 5000, 7))}})
    assert verify_shard(path) == []
    with h5py.File(path, "r") as shard:
        offset = shard[VIDEO_LAYOUTS].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 16] ^= 0x40
    path.write_bytes(bytes(data))
    problems = verify_shard(path)
    assert len(problems) == 1 and VIDEO_LAYOUTS in problems[0]
