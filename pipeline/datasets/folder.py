"""Any folder of raw videos, searched recursively: the uncurated source DistInit can learn from.

Record id = path relative to the root without its extension (posix); no labels, no splits. Hidden
files and folders are skipped; extensions are matched case-insensitively (see `VIDEO_EXTENSIONS`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from distinit.pipeline.datasets import register_adapter
from distinit.pipeline.datasets.layout import VIDEO_EXTENSIONS, reject_options, require_unique_ids, scan_videos
from distinit.pipeline.datasets.records import DatasetListing, VideoRecord, sorted_records
from distinit.pipeline.errors import DatasetError

logger = logging.getLogger(__name__)


def unlabeled_records(folder: Path, dataset: str) -> list[VideoRecord]:
    """One record per video under `folder`, ids relative to `folder`; an error if there are none."""
    paths = scan_videos(folder)
    if not paths:
        extensions = " ".join(sorted(VIDEO_EXTENSIONS))
        raise DatasetError(f"{folder}: no video files ({extensions}) found; check --root")
    records = [VideoRecord(id=path.relative_to(folder).with_suffix("").as_posix(), path=path) for path in paths]
    require_unique_ids(records, dataset)
    logger.info("%s: %d videos under %s", dataset, len(records), folder)
    return sorted_records(records)


@register_adapter("folder", "any folder of videos, searched recursively (.mp4 .avi .mkv .webm .mov ...); no labels")
def load(root: Path, *, splits_dir: str | Path | None = None, annotations: str | Path | None = None) -> DatasetListing:
    reject_options("folder", splits_dir=splits_dir, annotations=annotations)
    root = Path(root)
    return DatasetListing("folder", root, unlabeled_records(root, "folder"))
