"""Choose an init's learning rate and the epoch to keep on validation videos only; test chooses nothing.

    tuning = tune(config)                                  # config.tune_lrs: the grid, e.g. (0.001, 0.003, 0.01)
    result = run_eval(config, chosen=tuning.chosen())      # each split's runs with its own lr and epoch

For every split of `config.splits`, and each learning rate of the grid, one run (the first seed) trains on that
split's train part for `epochs` epochs and scores its validation part (evaluate.validation: whole source groups of
the split's train list, stratified by class, held out of training in every run) after every epoch: video top-1 and
the video-level cross-entropy. The chosen (learning rate, epoch) has the highest validation video top-1; ties go to
the lower validation loss, then to the earlier epoch and the smaller learning rate. Each split is tuned on its own
validation part because a split's train list holds other splits' test videos (UCF-101's split 1 trains on groups
that split 2 tests on): values chosen on split 1 and used on split 2 would have been chosen partly on split 2's test
videos. The final runs follow the same schedule of `epochs` and stop at the chosen epoch; the run with the tuning
seed repeats the tuning run's trajectory up to there (validation scoring draws no random numbers from it).

Each tuning curve is cached under `results/eval/tune-<key>/` (key: the run's config with that learning rate, less
the test-time options; the dataset, the init, the code version), so a comparison run again, or with more seeds,
tunes nothing twice. Before any run the init's pretraining videos are checked against the test lists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from distinit.pipeline.training.device_step import autocast_for
from distinit.evaluate.ablations import ORIGINAL
from distinit.evaluate.config import CODE_VERSION, EvalConfig
from distinit.evaluate.data import dataset_description, load_listing, split_records
from distinit.evaluate.finetune import (DEFAULT_OUT_ROOT, clip_spec, finetune, predict, results_key, scoring_loader,
                               torch_threads, training_parts, validation_grouping, videos_of)
from distinit.evaluate.initialization import Initialization, resolve_init
from distinit.evaluate.overlap import record_pretraining_overlap
from distinit.evaluate.scoring import accuracies
from distinit.pipeline.atomic import atomic_write_text, make_output_folder
from distinit.pipeline.datasets.groups import source_group
from distinit.pipeline.devices import resolve_device

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitTuning:
    """What tuning tried and chose on one split's validation part (JSON-ready through `dataclasses.asdict`)."""

    split: int
    seed: int
    train_videos: int
    validation_videos: int
    validation_groups: int
    curves: dict[str, list[dict[str, float]]]  # str(lr) -> per epoch: epoch, val_video_top1, val_loss, train_loss
    lr: float  # chosen
    stop_epoch: int  # chosen
    val_video_top1: float  # at the chosen (lr, epoch)

    def best_by_lr(self) -> dict[str, dict[str, float]]:
        """str(lr) -> its best epoch's record, by the rule of the module docstring."""
        return {lr: max(curve, key=_rank) for lr, curve in self.curves.items()}


@dataclasses.dataclass
class Tuning:
    """Every split's tuning for one init."""

    splits: list[SplitTuning]

    def chosen(self) -> dict[int, tuple[float, int]]:
        """split -> (lr, stop_epoch), what `run_eval(chosen=...)` takes."""
        return {entry.split: (entry.lr, entry.stop_epoch) for entry in self.splits}

    def to_dict(self) -> dict[str, Any]:
        return {"splits": [dataclasses.asdict(entry) for entry in self.splits]}


def _rank(record: dict[str, float]) -> tuple[float, float, float]:
    return record["val_video_top1"], -record["val_loss"], -record["epoch"]


def choose(curves: dict[str, list[dict[str, float]]]) -> tuple[float, int, float]:
    """(lr, epoch, validation video top-1) of the best record: the module docstring's rule."""
    candidates = [(_rank(record), -float(lr), float(lr), record) for lr, curve in curves.items() for record in curve]
    _, _, lr, record = max(candidates, key=lambda candidate: (candidate[0], candidate[1]))
    return lr, int(record["epoch"]), float(record["val_video_top1"])


def validation_scores(model, loader, records, num_classes: int, config: EvalConfig, device, normalisation):
    """(video top-1, mean video-level cross-entropy) of `model` on the validation videos; failed ones count wrong."""
    autocast, _ = autocast_for(config, device)
    logits, video_index, _ = predict(model, loader, config.batch_size, autocast, device, config.max_decode_failures,
                                     False, normalisation)
    labels = np.array([record.label for record in records], dtype=np.int64)
    metrics, scored, scores = accuracies(logits[ORIGINAL], video_index, labels, config.val_clips)  # scored: (V, C)
    loss = float(-np.log(np.clip(scores[np.arange(len(scored)), labels[scored]], 1e-12, None)).sum())
    # A failed video is wrong (as `accuracies` counts it), and its loss is the loss of a uniform guess.
    failed = len(records) - len(scored)
    return metrics["video_top1"], (loss + failed * float(np.log(num_classes))) / len(records)


def _tuning_curve(config: EvalConfig, lr: float, parts, split: int, seed: int, num_classes: int,
                  initialization: Initialization, device, show_progress: bool) -> list[dict[str, float]]:
    train_part, validation_part = parts
    run_config = dataclasses.replace(config, lr=lr, stop_epoch=None, tune_lrs=())
    validation_set, validation_loader = scoring_loader(
        validation_part, clip_spec(run_config), run_config, videos_of(run_config, validation_part), device,
        clips_per_video=run_config.val_clips, ablations=False, persistent=True)

    def after_epoch(model, epoch: int) -> dict[str, float]:
        top1, loss = validation_scores(model, validation_loader, validation_set.records, num_classes, run_config,
                                       device, initialization.normalisation)
        model.train()
        return {"val_video_top1": top1, "val_loss": loss}

    _, curves, _, _ = finetune(train_part, split, seed, num_classes, run_config, initialization, device, show_progress,
                               after_epoch=after_epoch)
    return [{"epoch": record["epoch"], "val_video_top1": record["val_video_top1"], "val_loss": record["val_loss"],
             "train_loss": record["train_loss"]} for record in curves]


def _cached_curve(path: Path, key: str) -> list[dict[str, float]] | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored.get("curve") if isinstance(stored, dict) and stored.get("key") == key else None


def tune(config: EvalConfig, show_progress: bool = False) -> Tuning:
    """Try every learning rate of `config.tune_lrs` for `config.init` on each split's validation part."""
    with torch_threads(config.threads):
        return _tune(config, show_progress)


def _tune(config: EvalConfig, show_progress: bool) -> Tuning:
    if not config.tune_lrs:
        raise ValueError("tune needs config.tune_lrs")
    listing, splits_folder = load_listing(config)
    split_lists = {split: split_records(listing, split, splits_folder) for split in config.splits}
    initialization = resolve_init(config.init, student=config.student, width=config.width)
    # Refused before hours of tuning, as run_eval would refuse it after them.
    record_pretraining_overlap(initialization, split_lists, config.allow_test_overlap, dataset=config.data)
    initialization.build_backbone().check_clip_shape(config.frames, config.crop)
    manifest = dataset_description(config, listing, splits_folder)["manifest_sha256"]
    device = resolve_device(config.device)
    return Tuning([_tune_split(config, split, train_records, test_records, len(listing.class_names), manifest,
                               initialization, device, show_progress)
                   for split, (train_records, test_records) in split_lists.items()])


def _tune_split(config: EvalConfig, split: int, train_records, test_records, num_classes: int, manifest: str,
                initialization: Initialization, device, show_progress: bool) -> SplitTuning:
    seed = config.seeds[0]
    parts = training_parts(config, split, train_records, test_records)
    curves = {}
    for lr in config.tune_lrs:
        run_config = dataclasses.replace(config, lr=lr, stop_epoch=None, tune_lrs=())
        key = results_key(run_config, manifest, initialization, purpose="tuning")
        path = DEFAULT_OUT_ROOT / f"tune-{key}" / f"split{split}-seed{seed}.json"
        curve = _cached_curve(path, key)
        if curve is None:
            started = time.monotonic()
            curve = _tuning_curve(config, lr, parts, split, seed, num_classes, initialization, device, show_progress)
            make_output_folder(path.parent)
            atomic_write_text(path, json.dumps({"key": key, "code_version": CODE_VERSION, "init": config.init,
                                                "lr": lr, "curve": curve,
                                                "seconds": time.monotonic() - started}, sort_keys=True) + "\n")
        else:
            logger.info("tuning %s split %d lr %g: reusing %s", config.init, split, lr, path)
        curves[f"{lr:g}"] = curve
    lr, epoch, top1 = choose(curves)
    logger.info("tuning %s split %d: lr %g, epoch %d (validation video top-1 %.3f)", config.init, split, lr, epoch, top1)
    validation_part = parts[1]
    return SplitTuning(split=split, seed=seed, train_videos=len(parts[0]), validation_videos=len(validation_part),
                       validation_groups=len({source_group(validation_grouping(config), record.id)
                                              for record in validation_part}),
                       curves=curves, lr=lr, stop_epoch=epoch, val_video_top1=top1)


__all__ = ["SplitTuning", "Tuning", "choose", "tune"]
