"""One labeled split's train list divided once into a train part and a validation part, for tuning without test.

The validation part is about `fraction` of each class's training videos, in whole SOURCE GROUPS
(pipeline.datasets.groups: a UCF-101 `gXX` group, an HMDB-51 source video): clips of one source video share
scene, people and camera, so one on each side would let validation reward memorising that source. Per class,
its groups are put in a random order (seeded by the seed and the class, not by the records' order) and each
group joins validation when that brings the class's validation count closer to fraction x its videos; so the
count ends within one group of that target. A class keeps at least one training group; a class with a single
group stays all in train (logged). The same records, fraction and seed always give the same division.

    train_part, validation_part = split_validation(train_records, "ucf101", fraction=0.2, seed=0)
    check_validation_split(train_part, validation_part, test_records, "ucf101")
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from distinit.pipeline.datasets import VideoRecord
from distinit.pipeline.datasets.groups import source_group
from distinit.pipeline.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)


def groups_by_class(records: Sequence[VideoRecord], dataset: str) -> dict[int, dict[str, list[VideoRecord]]]:
    """label -> source group -> its records; refuses unlabeled or repeated records."""
    classes: dict[int, dict[str, list[VideoRecord]]] = {}
    seen: set[str] = set()
    for record in records:
        if record.label is None:
            raise DatasetError(f"{record.id}: no class label; split_validation takes one labeled split's train list")
        if record.id in seen:
            raise DatasetError(f"{record.id}: listed twice in the train list; pass each video once")
        seen.add(record.id)
        classes.setdefault(int(record.label), {}).setdefault(source_group(dataset, record.id), []).append(record)
    return classes


def class_validation_groups(sizes: dict[str, int], target: float, rng: np.random.Generator,
                            keep_one: bool = True) -> list[str]:
    """The groups of one class that go to validation (module docstring): in a random order, each group that
    brings the count closer to `target`; with `keep_one`, never the last of `sizes`."""
    names = sorted(sizes)  # sorted first, so the records' order cannot change the draw
    chosen: list[str] = []
    count = 0
    for index in rng.permutation(len(names)):
        if keep_one and len(chosen) == len(names) - 1:
            break
        size = sizes[names[index]]
        if abs(count + size - target) < abs(count - target):
            chosen.append(names[index])
            count += size
    return chosen


def validation_groups(classes: dict[int, dict[str, list[VideoRecord]]], fraction: float, seed: int) -> set[str]:
    """The source groups held out for validation, over every class. A group with clips in two classes (no
    official layout has one) stays in train: either class holding it out would leave a clip of it in train."""
    labels_of: dict[str, set[int]] = {}
    for label, groups in classes.items():
        for name in groups:
            labels_of.setdefault(name, set()).add(label)
    shared = sorted(name for name, labels in labels_of.items() if len(labels) > 1)
    if shared:
        logger.warning("validation: %d source groups have clips in several classes and stay in train (e.g. %s)",
                       len(shared), shared[0])
    chosen: set[str] = set()
    single_group = []
    for label, groups in sorted(classes.items()):
        if len(groups) < 2:
            single_group.append(next(iter(groups.values()))[0].class_name or str(label))
            continue
        sizes = {name: len(members) for name, members in groups.items() if len(labels_of[name]) == 1}
        target = fraction * sum(len(members) for members in groups.values())
        rng = np.random.default_rng([seed, label])  # per class: one class's draw never moves another's
        chosen.update(class_validation_groups(sizes, target, rng, keep_one=len(sizes) == len(groups)))
    if single_group:
        logger.warning("validation: %d classes have one source group in the train list and stay all in train "
                       "(no validation videos): %s", len(single_group), ", ".join(single_group))
    return chosen


def split_validation(records: Sequence[VideoRecord], dataset: str, fraction: float,
                     seed: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train part, validation part) of one split's train list `records`, each in the records' order."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"validation seed must be an integer >= 0, got {seed}")
    classes = groups_by_class(records, dataset)
    if fraction == 0.0:
        return list(records), []
    held_out = validation_groups(classes, fraction, int(seed))
    in_validation = [source_group(dataset, record.id) in held_out for record in records]
    train = [record for record, held in zip(records, in_validation) if not held]
    validation = [record for record, held in zip(records, in_validation) if held]
    logger.info("validation: %d of %d train videos (%d source groups, fraction %g, seed %d) held out",
                len(validation), len(records), len(held_out), fraction, seed)
    return train, validation


def check_validation_split(train: Sequence[VideoRecord], validation: Sequence[VideoRecord],
                           test: Sequence[VideoRecord], dataset: str) -> None:
    """Refuse a division where validation or train holds a test video of the split, a video is on both sides,
    or train and validation share a source group."""
    test_ids = {record.id for record in test}
    for name, part in (("validation", validation), ("train", train)):
        leaked = sorted(record.id for record in part if record.id in test_ids)
        if leaked:
            raise DatasetError(f"{len(leaked)} test videos of the split are in the {name} part (e.g. {leaked[0]}); "
                               "divide the split's train list only, never its test list")
    both = sorted({record.id for record in train} & {record.id for record in validation})
    if both:
        raise DatasetError(f"{len(both)} videos are in both the train and the validation part (e.g. {both[0]}); "
                           "divide the train list with split_validation")
    shared = sorted({source_group(dataset, record.id) for record in train}
                    & {source_group(dataset, record.id) for record in validation})
    if shared:
        raise DatasetError(f"{len(shared)} source groups have clips in both the train and the validation part "
                           f"(e.g. {shared[0]}); divide the train list with split_validation, which keeps a group whole")
