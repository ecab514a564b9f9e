"""`distinit teachers --fetch`: fill every weights cache a run will need, on a machine with internet (a cluster's
login node), so the compute nodes can run `--offline`.

Each teacher instance of the extract config is built exactly as the extract stage builds it (same kind, options and
weights file), which loads its weights through the same download code into the same caches (torch hub, Hugging Face,
Detectron2's), then closed. The 2D weights of eval's `inflated:<model>` inits: evaluate.inflate.fetch_2d_weights.
"""

from __future__ import annotations

import logging
from typing import Iterator

from distinit.extract.config import ExtractConfig
from distinit.extract.teachers import create_teacher
from distinit.extract.teachers.registry import TEACHERS, check_teacher_kinds
from distinit.pipeline.weights.download import presence

logger = logging.getLogger(__name__)


def fetch_teachers(config: ExtractConfig) -> Iterator[str]:
    """Build and close every teacher instance of `config` on the CPU; yield one line per weights file it uses, with
    where it is now. A teacher that cannot get its weights raises its own one-line error."""
    instances = config.teacher_instances
    check_teacher_kinds(instance.kind for instance in instances)
    for instance in instances:
        options = dict(config.teacher_options.get(instance.name, {}))
        create_teacher(instance.kind, name=instance.name, device="cpu", **options).close()
        if "weights" in options:  # a file the user named: nothing was downloaded
            yield f"{instance.entry}: ready (the file {options['weights']})"
            continue
        sources = TEACHERS[instance.kind].weights_sources(**options)
        if not sources:
            yield f"{instance.entry}: ready (no download (shipped or none))"
        for source in sources:
            yield f"{instance.entry}: {source.description}: {presence(source)} ({source.local_path or source.origin})"
