"""Did the init's pretraining see the videos it is now tested on?

DistInit uses no labels, but distilling on HMDB-51 (`DATA=hmdb51`) and then testing on HMDB-51 lets the
trunk see the test videos before it is scored on them. Eval refuses such an init unless the option
`allow_test_overlap` is set, and then every report says how many test videos the pretraining saw.

The pretraining video set of a distill checkpoint is its top-level `pretraining_videos["names"]` (file stems
of every video in its targets, read from the checkpoint file: the init's description, which goes into every
result, keeps only their count and hash); in checkpoints written before that, the provenance's
`pretraining_videos["names"]`; for older ones, the stems of the targets folder's video list
(`<targets_dir>/videos.jsonl`). Videos are matched on file stems, which every dataset adapter keeps
(HMDB-51 ids are "class/stem"; Kinetics stems carry the YouTube id and times). Scratch and inflated
inits saw no video.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.checkpoint import read_pretraining_videos
from pipeline.datasets import read_manifest
from pipeline.errors import DatasetError, DistinitError

logger = logging.getLogger(__name__)

ALLOW_OPTION = "--allow-test-overlap (config: allow_test_overlap: true)"
DEFAULT_VIDEOS_MANIFEST = "videos.jsonl"
EXAMPLES = 3


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
    """{"source", "dataset", "targets_dir", "count", "names" (set of stems, or None when unknown)}."""
    if description.get("kind") != "checkpoint":
        return {"source": "none", "dataset": None, "targets_dir": None, "count": 0, "names": set()}
    provenance = description.get("distill_provenance") or {}
    targets_dir = provenance.get("targets_dir")
    summary = provenance.get("pretraining_videos")
    summary = summary if isinstance(summary, Mapping) else {}
    dataset = summary.get("dataset") or provenance.get("dataset")
    found = _recorded_videos(description, summary)
    if found is not None:
        source, recorded = found
        names = {str(name) for name in recorded["names"]}
        return {"source": source, "dataset": dataset, "targets_dir": targets_dir,
                "count": int(recorded.get("count", len(names))), "names": names}
    unknown = {"source": "unknown", "dataset": dataset, "targets_dir": targets_dir, "count": None, "names": None}
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
    """(source, {"names", "count"}) of the videos the checkpoint records: read from the checkpoint file, else from
    a description whose provenance still lists them (one built without the file); None when neither has them."""
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


def _describe(description: Mapping[str, Any], videos: dict[str, Any]) -> str:
    where = videos["dataset"] or videos["targets_dir"] or "its targets"
    return f"{description.get('spec')} (pretrained on {where})"


def check_pretraining_overlap(description: Mapping[str, Any], split_lists: Mapping[int, Sequence[Sequence[Any]]],
                              allow: bool) -> dict[str, Any]:
    """What the init was pretrained on and how many of those videos each split tests on (JSON-ready).

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
    by_split = {split: sorted(videos["names"] & stems) for split, stems in test_stems(split_lists).items()}
    overlapping = sorted(set().union(*by_split.values())) if by_split else []
    report["test_overlap"] = len(overlapping)
    report["test_overlap_by_split"] = {str(split): len(names) for split, names in by_split.items()}
    report["test_overlap_examples"] = overlapping[:EXAMPLES]
    if overlapping:
        splits = ", ".join(str(split) for split, names in by_split.items() if names)
        message = (f"{_describe(description, videos)}: {len(overlapping)} of its {videos['count']} pretraining videos "
                   f"are in the test list of split {splits} (e.g. {overlapping[0]})")
        if not allow:
            raise TestOverlapError(f"{message}; distil on videos outside the test lists, or pass {ALLOW_OPTION} to "
                                   "evaluate anyway (the report then says so)")
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
    flag = " **(allowed: scores include seen test videos)**" if overlap else ""
    return str(data), count, f"{overlap} ({detail}){flag}" if by_split else f"{overlap}{flag}"


def record_pretraining_overlap(initialization: Any, split_lists: Mapping[int, Sequence[Sequence[Any]]],
                               allow: bool) -> dict[str, Any]:
    """`check_pretraining_overlap` of an Initialization, kept in its description as "pretraining" (so
    results.json's "init" says what the trunk was pretrained on and how many test videos that saw)."""
    report = check_pretraining_overlap(initialization.description, split_lists, allow)
    initialization.description["pretraining"] = report
    return report
