"""The embedded demo's unlabeled clip pool: `{root}/pool/*.mp4`, with root the demo folder (e.g. data/demo).

Record id = the clip's path under `pool/` without its extension (its stem, for the flat pool the
demo builder writes). The demo's labeled action set is HMDB-51-shaped and is read with the `hmdb51`
adapter on `{root}/actions/videos` (its split files sit beside it, where that adapter looks by default).
"""

from __future__ import annotations

from pathlib import Path

from distinit.pipeline.datasets import register_adapter
from distinit.pipeline.datasets.folder import unlabeled_records
from distinit.pipeline.datasets.layout import reject_options
from distinit.pipeline.datasets.records import DatasetListing
from distinit.pipeline.errors import DatasetError


@register_adapter("demo", "the embedded demo's unlabeled clip pool: {root}/pool/*.mp4 (build it with `make demo-data`)")
def load(root: Path, *, splits_dir: str | Path | None = None, annotations: str | Path | None = None) -> DatasetListing:
    reject_options("demo", splits_dir=splits_dir, annotations=annotations)
    root = Path(root)
    pool = root / "pool"
    if not pool.is_dir():
        raise DatasetError(
            f"{pool}: demo clip pool not found; run `make demo-data` (or `distinit demo-data --out {root}`)"
        )
    return DatasetListing("demo", root, unlabeled_records(pool, "demo"))
