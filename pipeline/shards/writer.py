"""Write one shard: rows appended in the caller's order, a temp file renamed into place only when complete,
then its sha256 recorded beside it (pipeline.shards.checksum), so a re-run can check it before opening it.

The file's bytes depend only on the rows and attributes written, never on the clock or on how the rows
were batched into `append` calls: object timestamps are off, the HDF5 format version is pinned, and rows
reach the file in blocks of FLUSH_ROWS at the same boundaries for every dataset.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from distinit.pipeline.atomic import make_output_folder
from distinit.pipeline.errors import describe_os_error
from distinit.pipeline.hashing import canonical_json, sha256_file
from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards.checksum import write_checksum
from distinit.pipeline.shards.format import ShardError
from distinit.pipeline.shards.layouts import layout_line, write_layout_dataset
from distinit.pipeline.shards.lease import ShardBusy, ShardLease, host_name, read_holder

logger = logging.getLogger(__name__)

COMPRESSIONS = ("gzip", "lzf")


def temporary_shard_path(final_path: Path) -> Path:
    """`.shard-00003-of-00016.h5.<host>.<pid>.tmp` beside the final path: hidden, unique per process on any host."""
    return final_path.parent / f".{final_path.name}.{host_name()}.{os.getpid()}.tmp"


def temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Half-written shards (`.shard-*.<host>.<pid>.tmp`, or `.<pid>.tmp` from older versions) and lease temps of
    any writer; safe to delete when no writer holds a live lease (pipeline.shards.lease)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        path for path in folder.iterdir()
        if path.name.startswith(".shard-") and path.name.endswith(".tmp")
    )


def remove_abandoned_temporaries(final_path: Path) -> None:
    """Delete every temp file of this shard. Only for the holder of its lease: it took the lease free or stale,
    so every other writer of the shard is gone or was judged gone (pipeline.shards.lease)."""
    for path in temporary_files(final_path.parent):
        if path.name.startswith(f".{final_path.name}."):
            path.unlink(missing_ok=True)
            logger.info("removed %s, left by an interrupted writer", path.name)


def _set_attribute(target: h5py.HLObject, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    target.attrs[name] = value


def create_group(parent: h5py.Group, name: str) -> h5py.Group:
    """A group without a modification time (a file's bytes must not depend on when it was written)."""
    # Through the low-level API because `create_group(track_times=...)` only exists in recent h5py.
    group_properties = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    group_properties.set_obj_track_times(False)
    return h5py.Group(h5py.h5g.create(parent.id, name.encode("utf-8"), gcpl=group_properties))


def to_storage_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast to the stored dtype. float32 -> float16 goes through torch: numpy's cast is software and ~35x
    slower on subnormals (the tails of heatmaps), while torch's gives bit-identical values."""
    if dtype == np.float16 and values.dtype == np.float32:
        import torch  # a project dependency; imported here so reading shards never needs it

        contiguous = np.ascontiguousarray(values)
        if not contiguous.flags.writeable:
            contiguous = contiguous.copy()
        return torch.from_numpy(contiguous).to(torch.float16).numpy()
    return values.astype(dtype)  # a copy: the caller may reuse its buffer before the rows are flushed


def _fsync_path(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class ShardWriter:
    """Context manager writing `shard-XXXXX-of-YYYYY.h5`; see the module docstring of `pipeline.shards`.

    `attributes` must hold `dataset`, `stage_key`, `code_version` and `sampling` (a dict); any further
    JSON-able entries are kept in the file's `attributes_json`. The writer holds the shard's lease from before its
    temp file exists until the shard is sealed or abandoned; a live lease of another writer raises `ShardBusy`
    (`lease_seconds`: pipeline.shards.lease, default DISTINIT_SHARD_LEASE_SECONDS or 300).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        teachers: Sequence[dict[str, Any]],
        shard_index: int,
        shard_count: int,
        attributes: dict[str, Any],
        compression: str = "gzip",
        lease_seconds: float | None = None,
    ):
        self.final_path = Path(path)
        expected_name = fmt.shard_name(shard_index, shard_count)
        if self.final_path.name != expected_name:
            raise ValueError(f"shard {shard_index} of {shard_count} must be named {expected_name}, not {self.final_path.name}")
        missing = [key for key in fmt.REQUIRED_ATTRIBUTES if key not in attributes]
        if missing:
            raise ValueError(f"shard attributes lack {missing}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        self.teachers = [dict(teacher) for teacher in teachers]
        names = [fmt.teacher_name_of(teacher) for teacher in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names repeat: {names}")
        self.shard_index, self.shard_count = shard_index, shard_count
        self.attributes = dict(attributes)
        self.compression = compression
        self.temporary_path = temporary_shard_path(self.final_path)
        self.rows_written = 0
        self.closed = False
        self._skipped: list[dict[str, str]] = []
        self._layout_lines: dict[str, bytes] = {}
        self._columns: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._pending: dict[str, np.ndarray] = {}
        self._pending_rows = 0
        make_output_folder(self.final_path.parent)
        self.lease = ShardLease(self.final_path, lease_seconds)
        try:
            self.lease.acquire()
            remove_abandoned_temporaries(self.final_path)
            # No chunk cache: rows reach HDF5 in whole chunks anyway (FLUSH_ROWS), so the cache buys nothing
            # (same bytes, same speed, measured), and without it a failed write (disk full) raises in the
            # write call. With it, the failure came from a dataset's deallocation, leaked the dataset, and
            # HDF5's exit handler then crashed the process (SIGSEGV in H5D_close at exit).
            self._file = h5py.File(self.temporary_path, "w", libver=fmt.LIBVER, rdcc_nbytes=0)
        except OSError as error:
            self.lease.release()
            raise self._write_error(error) from None
        except BaseException:
            self.lease.release()
            raise
        try:
            self._create_layout()
        except OSError as error:
            self.abort()
            raise self._write_error(error) from None
        except BaseException:
            self.abort()
            raise

    def _write_error(self, error: OSError) -> ShardError:
        """One line naming the shard; h5py's own message spans lines and names only the temp file."""
        return ShardError(
            f"{self.final_path}: cannot write the shard ({describe_os_error(error)}); free disk space or pass "
            "another --out, then rerun (finished shards are kept)"
        )

    # ------------------------------------------------------------------ layout
    def _create_dataset(self, parent: h5py.Group, name: str, dtype: np.dtype, shape: tuple[int, ...], *,
                        compressed: bool = True) -> h5py.Dataset:
        """A row dataset; `compressed=False` for teacher outputs, which stage two reads a few rows at a time
        (pipeline.shards.format's docstring says why)."""
        row_bytes = int(dtype.itemsize * np.prod(shape, dtype=np.int64))
        if not compressed:
            compression = {}
        elif self.compression == "gzip":
            compression = {"compression": "gzip", "compression_opts": fmt.COMPRESSION_LEVEL}
        else:
            compression = {"compression": "lzf"}
        return parent.create_dataset(
            name,
            shape=(0, *shape),
            maxshape=(None, *shape),
            chunks=(fmt.chunk_rows(row_bytes) if compressed else
                    fmt.chunk_rows(row_bytes, fmt.OUTPUT_CHUNK_BYTES, fmt.OUTPUT_MINIMUM_CHUNK_ROWS), *shape),
            dtype=dtype,
            # Byte-shuffling numbers groups their exponents, which compresses well (and is no use uncompressed).
            shuffle=compressed and dtype.kind != "S",
            fletcher32=True,
            track_times=False,
            **compression,
        )

    def _create_layout(self) -> None:
        root = self._file
        sampling = self.attributes["sampling"]
        _set_attribute(root, fmt.ATTR_FORMAT_VERSION, fmt.FORMAT_VERSION)
        _set_attribute(root, fmt.ATTR_SHARD_INDEX, self.shard_index)
        _set_attribute(root, fmt.ATTR_SHARD_COUNT, self.shard_count)
        _set_attribute(root, fmt.ATTR_DATASET, str(self.attributes["dataset"]))
        _set_attribute(root, fmt.ATTR_STAGE_KEY, str(self.attributes["stage_key"]))
        _set_attribute(root, fmt.ATTR_CODE_VERSION, str(self.attributes["code_version"]))
        _set_attribute(root, fmt.ATTR_SAMPLING_JSON, canonical_json(sampling))
        _set_attribute(root, fmt.ATTR_ATTRIBUTES_JSON, canonical_json(self.attributes))
        _set_attribute(root, fmt.ATTR_TEACHER_NAMES_JSON, canonical_json([t["name"] for t in self.teachers]))

        row_columns = {
            fmt.VIDEO_ID: np.dtype(h5py.string_dtype("utf-8", fmt.VIDEO_ID_BYTES)),
            fmt.T_SECONDS: np.dtype(np.float64),
            fmt.FRAME_INDEX: np.dtype(np.int64),
        }
        for name, dtype in row_columns.items():
            self._create_dataset(root, name, dtype, ())
            self._columns[name] = (dtype, ())
        for teacher in self.teachers:
            self._create_teacher_group(teacher, sampling)

    def _create_teacher_group(self, teacher: dict[str, Any], sampling: dict[str, Any]) -> None:
        specs = fmt.output_specs(teacher)
        group = create_group(self._file, teacher["name"])
        described = json.loads(canonical_json(teacher))
        for output in described.get("outputs", []):
            output.pop("class_names", None)  # kept once, on the output's dataset
        _set_attribute(group, fmt.ATTR_TEACHER_NAME, teacher["name"])
        _set_attribute(group, fmt.ATTR_BACKEND, str(teacher.get("backend", "")))
        _set_attribute(group, fmt.ATTR_WEIGHTS_SHA256, str(teacher.get("weights_sha256") or ""))
        _set_attribute(group, fmt.ATTR_INPUT_SIZE, teacher.get("input_size"))
        _set_attribute(group, fmt.ATTR_MEAN, teacher.get("mean"))
        _set_attribute(group, fmt.ATTR_STD, teacher.get("std"))
        _set_attribute(group, fmt.ATTR_OUTPUTS_JSON, canonical_json(described.get("outputs", [])))
        _set_attribute(group, fmt.ATTR_DESCRIBE_JSON, canonical_json(described))
        _set_attribute(group, fmt.ATTR_SAMPLING_JSON, canonical_json(sampling))
        _set_attribute(group, fmt.ATTR_CODE_VERSION, str(self.attributes["code_version"]))
        for spec in specs:
            dataset = self._create_dataset(group, spec.name, spec.storage_dtype, spec.shape, compressed=False)
            _set_attribute(dataset, fmt.ATTR_KIND, spec.kind)
            _set_attribute(dataset, fmt.ATTR_MEANING, spec.meaning)
            _set_attribute(dataset, fmt.ATTR_SPEC_DTYPE, spec.dtype)
            if spec.class_names is not None:
                dataset.attrs[fmt.ATTR_CLASS_NAMES] = np.array(spec.class_names, dtype=h5py.string_dtype("utf-8"))
            self._columns[fmt.output_key(teacher["name"], spec.name)] = (spec.storage_dtype, spec.shape)
        box_dtype = np.dtype(fmt.VIEW_BOX_DTYPE)
        boxes = self._create_dataset(group, fmt.VIEW_BOX, box_dtype, fmt.VIEW_BOX_SHAPE)
        _set_attribute(boxes, fmt.ATTR_MEANING, fmt.VIEW_BOX_MEANING)
        self._columns[fmt.view_box_key(teacher["name"])] = (box_dtype, fmt.VIEW_BOX_SHAPE)

    # ------------------------------------------------------------------ rows
    @property
    def row_count(self) -> int:
        """Rows appended so far (written or still buffered)."""
        return self.rows_written + self._pending_rows

    def append(self, rows: dict[str, Any]) -> None:
        """Append N rows: `video_id` (N strings), `t_seconds`, `frame_index`, every `<teacher>/<output>` (N, *shape) and
        every `<teacher>/view_box` (N, 4): the part of each row's frame the teacher saw (pipeline.shards.format)."""
        if self.closed:
            raise ValueError(f"{self.final_path.name}: append after close")
        missing = sorted(set(self._columns) - set(rows))
        extra = sorted(set(rows) - set(self._columns))
        if missing or extra:
            raise ValueError(f"{self.final_path.name}: rows lack {missing} / have unknown {extra}")
        video_ids = [str(video_id) for video_id in rows[fmt.VIDEO_ID]]
        count = len(video_ids)
        converted = {fmt.VIDEO_ID: self._encode_video_ids(video_ids)}
        for name, (dtype, shape) in self._columns.items():
            if name == fmt.VIDEO_ID:
                continue
            values = np.asarray(rows[name])
            if values.shape != (count, *shape):
                raise ValueError(f"{self.final_path.name}: {name} has shape {values.shape}, expected {(count, *shape)}")
            values = to_storage_dtype(values, dtype)
            if name.endswith("/" + fmt.VIEW_BOX):  # (no output is named so: format.OutputSpec)
                self._check_view_boxes(name, values)
            elif dtype.kind == "f":
                self._check_finite(name, values, video_ids)
            converted[name] = values
        for name, values in converted.items():
            pending = self._pending.get(name)
            self._pending[name] = values if pending is None else np.concatenate([pending, values])
        self._pending_rows += count
        try:
            while self._pending_rows >= fmt.FLUSH_ROWS:
                self._flush(fmt.FLUSH_ROWS)
        except OSError as error:
            raise self._write_error(error) from None

    def add_skipped(self, video_id: str, path: str, reason: str) -> None:
        """Record a video this shard should have held but could not (kept in the file for the manifest)."""
        self._skipped.append({"video_id": str(video_id), "path": str(path), "reason": str(reason)})

    def add_layout(self, video_id: str, record: dict[str, Any]) -> None:
        """Keep the probed layout of a video this shard holds (pipeline.video.layout_record's record), so
        stage two reads it instead of probing the video again (pipeline.shards.layouts)."""
        video_id = str(video_id)
        self._encode_video_ids([video_id])  # the same id rules as the rows
        if video_id in self._layout_lines:
            raise ValueError(f"{self.final_path.name}: a second layout for video {video_id!r}")
        self._layout_lines[video_id] = layout_line(video_id, record)

    def _encode_video_ids(self, video_ids: list[str]) -> np.ndarray:
        encoded = [video_id.encode("utf-8") for video_id in video_ids]
        for video_id, raw in zip(video_ids, encoded):
            if len(raw) > fmt.VIDEO_ID_BYTES or not raw:
                raise ShardError(
                    f"video id {video_id!r} is {len(raw)} bytes of UTF-8; shards hold ids of 1..{fmt.VIDEO_ID_BYTES} bytes, "
                    "use shorter ids (e.g. paths relative to the dataset root)"
                )
        return np.array(encoded, dtype=f"S{fmt.VIDEO_ID_BYTES}")

    def _check_finite(self, name: str, values: np.ndarray, video_ids: list[str]) -> None:
        finite = np.isfinite(values.reshape(len(video_ids), -1)).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            raise ShardError(
                f"{self.final_path.name}: {name} is NaN/inf (or beyond float16's ±65504) for video "
                f"{video_ids[first]!r}; check the teacher, nothing non-finite is written"
            )

    def _check_view_boxes(self, name: str, boxes: np.ndarray) -> None:
        problem = fmt.view_box_problem(boxes)
        if problem is not None:
            raise ShardError(f"{self.final_path.name}: {name} {problem}; check the teacher's view_box")

    def _flush(self, count: int) -> None:
        """Write the first `count` pending rows to every dataset, in the fixed column order."""
        start, stop = self.rows_written, self.rows_written + count
        for name in self._columns:
            dataset = self._file[name]
            dataset.resize(stop, axis=0)
            # dataset.dtype carries h5py's UTF-8 tag for video ids; plain numpy bytes would not convert.
            dataset[start:stop] = np.asarray(self._pending[name][:count], dtype=dataset.dtype)
            self._pending[name] = self._pending[name][count:].copy()
        self.rows_written = stop
        self._pending_rows -= count

    # ------------------------------------------------------------------ finish
    def close(self) -> Path:
        """Flush, close and fsync the temp file, record its sha256 beside the final path, then rename it there:
        every shard on disk has its record (a kill between the two leaves a record without a shard, which the
        re-run overwrites when it writes that shard); returns the final path."""
        if self.closed:
            return self.final_path
        try:
            if self._pending_rows:
                self._flush(self._pending_rows)
            if self._layout_lines:
                write_layout_dataset(self._file, b"".join(self._layout_lines.values()))
            self._file.attrs[fmt.ATTR_SKIPPED_JSON] = canonical_json(self._skipped)
            self._file.close()
            _fsync_path(self.temporary_path)
            if not self.lease.still_held():  # judged stale (this process was stopped?) and taken over
                raise ShardBusy(self.final_path, read_holder(self.lease.path))
            write_checksum(self.final_path, sha256_file(self.temporary_path))
            os.replace(self.temporary_path, self.final_path)
            _fsync_path(self.final_path.parent)
        except OSError as error:
            self.abort()
            raise self._write_error(error) from None
        except BaseException:
            self.abort()
            raise
        self.closed = True
        self.lease.release()
        logger.info("wrote %s: %d rows, %d skipped videos", self.final_path, self.rows_written, len(self._skipped))
        return self.final_path

    def abort(self) -> None:
        """Drop the half-written temp file and release the lease; the final path is never touched."""
        self.closed = True
        try:
            self._file.close()
        except Exception:  # the file may already be closed or unusable; removing it is what matters
            pass
        self.temporary_path.unlink(missing_ok=True)
        self.lease.release()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        if exc_type is not None:
            self.abort()
            return False
        self.close()
        return False
