"""The sharded HDF5 target cache: round trip, determinism, atomic writes, verify, inspect, fork safety."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from distinit.pipeline.errors import DistinitError
from distinit.pipeline.shards.checksum import checksum_path, recorded_checksum
from distinit.pipeline.shards import (
    FORMAT_VERSION,
    ShardError,
    ShardWriter,
    TargetStore,
    compute_stage_key,
    inspect,
    partition_videos,
    read_manifest,
    shard_files,
    shard_name,
    temporary_files,
    verify,
    verify_shard,
    write_manifest,
)

CLASS_NAMES = [f"class {index}" for index in range(10)]
KEYPOINT_NAMES = [f"keypoint {index}" for index in range(17)]
CLASSIFIER = {
    "name": "fake-classifier",
    "backend": "test",
    "weights_sha256": "ab" * 32,
    "input_size": 224,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "outputs": [
        {"name": "logits", "shape": [10], "dtype": "float32", "kind": "logits", "meaning": "10-way logits", "class_names": CLASS_NAMES}
    ],
}
KEYPOINTS = {
    "name": "fake-keypoints",
    "backend": "test",
    "weights_sha256": "cd" * 32,
    "input_size": [64, 48],
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "outputs": [
        {"name": "keypoints", "shape": [17, 3], "dtype": "float16", "kind": "keypoints", "meaning": "x, y, confidence",
         "class_names": KEYPOINT_NAMES, "attributes": {"heatmap_grid": 4, "heatmap_sigma_cells": 1.0}},
        {"name": "person_present", "shape": [], "dtype": "uint8", "kind": "flag", "meaning": "1 if a person", "class_names": None},
        {"name": "num_people", "shape": [], "dtype": "int16", "kind": "count", "meaning": "people seen", "class_names": None},
    ],
}
TEACHERS = [CLASSIFIER, KEYPOINTS]
ATTRIBUTES = {"dataset": "demo", "stage_key": "0123456789abcdef", "code_version": "extract-1", "sampling": {"frames_per_second": 2.0}}
VIDEOS = [f"video_{index:02d}" for index in range(7)]
# A centre-crop teacher's view of a 16:9 frame at short side 256 (455 x 256: columns 116..340, rows 16..240), and of
# a 4:3 one (341 x 256: columns 58..282); a whole-frame teacher's.
WIDE_BOX, NARROW_BOX = (116 / 455, 16 / 256, 340 / 455, 240 / 256), (58 / 341, 16 / 256, 282 / 341, 240 / 256)
WHOLE_FRAME = (0.0, 0.0, 1.0, 1.0)


def video_rows(video_id: str, frames: int = 5, reverse: bool = False) -> dict:
    """Rows of one fake video; frame k's top class is k % 10 and the person is present on even frames."""
    rng = np.random.default_rng(zlib.crc32(video_id.encode()))
    order = list(range(frames))[::-1] if reverse else list(range(frames))
    logits = rng.normal(0, 1, (frames, 10)).astype(np.float32)
    logits[np.arange(frames), np.array(order, dtype=np.int64) % 10] += 6.0
    present = np.array([k % 2 == 0 for k in order], dtype=np.uint8)
    keypoints = rng.random((frames, 17, 3)).astype(np.float32) * present[:, None, None]  # nobody: all zero
    return {
        "video_id": [video_id] * frames,
        "t_seconds": np.array([0.5 * k + 0.25 for k in order]),
        "frame_index": np.array([15 * k for k in order]),
        "fake-classifier/logits": logits,
        "fake-keypoints/keypoints": keypoints,
        "fake-keypoints/person_present": present,
        "fake-keypoints/num_people": np.array([k % 3 for k in order], dtype=np.int16),
        # Odd-numbered videos are 16:9, the others 4:3: the classifier's view depends on the video's shape.
        "fake-classifier/view_box": np.tile(np.float32(WIDE_BOX if zlib.crc32(video_id.encode()) % 2 else NARROW_BOX),
                                            (frames, 1)),
        "fake-keypoints/view_box": np.tile(np.float32(WHOLE_FRAME), (frames, 1)),
    }


def concatenate(parts: list[dict]) -> dict:
    return {key: (sum((part[key] for part in parts), []) if key == "video_id" else np.concatenate([part[key] for part in parts])) for key in parts[0]}


def write_shard(path: Path, index: int, count: int, rows: dict, batch: int | None = None) -> Path:
    with ShardWriter(path, teachers=TEACHERS, shard_index=index, shard_count=count, attributes=ATTRIBUTES) as writer:
        total = len(rows["video_id"])
        step = batch or max(total, 1)
        for start in range(0, total, step):
            writer.append({key: values[start : start + step] for key, values in rows.items()})
    return path


def build_store(folder: Path, shard_count: int = 2, frames: int = 5) -> dict[str, dict]:
    """A finished cache in `folder`; returns each video's rows as written."""
    written = {}
    paths = []
    for index, video_ids in enumerate(partition_videos(VIDEOS, shard_count)):
        parts = [video_rows(video_id, frames, reverse=video_id == "video_03") for video_id in video_ids]
        written.update(zip(video_ids, parts))
        rows = concatenate(parts) if parts else concatenate([video_rows("x", 0)])
        paths.append(write_shard(folder / shard_name(index, shard_count), index, shard_count, rows))
    write_manifest(folder, config={"frames_per_second": 2.0}, shards=paths, skipped=[{"video_id": "bad", "path": "/x/bad.mp4", "reason": "corrupt"}])
    return written


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "targets" / "demo" / "0123456789abcdef"
    build_store(folder)
    return folder


def as_stored(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float16).astype(np.float32)


# ---------------------------------------------------------------- round trip
def test_round_trip_by_row_and_by_video(tmp_path: Path):
    folder = tmp_path / "cache"
    written = build_store(folder)
    with TargetStore(folder) as store:
        assert len(store) == 5 * len(VIDEOS)
        assert store.video_ids() == sorted(VIDEOS)
        assert store.output_names == [
            "fake-classifier/logits",
            "fake-keypoints/keypoints",
            "fake-keypoints/person_present",
            "fake-keypoints/num_people",
        ]
        assert store.teachers[0] == CLASSIFIER and store.teachers[1] == KEYPOINTS
        seen = set()
        for index in range(len(store)):
            row = store.row(index)
            expected = written[row["video_id"]]
            position = int(np.nonzero(expected["t_seconds"] == row["t_seconds"])[0][0])
            assert row["frame_index"] == expected["frame_index"][position]
            for key in store.output_names:
                assert row[key].dtype == np.float32
                np.testing.assert_array_equal(row[key], as_stored(expected[key][position]))
            seen.add((row["video_id"], row["t_seconds"]))
        assert len(seen) == len(store)
        for video_id, expected in written.items():
            rows = store.rows_for_video(video_id)
            order = np.argsort(expected["t_seconds"])
            assert rows["video_id"] == [video_id] * 5
            np.testing.assert_array_equal(rows["t_seconds"], expected["t_seconds"][order])
            np.testing.assert_array_equal(rows["frame_index"], expected["frame_index"][order])
            for key in store.output_names:
                np.testing.assert_array_equal(rows[key], as_stored(expected[key][order]))
        indices = [14, 0, 14, len(store) - 1, 30]  # repeats; shard 0 read scattered, shard 1 as one slice
        picked = store.rows(indices)
        for position, index in enumerate(indices):
            row = store.row(index)
            assert picked["video_id"][position] == row["video_id"]
            assert picked["t_seconds"][position] == row["t_seconds"]
            for key in store.output_names:
                np.testing.assert_array_equal(picked[key][position], row[key])


def test_view_boxes_round_trip_per_row_and_per_video(tmp_path: Path):
    folder = tmp_path / "cache"
    written = build_store(folder)
    with TargetStore(folder) as store:
        assert store.view_box_keys == {"fake-classifier": "fake-classifier/view_box",
                                       "fake-keypoints": "fake-keypoints/view_box"}
        # Boxes are no output: rows, heads and losses never see them.
        assert not any(key.endswith("view_box") for key in store.output_names + list(store.rows([0])))
        shapes = set()
        for video_id, expected in written.items():
            boxes = store.view_boxes_for_video(video_id)
            assert set(boxes) == {"fake-classifier", "fake-keypoints"}
            for teacher, values in boxes.items():
                assert values.dtype == np.float32 and values.shape == (5, 4)
                # float32 on disk: the box comes back exactly as written, not rounded to float16.
                np.testing.assert_array_equal(values, expected[f"{teacher}/view_box"])
            shapes.add(tuple(boxes["fake-classifier"][0]))
        assert shapes == {tuple(np.float32(WIDE_BOX)), tuple(np.float32(NARROW_BOX))}
        indices = [14, 0, 14, len(store) - 1]
        picked = store.view_boxes(indices)
        for position, index in enumerate(indices):
            video_id = store.row(index)["video_id"]
            np.testing.assert_array_equal(picked["fake-classifier"][position], written[video_id]["fake-classifier/view_box"][0])
        assert store.view_boxes([])["fake-keypoints"].shape == (0, 4)


def test_file_layout_dtypes_and_attributes(store_dir: Path):
    with h5py.File(store_dir / shard_name(1, 2), "r") as shard:
        assert dict(shard.attrs)["shard_index"] == 1 and shard.attrs["shard_count"] == 2
        assert shard.attrs["stage_key"] == ATTRIBUTES["stage_key"] and shard.attrs["dataset"] == "demo"
        assert shard.attrs["code_version"] == "extract-1" and json.loads(shard.attrs["sampling_json"]) == ATTRIBUTES["sampling"]
        stored = {
            "video_id": "S256", "t_seconds": "float64", "frame_index": "int64", "fake-classifier/logits": "float16",
            "fake-keypoints/keypoints": "float16", "fake-keypoints/person_present": "uint8", "fake-keypoints/num_people": "int16",
        }
        for name, dtype in stored.items():
            dataset = shard[name]
            assert dataset.dtype == np.dtype(dtype), name
            assert dataset.chunks[0] <= 256 and dataset.maxshape[0] is None
            assert dataset.fletcher32
            # Outputs uncompressed (stage two reads a few rows per clip); the columns read whole stay gzip.
            assert dataset.compression == (None if "/" in name else "gzip"), name
        for teacher in ("fake-classifier", "fake-keypoints"):
            boxes = shard[f"{teacher}/view_box"]
            assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,) and boxes.fletcher32
            assert "fractions of the frame" in boxes.attrs["meaning"]
        group = shard["fake-keypoints"]
        assert group.attrs["teacher_name"] == "fake-keypoints" and group.attrs["backend"] == "test"
        assert group.attrs["weights_sha256"] == KEYPOINTS["weights_sha256"]
        np.testing.assert_array_equal(group.attrs["input_size"], [64, 48])
        np.testing.assert_array_equal(group.attrs["std"], [1.0, 1.0, 1.0])
        assert json.loads(group.attrs["sampling_json"]) == ATTRIBUTES["sampling"] and group.attrs["code_version"] == "extract-1"
        assert [output["name"] for output in json.loads(group.attrs["outputs_json"])] == ["keypoints", "person_present", "num_people"]
        assert list(group["keypoints"].attrs["class_names"]) == KEYPOINT_NAMES
        assert group["keypoints"].attrs["kind"] == "keypoints"


def test_manifest_records_shards_and_skipped(store_dir: Path):
    manifest = read_manifest(store_dir)
    assert manifest["total_rows"] == 5 * len(VIDEOS) == sum(entry["rows"] for entry in manifest["shards"])
    assert [entry["file"] for entry in manifest["shards"]] == [shard_name(0, 2), shard_name(1, 2)]
    assert sum(entry["videos"] for entry in manifest["shards"]) == len(VIDEOS)
    assert manifest["skipped"] == [{"video_id": "bad", "path": "/x/bad.mp4", "reason": "corrupt"}]
    assert manifest["stage_key"] == ATTRIBUTES["stage_key"] and manifest["teachers"] == TEACHERS


def test_skipped_videos_recorded_by_writers_reach_the_manifest(tmp_path: Path):
    path = tmp_path / shard_name(0, 1)
    with ShardWriter(path, teachers=TEACHERS, shard_index=0, shard_count=1, attributes=ATTRIBUTES) as writer:
        writer.append(video_rows("a", 3))
        writer.add_skipped("b", "/videos/b.mp4", "moov atom not found")
    write_manifest(tmp_path, config={}, shards=[path])
    assert read_manifest(tmp_path)["skipped"] == [{"video_id": "b", "path": "/videos/b.mp4", "reason": "moov atom not found"}]
    assert verify(tmp_path) == []


def test_empty_shard_is_valid(tmp_path: Path):
    path = write_shard(tmp_path / shard_name(0, 1), 0, 1, concatenate([video_rows("x", 0)]))
    write_manifest(tmp_path, config={}, shards=[path])
    assert verify(tmp_path) == []
    with TargetStore(tmp_path) as store:
        assert len(store) == 0 and store.video_ids() == []


# ---------------------------------------------------------------- determinism and atomicity
def test_identical_rows_give_identical_bytes_whatever_the_batching(tmp_path: Path):
    rows = concatenate([video_rows(f"v{index}", 90) for index in range(7)])  # 630 rows: spans several flushes
    first = write_shard(tmp_path / "a" / shard_name(0, 1), 0, 1, rows)
    time.sleep(1.1)  # HDF5 timestamps have one-second resolution; a clock in the file would now differ
    second = write_shard(tmp_path / "b" / shard_name(0, 1), 0, 1, rows, batch=7)
    assert first.read_bytes() == second.read_bytes()


def test_writer_copies_rows_it_has_not_written_yet(tmp_path: Path):
    rows = video_rows("a", 3)
    buffers = {key: np.array(values) for key, values in rows.items() if key != "video_id"}
    path = tmp_path / shard_name(0, 1)
    with ShardWriter(path, teachers=TEACHERS, shard_index=0, shard_count=1, attributes=ATTRIBUTES) as writer:
        writer.append({"video_id": rows["video_id"], **buffers})
        for values in buffers.values():
            values[...] = 0  # a runner reusing its batch buffer
    write_manifest(tmp_path, config={}, shards=[path])
    with TargetStore(tmp_path) as store:
        np.testing.assert_array_equal(store.rows([0, 1, 2])["t_seconds"], rows["t_seconds"])
        np.testing.assert_array_equal(store.rows([0, 1, 2])["fake-keypoints/keypoints"], as_stored(rows["fake-keypoints/keypoints"]))


def test_error_inside_writer_leaves_no_file(tmp_path: Path):
    path = tmp_path / shard_name(1, 2)
    with pytest.raises(RuntimeError, match="teacher crashed"):
        with ShardWriter(path, teachers=TEACHERS, shard_index=1, shard_count=2, attributes=ATTRIBUTES) as writer:
            writer.append(video_rows("a", 300))
            assert temporary_files(tmp_path) == [writer.temporary_path]
            assert writer.temporary_path.name.startswith(f".{path.name}.")
            raise RuntimeError("teacher crashed")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_rows(tmp_path: Path):
    path = tmp_path / shard_name(0, 1)
    with ShardWriter(path, teachers=TEACHERS, shard_index=0, shard_count=1, attributes=ATTRIBUTES) as writer:
        rows = video_rows("a", 2)
        rows["fake-classifier/logits"][1, 3] = np.nan
        with pytest.raises(ShardError, match="'a'"):
            writer.append(rows)
        rows = video_rows("a", 2)
        rows["fake-keypoints/keypoints"] = rows["fake-keypoints/keypoints"][:, :16]
        with pytest.raises(ValueError, match="keypoints"):
            writer.append(rows)
        with pytest.raises(ShardError, match="bytes"):
            writer.append(video_rows("é" * 200, 1))
        rows = video_rows("a", 2)
        del rows["fake-keypoints/view_box"]
        with pytest.raises(ValueError, match=r"lack \['fake-keypoints/view_box'\]"):
            writer.append(rows)
        for bad in ((0.5, 0.0, 0.5, 1.0), (0.0, 0.0, 1.2, 1.0), (-0.1, 0.0, 0.9, 1.0), (np.nan, 0.0, 1.0, 1.0)):
            rows = video_rows("a", 2)
            rows["fake-classifier/view_box"][1] = bad
            with pytest.raises(ShardError, match=r"fake-classifier/view_box row 1 is .* 0 <= x0 < x1 <= 1") as refused:
                writer.append(rows)
            assert "\n" not in str(refused.value)
        assert writer.row_count == 0
    with pytest.raises(ValueError, match=shard_name(0, 2)):
        ShardWriter(tmp_path / "wrong.h5", teachers=TEACHERS, shard_index=0, shard_count=2, attributes=ATTRIBUTES)


# ---------------------------------------------------------------- verify
def test_verify_clean(store_dir: Path):
    assert verify(store_dir) == []


def _problems_naming(store_dir: Path, file_name: str) -> list[str]:
    problems = verify(store_dir)
    assert problems, "verify found nothing"
    assert all(file_name in problem for problem in problems), problems
    return problems


def test_verify_catches_a_flipped_byte_inside_a_chunk(store_dir: Path):
    path = store_dir / shard_name(1, 2)
    with h5py.File(path, "r") as shard:
        chunk = shard["fake-keypoints/keypoints"].id.get_chunk_info(0)
    with open(path, "r+b") as stream:
        stream.seek(chunk.byte_offset + chunk.size // 2)
        value = stream.read(1)
        stream.seek(-1, 1)
        stream.write(bytes([value[0] ^ 0xFF]))
    problems = _problems_naming(store_dir, path.name)
    assert any("sha256" in problem for problem in problems)
    assert any("keypoints" in problem and "checksum" in problem for problem in problems)


def test_verify_catches_a_flipped_byte_anywhere(store_dir: Path):
    path = store_dir / shard_name(0, 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    _problems_naming(store_dir, path.name)


def test_verify_catches_a_truncated_shard(store_dir: Path):
    path = store_dir / shard_name(0, 2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _problems_naming(store_dir, path.name)


def test_verify_catches_a_missing_shard(store_dir: Path):
    (store_dir / shard_name(1, 2)).unlink()
    problems = _problems_naming(store_dir, shard_name(1, 2))
    assert any("missing" in problem for problem in problems)


def test_verify_catches_a_wrong_row_count_in_the_manifest(store_dir: Path):
    manifest_file = store_dir / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["shards"][0]["rows"] += 1
    manifest["total_rows"] += 1
    manifest_file.write_text(json.dumps(manifest))
    problems = _problems_naming(store_dir, shard_name(0, 2))
    assert any("rows" in problem for problem in problems)


def test_verify_catches_nan_in_an_output(store_dir: Path):
    path = store_dir / shard_name(0, 2)
    with h5py.File(path, "r+") as shard:
        shard["fake-classifier/logits"][2, 4] = np.nan
    problems = _problems_naming(store_dir, path.name)
    assert any("NaN" in problem and "logits" in problem for problem in problems)


def test_verify_checks_every_teachers_view_boxes(store_dir: Path):
    path = store_dir / shard_name(0, 2)
    with h5py.File(path, "r+") as shard:
        shard["fake-classifier/view_box"][3] = (0.6, 0.0, 0.4, 1.0)  # x1 < x0: no part of the frame
    problems = _problems_naming(store_dir, path.name)
    assert any("fake-classifier/view_box rows 0..: row 3 is [0.6" in problem for problem in problems)
    with h5py.File(path, "r+") as shard:
        del shard["fake-keypoints/view_box"]  # as a shard written before boxes existed would lack it
    assert any("['fake-keypoints/view_box'] missing" in problem for problem in verify_shard(path))
    with pytest.raises(ShardError, match=r"no fake-keypoints/view_box \(the part of the frame the teacher saw\); "
                                         r"delete .* and re-run `distinit extract`") as refused:
        TargetStore(store_dir)
    assert "\n" not in str(refused.value)


def test_verify_catches_stray_shards_and_temp_files(store_dir: Path):
    shutil.copy(store_dir / shard_name(0, 2), store_dir / shard_name(0, 3))
    (store_dir / f".{shard_name(1, 2)}.999.tmp").write_bytes(b"half")
    problems = verify(store_dir)
    assert len(problems) == 2
    assert any(shard_name(0, 3) in problem and "stray" in problem for problem in problems)
    assert any(".tmp" in problem for problem in problems)


def test_verify_shard_checks_one_shard_before_a_resume_skips_it(store_dir: Path):
    path = store_dir / shard_name(0, 2)
    assert verify_shard(path, stage_key=ATTRIBUTES["stage_key"]) == []
    assert any("stage key" in problem for problem in verify_shard(path, stage_key="ffffffffffffffff"))
    assert any("outputs" in problem for problem in verify_shard(path, output_keys=["fake-classifier/logits"]))
    with h5py.File(path, "r") as shard:
        chunk = shard["fake-classifier/logits"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + 3] ^= 0x10
    path.write_bytes(bytes(data))
    problems = verify_shard(path)
    assert len(problems) == 1 and "logits" in problems[0] and path.name in problems[0]
    assert shard_files(store_dir) == [store_dir / shard_name(0, 2), store_dir / shard_name(1, 2)]


def test_each_shard_records_its_sha256_which_finalize_checks_before_opening_it(store_dir: Path):
    path = store_dir / shard_name(1, 2)
    digest = read_manifest(store_dir)["shards"][1]["sha256"]
    assert recorded_checksum(path) == digest
    assert checksum_path(path).read_text() == f"{digest}  {path.name}\n"  # as sha256sum writes it (`sha256sum -c`)
    assert shard_files(store_dir) == [store_dir / shard_name(0, 2), path]
    assert verify(store_dir) == []  # the .sha256 files are no stray files
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=re.escape(f"{path}: sha256 ") + ".*recorded when it was written"):
        write_manifest(store_dir, config={}, shards=shard_files(store_dir))


def test_missing_or_corrupt_manifest_is_one_line(store_dir: Path):
    manifest_file = store_dir / "manifest.json"
    manifest_file.write_text("{not json")
    for attempt in range(2):
        with pytest.raises(ShardError) as caught:
            TargetStore(store_dir)
        message = str(caught.value)
        assert isinstance(caught.value, DistinitError) and "\n" not in message
        assert "manifest.json" in message and "distinit extract --finalize" in message
        assert verify(store_dir) == [message]
        manifest_file.unlink(missing_ok=True)


def test_store_refuses_a_missing_shard_or_wrong_rows(store_dir: Path):
    manifest_file = store_dir / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["shards"][1]["rows"] -= 1
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=shard_name(1, 2)):
        TargetStore(store_dir)
    (store_dir / shard_name(1, 2)).unlink()
    with pytest.raises(ShardError, match=f"{shard_name(1, 2)}.*missing"):
        TargetStore(store_dir)


def test_write_manifest_refuses_an_incomplete_set(tmp_path: Path):
    path = write_shard(tmp_path / shard_name(0, 2), 0, 2, video_rows("a", 2))
    with pytest.raises(ShardError, match=r"shards \[1\] of 2 missing"):
        write_manifest(tmp_path, config={}, shards=[path])
    with pytest.raises(ShardError, match="no shard files"):
        write_manifest(tmp_path, config={}, shards=[])
    other = tmp_path / "other"
    with ShardWriter(other / shard_name(1, 2), teachers=TEACHERS, shard_index=1, shard_count=2,
                     attributes={**ATTRIBUTES, "stage_key": "ffffffffffffffff"}) as writer:
        writer.append(video_rows("b", 2))
    with pytest.raises(ShardError, match=f"{shard_name(1, 2)}: stage_key"):
        write_manifest(tmp_path, config={}, shards=[path, other / shard_name(1, 2)])
    assert not (tmp_path / "manifest.json").exists()


# ---------------------------------------------------------------- an older shard format
FORMAT_LINE = (
    "shard format 2, this distinit reads 5 (teacher outputs are stored uncompressed in small chunks, so stage two "
    "reads a clip's rows at decode speed); re-run `make extract DATA=demo`"
)


def test_a_cache_in_an_older_format_is_refused_in_one_line(store_dir: Path):
    assert FORMAT_VERSION == 5
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["format_version"] = 2
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError) as refused:
        TargetStore(store_dir)
    message = str(refused.value)
    assert message.startswith(f"{store_dir}: {FORMAT_LINE}") and "\n" not in message
    assert verify(store_dir) == [message]
    with pytest.raises(ShardError, match=re.escape(FORMAT_LINE)):
        inspect(store_dir)


def test_a_shard_in_an_older_format_is_refused_by_finalize_and_verify(store_dir: Path):
    path = store_dir / shard_name(1, 2)
    with h5py.File(path, "r+") as shard:
        shard.attrs["format_version"] = 2  # as the previous distinit wrote it
    checksum_path(path).unlink()  # which recorded no sha256 beside its shards
    assert any(FORMAT_LINE in problem for problem in verify_shard(path))
    with pytest.raises(ShardError, match=re.escape(f"{path}: {FORMAT_LINE}")):
        write_manifest(store_dir, config={}, shards=sorted(store_dir.glob("shard-*.h5")))


# ---------------------------------------------------------------- inspect
def test_inspect_summarises_the_cache_and_one_video(store_dir: Path):
    lines = inspect(store_dir)
    text = "\n".join(lines)
    assert f"rows {5 * len(VIDEOS)}, videos {len(VIDEOS)}" in text and "skipped videos 1" in text
    assert "top classes (mean softmax): class " in text
    assert "person_present rate: 60.0% of frames" in text  # frames 0, 2, 4 of 5
    assert "a person's keypoints in 60.0% of frames" in text and "renders 4x4 heatmaps over each crop" in text
    assert "    view: the whole frame; 100.0% of the frame on average" in text
    assert "    view: 2 boxes (one per frame shape);" in text
    video_lines = inspect(store_dir, video_id="video_03", top_k=2)[len(lines) :]
    wide = zlib.crc32(b"video_03") % 2
    seen = "x 0.255..0.747, y 0.062..0.938" if wide else "x 0.170..0.827, y 0.062..0.938"
    assert f"  fake-classifier saw {seen}" in video_lines and "  fake-keypoints saw the whole frame" in video_lines
    frame_lines = [line for line in video_lines if line.strip().startswith("t=") and "class" in line]
    assert len(frame_lines) == 5
    assert frame_lines[0].strip().startswith("t=0.25s  class 0 ")  # sorted by t although written in reverse
    assert frame_lines[3].strip().startswith("t=1.75s  class 3 ")
    assert frame_lines[0].count("class") == 2
    keypoint_lines = [line.strip() for line in video_lines if line.strip().startswith("t=") and "/17" in line]
    assert len(keypoint_lines) == 5 and keypoint_lines[1].startswith("t=0.75s  0/17")  # frame 1: nobody
    with pytest.raises(ShardError, match="no rows for video"):
        inspect(store_dir, video_id="nope")


# ---------------------------------------------------------------- fork, partition, stage key
def _read_in_child(store: TargetStore, queue) -> None:
    row = store.row(len(store) - 1)
    reopened = store._owner_pid == os.getpid() and all(handle.id.valid for handle in store._handles.values())
    queue.put((row["video_id"], row["fake-classifier/logits"].tolist(), store.rows_for_video("video_01")["t_seconds"].tolist(), reopened))


def test_store_reopens_after_fork(store_dir: Path):
    store = TargetStore(store_dir)
    parent_row = store.row(len(store) - 1)  # opens handles in the parent before forking
    store.video_ids()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(store, queue))
    child.start()
    video_id, logits, times, reopened = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0 and reopened
    assert video_id == parent_row["video_id"]
    np.testing.assert_array_equal(np.array(logits, dtype=np.float32), parent_row["fake-classifier/logits"])
    assert times == sorted(times) and len(times) == 5
    assert store.row(0)["video_id"] in VIDEOS  # the parent's handles still work
    store.close()


def test_partition_is_deterministic_and_complete():
    videos = [f"clip_{index}" for index in range(200)]
    shards = partition_videos(videos, 8)
    assert len(shards) == 8 and sorted(sum(shards, [])) == sorted(videos)
    assert partition_videos(videos, 8) == shards
    assert all(len(shard) > 0 for shard in shards)
    reversed_shards = partition_videos(list(reversed(videos)), 8)
    assert [sorted(shard) for shard in reversed_shards] == [sorted(shard) for shard in shards]
    fewer = partition_videos(videos[::3], 8)  # a video's shard does not depend on the others
    assert all(set(part) <= set(whole) for part, whole in zip(fewer, shards))
    assert partition_videos(videos, 1) == [videos]


def test_stage_key_changes_with_every_input_and_nothing_else():
    teachers = [{"name": "a", "weights_sha256": "1" * 64, "options": {"arch": "x"}}, {"name": "b", "weights_sha256": "2" * 64}]
    sampling = {"frames_per_second": 2.0, "max_frames_per_video": 64}
    key = compute_stage_key("d" * 64, teachers, sampling, "1")
    assert len(key) == 16 and int(key, 16) >= 0
    assert compute_stage_key("d" * 64, list(reversed(teachers)), dict(reversed(list(sampling.items()))), "1") == key
    changed = [
        compute_stage_key("e" * 64, teachers, sampling, "1"),
        compute_stage_key("d" * 64, [teachers[0], {**teachers[1], "weights_sha256": "3" * 64}], sampling, "1"),
        compute_stage_key("d" * 64, [{**teachers[0], "options": {"arch": "y"}}, teachers[1]], sampling, "1"),
        compute_stage_key("d" * 64, teachers[:1], sampling, "1"),
        compute_stage_key("d" * 64, teachers, {**sampling, "frames_per_second": 1.0}, "1"),
        compute_stage_key("d" * 64, teachers, sampling, "2"),
    ]
    assert len(set(changed)) == len(changed) and key not in changed
