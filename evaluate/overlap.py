"""Did the init's pretraining see the videos it is now tested on?

DistInit uses no labels, but distilling on HMDB-51 (`DATA=hmdb51`) and then testing on HMDB-51 lets the
trunk see the test videos before it is scored on them. Eval refuses such an init unless the option
`allow_test_overlap` is set, and then every report says how many test videos the pretraining saw.

The pretraining video set of a distill checkpoint is its top-level `pretraining_videos` (file stems of every
video in its targets and, from distill-3 on, the first 16 hex digits of each file's sha256, read from the
checkpoint file: the init's description, which goes into every result, keeps only their count and hash); in
checkpoints written before that, the provenance's `pretraining_videos["names"]`; for older ones, the stems of the
targets folder's video list (`<targets_dir>/videos.jsonl`). Scratch and inflated inits saw no video.

A test video counts as seen, under the first of these that holds (the report counts each separately):
- "exact_stem": its file stem is a pretraining video's (every dataset adapter keeps stems);
- "same_content": its file's sha256 is a pretraining video's (a renamed or copied test video); checked only
  when the checkpoint records content hashes (otherwise the report says "content not checked", not refused);
- "same_group": a pretraining video was cut from the same source video (pipeline.datasets.groups: UCF-101's
  gXX, HMDB-51's name without its clip number). The TEST dataset's rule names the groups of both sides, since a
  folder of copied HMDB-51 clips is listed under other ids but keeps the stems.
A re-encoded copy under another name escapes all three; the split/role filter of stage one is what keeps test
videos out (extract refuses a labeled dataset without one).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from distinit.distill.checkpoint import read_pretraining_videos
from distinit.pipeline.datasets import read_manifest
from distinit.pipeline.datasets.groups import UCF_CLIP, source_group
from distinit.pipeline.errors import DatasetError, DistinitError
from distinit.pipeline.hashing import sha256_file

logger = logging.getLogger(__name__)

ALLOW_OPTION = "--allow-test-overlap (config: allow_test_overlap: true)"
DEFAULT_VIDEOS_MANIFEST = "videos.jsonl"
EXAMPLES = 3
KINDS = ("exact_stem", "same_content", "same_group")
KIND_WORDS = {"exact_stem": "by name", "same_content": "same content", "same_group": "same source video"}

# (path, size, mtime_ns) -> sha256 of the test files hashed in this process: compare checks every init against the
# same test lists, and HMDB-51's three splits share their videos. Nothing is cached on disk.
_TEST_FILE_HASHES: dict[tuple[str, int, int], str] = {}


class TestOverlapError(DistinitError):
    """An init pretrained on test videos, or one whose pretraining videos cannot be known."""

    __test__ = False  # not a pytest test class, despite its name


def _targets_listing(targets_dir: Path) -> tuple[Path, str | None]:
    """The targets folder's list of videos and the dataset it was extracted from, as its manifest.json says."""
    try:
        manifest = json.loads((targets_dir / "manifest.json").read_text())
        extra, config = manifest.get("extra") or {}, manifest.get("config") or {}
    except (OSError, ValueError, AttributeError):
        extra, config = {}, {}
    return targets_dir / str(extra.get("videos_manifest") or DEFAULT_VIDEOS_MANIFEST), config.get("data")


def pretraining_videos(description: Mapping[str, Any]) -> dict[str, Any]:
    """{"source", "dataset", "targets_dir", "count", "names" (set of stems, or None when unknown), "content" (set
    of sha256 prefixes, or None when not recorded)}."""
    if description.get("kind") != "checkpoint":
        return {"source": "none", "dataset": None, "targets_dir": None, "count": 0, "names": set(), "content": set()}
    provenance = description.get("distill_provenance") or {}
    targets_dir = provenance.get("targets_dir")
    summary = provenance.get("pretraining_videos")
    summary = summary if isinstance(summary, Mapping) else {}
    dataset = summary.get("dataset") or provenance.get("dataset")
    found = _recorded_videos(description, summary)
    if found is not None:
        source, recorded = found
        names = {str(name) for name in recorded["names"]}
        content = recorded.get("content_sha256")
        return {"source": source, "dataset": dataset, "targets_dir": targets_dir,
                "count": int(recorded.get("count", len(names))), "names": names,
                "content": {str(digest) for digest in content} if isinstance(content, (list, tuple)) else None}
    unknown = {"source": "unknown", "dataset": dataset, "targets_dir": targets_dir, "count": None, "names": None,
               "content": None}
    if not targets_dir:
        return unknown
    manifest, dataset = _targets_listing(Path(targets_dir))
    if not manifest.is_file():
        return unknown
    try:
        records = read_manifest(manifest, Path(targets_dir))
    except (OSError, DatasetError) as error:
        logger.warning("%s: cannot read the pretraining videos (%s)", manifest, error)
        return unknown
    names = {Path(record.path).stem for record in records}
    return {**unknown, "source": str(manifest), "dataset": unknown["dataset"] or dataset, "count": len(names),
            "names": names}


def _recorded_videos(description: Mapping[str, Any], summary: Mapping[str, Any]) -> tuple[str, Mapping] | None:
    """(source, {"names", "count"[, "content_sha256"]}) of the videos the checkpoint records: read from the
    checkpoint file, else from a description whose provenance still lists them (one built without the file); None
    when neither has them."""
    if description.get("path"):
        recorded = read_pretraining_videos(description["path"])
        if recorded is not None:
            return "checkpoint", recorded
    if isinstance(summary.get("names"), (list, tuple)):
        return "checkpoint provenance", summary
    return None


def test_stems(split_lists: Mapping[int, Sequence[Sequence[Any]]]) -> dict[int, set[str]]:
    """split -> file stems of its test list, from {split: (train records, test records)}."""
    return {split: {Path(record.path).stem for record in lists[1]} for split, lists in split_lists.items()}


def test_dataset_of(split_lists: Mapping[int, Sequence[Sequence[Any]]]) -> str:
    """Which source-group rule the test lists follow, when the caller does not say: UCF-101 when every test stem
    is a `v_Class_gXX_cYY` clip, else HMDB-51's (its layout is also the demo's)."""
    stems = set().union(*test_stems(split_lists).values()) if split_lists else set()
    return "ucf101" if stems and all(UCF_CLIP.match(stem) for stem in stems) else "hmdb51"


def file_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 of a test video's bytes (streamed), cached in memory by (path, size, mtime); None when the file
    cannot be read (logged: that video's content goes unchecked)."""
    try:
        status = os.stat(path)
        key = (os.fspath(path), status.st_size, status.st_mtime_ns)
        if key not in _TEST_FILE_HASHES:
            _TEST_FILE_HASHES[key] = sha256_file(path)
        return _TEST_FILE_HASHES[key]
    except OSError as error:
        logger.warning("%s: cannot hash this test video (%s); its content is not checked", path, error.strerror)
        return None


def _seen_how(path: Path, videos: Mapping[str, Any], groups: set[str], dataset: str,
              prefix_lengths: Sequence[int]) -> str | None:
    """Which kind of overlap (KINDS) catches this test video first; None when the pretraining did not see it.
    `prefix_lengths`: the lengths of the recorded content prefixes (distill.checkpoint.CONTENT_HASH_DIGITS)."""
    if path.stem in videos["names"]:
        return "exact_stem"
    if videos["content"]:
        digest = file_sha256(path)
        if digest is not None and any(digest[:length] in videos["content"] for length in prefix_lengths):
            return "same_content"
    return "same_group" if source_group(dataset, path.stem) in groups else None


def find_overlap(videos: Mapping[str, Any], split_lists: Mapping[int, Sequence[Sequence[Any]]],
                 dataset: str) -> dict[int, dict[str, str]]:
    """split -> {test stem: kind} of the test videos the pretraining `videos` saw (see the module docstring)."""
    groups = {source_group(dataset, name) for name in videos["names"]}
    prefix_lengths = sorted({len(prefix) for prefix in videos["content"] or ()})
    found: dict[int, dict[str, str]] = {}
    for split, lists in split_lists.items():
        paths = [Path(record.path) for record in lists[1]]
        kinds = {path.stem: _seen_how(path, videos, groups, dataset, prefix_lengths) for path in paths}
        found[split] = {stem: kind for stem, kind in sorted(kinds.items()) if kind is not None}
    return found


def _describe(description: Mapping[str, Any], videos: dict[str, Any]) -> str:
    where = videos["dataset"] or videos["targets_dir"] or "its targets"
    return f"{description.get('spec')} (pretrained on {where})"


def _kinds_text(by_kind: Mapping[str, int]) -> str:
    return ", ".join(f"{by_kind.get(kind, 0)} {KIND_WORDS[kind]}" for kind in KINDS)


def check_pretraining_overlap(description: Mapping[str, Any], split_lists: Mapping[int, Sequence[Sequence[Any]]],
                              allow: bool, dataset: str | None = None) -> dict[str, Any]:
    """What the init was pretrained on and how many test videos of each split it saw (JSON-ready). `dataset`: the
    test lists' dataset (its source-group rule); None infers it from the test stems (test_dataset_of).

    Raises TestOverlapError, one line, when the pretraining saw test videos or cannot be checked, unless
    `allow`."""
    videos = pretraining_videos(description)
    report = {
        "videos": {key: videos[key] for key in ("source", "dataset", "targets_dir", "count")},
        "test_overlap": None, "test_overlap_by_split": None, "allow_test_overlap": bool(allow),
    }
    if videos["names"] is None:
        if not allow:
            raise TestOverlapError(
                f"{description.get('spec')}: the checkpoint does not record its pretraining videos and its targets "
                f"list ({videos['targets_dir'] or 'no targets_dir in its provenance'}) is not readable, so overlap "
                f"with the test lists cannot be checked; re-distil with this version or pass {ALLOW_OPTION}"
            )
        logger.warning("%s: overlap with the test lists not checked (allow_test_overlap)", description.get("spec"))
        return report
    dataset = dataset or test_dataset_of(split_lists)
    by_split = find_overlap(videos, split_lists, dataset)
    seen = {stem: kind for kinds in by_split.values() for stem, kind in kinds.items()}
    overlapping = sorted(seen)
    report.update(
        test_dataset=dataset, content_checked=videos["content"] is not None, test_overlap=len(overlapping),
        test_overlap_by_split={str(split): len(kinds) for split, kinds in by_split.items()},
        test_overlap_by_kind={kind: sum(1 for found in seen.values() if found == kind) for kind in KINDS},
        test_overlap_examples=overlapping[:EXAMPLES],
    )
    if not report["content_checked"]:
        logger.warning("%s: the checkpoint records no content hashes (written before distill-3): test videos "
                       "matched by name and source video only, content not checked", description.get("spec"))
    if overlapping:
        splits = ", ".join(str(split) for split, kinds in by_split.items() if kinds)
        message = (f"{_describe(description, videos)}: {len(overlapping)} test videos of split {splits} overlap its "
                   f"{videos['count']} pretraining videos ({_kinds_text(report['test_overlap_by_kind'])}; "
                   f"e.g. {overlapping[0]})")
        if not allow:
            raise TestOverlapError(f"{message}; distil on videos outside the test lists (extract with split=... "
                                   f"split_roles=...), or pass {ALLOW_OPTION} to evaluate anyway (the report then "
                                   "says so)")
        logger.warning("%s; evaluating anyway (allow_test_overlap)", message)
    return report


def overlap_text(report: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(pretraining data, number of videos, test overlap) as short texts for tables; "n/a" where unknown."""
    if not report:
        return "n/a", "n/a", "n/a"
    pretraining = report.get("videos") or {}
    if pretraining.get("source") == "none":
        return "none (no video)", "0", "0"
    data = pretraining.get("dataset") or pretraining.get("targets_dir") or "n/a"
    count = "n/a" if pretraining.get("count") is None else str(pretraining["count"])
    overlap = report.get("test_overlap")
    if overlap is None:
        return str(data), count, "not checked (allowed)"
    by_split = report.get("test_overlap_by_split") or {}
    detail = ", ".join(f"split {split}: {number}" for split, number in by_split.items())
    text = f"{overlap} ({detail})" if by_split else f"{overlap}"
    if report.get("test_overlap_by_kind"):
        text += f"; {_kinds_text(report['test_overlap_by_kind'])}"
    if report.get("content_checked") is False:
        text += "; content not checked"
    flag = " **(allowed: scores include seen test videos)**" if overlap else ""
    return str(data), count, text + flag


def record_pretraining_overlap(initialization: Any, split_lists: Mapping[int, Sequence[Sequence[Any]]],
                               allow: bool, dataset: str | None = None) -> dict[str, Any]:
    """`check_pretraining_overlap` of an Initialization, kept in its description as "pretraining" (so
    results.json's "init" says what the trunk was pretrained on and how many test videos that saw)."""
    report = check_pretraining_overlap(initialization.description, split_lists, allow, dataset)
    initialization.description["pretraining"] = report
    return report
