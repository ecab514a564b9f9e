"""Choose an init's learning rate and the epoch to keep on validation videos only; test chooses nothing.

    tuning = tune(config, init)                   # config.tune_lrs: the grid, e.g. (0.001, 0.003, 0.01)
    final = tuned_config(config, tuning)          # lr and stop_epoch chosen, tune_lrs emptied
    result = run_eval(final)                      # every (split, seed) run trains on the train part, tests once

For each learning rate of the grid, one run trains on the train part of the first split's train list (the first
seed) for `epochs` epochs and scores the validation part (evaluate.validation: whole source groups, stratified
by class, held out of training in every run) after every epoch: video top-1 and the video-level cross-entropy.
The chosen (learning rate, epoch) has the highest validation video top-1; ties go to the lower validation loss,
then to the earlier epoch and the smaller learning rate. The final runs follow the same schedule of `epochs` and
stop at the chosen epoch, so they keep what the tuning run had at that point.

Each tuning run is cached under `results/eval/tune-<key>/` (key: the run's config with that learning rate, the
dataset, the init, the code version), so a comparison run again, or with more seeds, tunes nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.device_step import autocast_for
from evaluate.config import CODE_VERSION, EvalConfig
from evaluate.data import dataset_description, load_listing, split_records
from evaluate.finetune import (DEFAULT_OUT_ROOT, finetune, predict, results_key, scoring_loader, clip_spec,
                               torch_threads, training_parts, videos_of)
from evaluate.initialization import Initialization, resolve_init
from evaluate.metrics import video_scores
from pipeline.atomic import atomic_write_text, make_output_folder
from pipeline.devices import resolve_device

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Tuning:
    """What tuning tried and chose for one init (JSON-ready through `to_dict`)."""

    split: int
    seed: int
    train_videos: int
    validation_videos: int
    validation_groups: int
    curves: dict[str, list[dict[str, float]]]  # str(lr) -> per epoch: epoch, val_video_top1, val_loss
    lr: float  # chosen
    stop_epoch: int  # chosen
    val_video_top1: float  # at the chosen (lr, epoch)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def best_by_lr(self) -> dict[str, dict[str, float]]:
        """str(lr) -> its best epoch's record, by the rule of the module docstring."""
        return {lr: max(curve, key=_rank) for lr, curve in self.curves.items()}


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
    scored = sorted(set(video_index.tolist()))
    position = {video: place for place, video in enumerate(scored)}
    scores = video_scores(logits["original"], np.array([position[video] for video in video_index]), len(scored))
    labels = np.array([records[video].label for video in scored], dtype=np.int64)
    correct = int((scores.argmax(axis=1) == labels).sum())
    loss = float(-np.log(np.clip(scores[np.arange(len(scored)), labels], 1e-12, None)).mean())
    failed = len(records) - len(scored)
    # A failed video is wrong, and its loss is the loss of a uniform guess.
    mean_loss = (loss * len(scored) + failed * float(np.log(num_classes))) / len(records)
    return correct / len(records), mean_loss


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
    """Try every learning rate of `config.tune_lrs` for `config.init` on the first split's validation part."""
    with torch_threads(config.threads):
        return _tune(config, show_progress)


def _tune(config: EvalConfig, show_progress: bool) -> Tuning:
    from pipeline.datasets.groups import source_group

    if not config.tune_lrs:
        raise ValueError("tune needs config.tune_lrs")
    listing, splits_folder = load_listing(config)
    split, seed = config.splits[0], config.seeds[0]
    train_records, test_records = split_records(listing, split, splits_folder)
    parts = training_parts(config, split, train_records, test_records)
    initialization = resolve_init(config.init, student=config.student, width=config.width)
    manifest = dataset_description(config, listing, splits_folder)["manifest_sha256"]
    device = resolve_device(config.device)
    curves = {}
    for lr in config.tune_lrs:
        run_config = dataclasses.replace(config, lr=lr, stop_epoch=None, tune_lrs=())
        key = results_key(run_config, manifest, initialization)
        path = DEFAULT_OUT_ROOT / f"tune-{key}" / f"split{split}-seed{seed}.json"
        curve = _cached_curve(path, key)
        if curve is None:
            started = time.monotonic()
            curve = _tuning_curve(config, lr, parts, split, seed, len(listing.class_names), initialization, device,
                                  show_progress)
            make_output_folder(path.parent)
            atomic_write_text(path, json.dumps({"key": key, "code_version": CODE_VERSION, "init": config.init,
                                                "lr": lr, "curve": curve,
                                                "seconds": time.monotonic() - started}, sort_keys=True) + "\n")
        else:
            logger.info("tuning %s lr %g: reusing %s", config.init, lr, path)
        curves[f"{lr:g}"] = curve
    lr, epoch, top1 = choose(curves)
    logger.info("tuning %s: lr %g, epoch %d (validation video top-1 %.3f)", config.init, lr, epoch, top1)
    validation_part = parts[1]
    return Tuning(split=split, seed=seed, train_videos=len(parts[0]), validation_videos=len(validation_part),
                  validation_groups=len({source_group(config.data, record.id) for record in validation_part}),
                  curves=curves, lr=lr, stop_epoch=epoch, val_video_top1=top1)


def tuned_config(config: EvalConfig, tuning: Tuning | None) -> EvalConfig:
    """The config of the final runs: the chosen lr and stop_epoch, no grid (so the runs' key holds what they used)."""
    if tuning is None:
        return config
    return dataclasses.replace(config, lr=tuning.lr, stop_epoch=tuning.stop_epoch, tune_lrs=())


__all__ = ["Tuning", "choose", "tune", "tuned_config"]
