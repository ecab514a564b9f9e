"""Stage three: finetune (or linear-probe) an initialised trunk on each split's train list, score its test list.

Read top to bottom: `run_eval` lists the dataset and checks every split, resolves INIT (its weights and
the input normalisation they expect), names the output folder by a key, then for each (split, seed)
`run_split`: seed -> data -> trunk from INIT + a new classifier -> optimizer -> train epochs (one random
clip per video each, full batches only) -> test (uniformly spaced clips per video, softmax averaged; a
video that fails to decode counts as wrong; with temporal ablations the same views shuffled in time and
with one frame repeated, evaluate.ablations) -> a RunResult. Finished runs are kept in `<out>/runs/` and
reused when the same command runs again. One process, one device (a 2-core CPU or one GPU is what eval needs).
Clips travel from the loader workers as uint8 and are normalised on the device with the init's normalisation;
a training step never waits for the device (see train_one_epoch); the training loader's workers persist across
epochs (the sampler passes the epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import logging
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from distinit.pipeline.clips.normalisation import Normalisation
from distinit.pipeline.clips.sampler import ResumableSampler
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.clips.views import video_to_device
from distinit.pipeline.devices import capped_workers, resolve_device
from distinit.pipeline.training.device_step import autocast_for, use_fast_kernels
from distinit.pipeline.training.distributed import DistributedContext
from distinit.pipeline.training.loss_tracking import NonFiniteWatch
from distinit.pipeline.training.schedule import learning_rate
from distinit.pipeline.training.seeding import seed_everything, seed_worker
from distinit.evaluate.ablations import ORIGINAL
from distinit.evaluate.classifier import VideoClassifier, build_optimizer
from distinit.evaluate.clips import EvaluationClips, TrainingClips
from distinit.evaluate.config import CODE_VERSION, EvalConfig
from distinit.evaluate.data import dataset_description, load_listing, split_records
from distinit.evaluate.initialization import Initialization, resolve_init
from distinit.evaluate.overlap import record_pretraining_overlap
from distinit.evaluate.results import EvalResult, RunResult, summarise, write_results
from distinit.evaluate.run_store import _cached_run, _run_paths, _store_run, results_key  # noqa: F401  (re-exported)
from distinit.evaluate.scoring import score
from distinit.evaluate.validation import check_validation_split, split_validation
from distinit.pipeline.datasets.groups import VIDEO_GROUPS
from distinit.pipeline.atomic import make_output_folder
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.prepared.manifest import prepared_videos
from distinit.pipeline.provenance import write_provenance

logger = logging.getLogger(__name__)

DEFAULT_OUT_ROOT = Path("results/eval")


class FinetuneError(DistinitError):
    """Finetuning cannot go on (a non-finite loss, too many test videos that do not decode)."""


def train_one_epoch(model, loader, optimizer, autocast, scaler, state, config, total_steps, device, progress,
                    normalisation: Normalisation):
    """One epoch over full batches, without waiting for the device at each step: clips arrive as uint8 and are
    mirrored (where "flipped" says) and normalised on the device with `normalisation`, the loss and correct clips are
    summed there, and a non-finite loss is looked for every NONFINITE_CHECK_EVERY steps and at the end (FinetuneError;
    nothing is saved yet)."""
    model.train()
    watch = NonFiniteWatch(DistributedContext(0, 1, 0, device), first_step=state["step"] + 1, error=FinetuneError,
                           hint="lower --lr")
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x clips, correct clips
    clips, lr, started = 0, None, time.monotonic()
    for batch in loader:
        lr = learning_rate(state["step"], base_lr=config.lr, warmup_steps=config.warmup_steps,
                           total_steps=total_steps, min_lr_fraction=config.min_lr_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        video = video_to_device(batch["video"], device, normalisation, flipped=batch.get("flipped"))
        labels = batch["label"].to(device, non_blocking=True)
        with autocast:
            logits = model(video)
        loss = F.cross_entropy(logits.float(), labels)
        watch.record(loss, state["step"] + 1)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        state["step"] += 1
        sums += torch.stack([loss.detach().double() * len(labels), (logits.argmax(dim=1) == labels).sum().double()])
        clips += len(labels)
        progress.update(1)
        if watch.due(state["step"]):
            watch.check(state["step"])  # waits for the device: the loss is ready to show without another wait
            progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2g}", refresh=False)
    watch.check(state["step"])
    loss_sum, correct = sums.tolist()
    seconds = time.monotonic() - started
    return {"step": state["step"], "lr": lr, "train_loss": loss_sum / max(clips, 1),
            "train_clip_top1": correct / max(clips, 1), "seconds": seconds, "clips_per_second": clips / max(seconds, 1e-9)}


@torch.no_grad()
def predict(model, loader, batch_size: int, autocast, device, max_failures: int, show_progress: bool,
            normalisation: Normalisation):
    """({stream: clip logits (N, C) float64}, video index per clip (N,), failed {video index: reason}).

    Stream "original" holds the test views; with temporal ablations each ablation (evaluate.ablations) is a
    stream of the same views reordered in time, row for row. Views of several videos share a forward batch;
    uint8 views are normalised on the device with `normalisation`, and the logits stay there until the end."""
    model.eval()
    logits_parts: dict[str, list[torch.Tensor]] = {}
    pending: dict[str, list[torch.Tensor]] = {}
    index_parts, pending_index, failed = [], [], {}

    def flush() -> None:
        for stream, parts in pending.items():
            # Each part on its own: a part is pinned on CUDA, a concatenation of them would not be.
            views = torch.cat([video_to_device(part, device, normalisation) for part in parts])
            with autocast:
                logits_parts.setdefault(stream, []).append(model(views).double())
        index_parts.append(torch.cat(pending_index))
        pending.clear()
        pending_index.clear()

    for sample in tqdm(loader, desc="test", unit="video", disable=not show_progress, leave=False):
        if sample["failed"] is not None:
            failed[sample["video_index"]] = sample["failed"]
            if len(failed) > max_failures:
                raise FinetuneError(f"more than {max_failures} test videos failed to decode, the last with "
                                    f"{sample['failed']}; check the videos or raise --set max_decode_failures=N")
            continue
        for stream, views in {ORIGINAL: sample["video"], **sample.get("ablations", {})}.items():
            pending.setdefault(stream, []).append(views)
        pending_index.append(torch.full((len(sample["video"]),), sample["video_index"], dtype=torch.int64))
        if sum(len(views) for views in pending[ORIGINAL]) >= batch_size:
            flush()
    if pending_index:
        flush()
    if not logits_parts:
        raise FinetuneError("no test video decoded; check the videos under --root")
    return ({stream: torch.cat(parts).cpu().numpy() for stream, parts in logits_parts.items()},
            torch.cat(index_parts).numpy(), failed)


def training_loader(records, clip: ClipSpec, seed: int, config: EvalConfig, videos: dict, device: torch.device):
    """The training clips of one run: one random clip per video per epoch, full batches only, persistent workers."""
    train_set = TrainingClips(records, clip, seed=seed, flip=config.flip, normalisation=None,
                              max_decode_failures=config.max_decode_failures, **videos)
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=seed)
    workers = capped_workers(config.workers, "loader workers")
    # drop_last: a last batch of 2 clips (HMDB-51 split 1) would give its batch norms noisy statistics.
    # Persistent workers: the sampler hands them each index's epoch.
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
                        num_workers=workers, worker_init_fn=seed_worker, pin_memory=device.type == "cuda")
    return train_set, sampler, loader


def scoring_loader(records, clip: ClipSpec, config: EvalConfig, videos: dict, device: torch.device, *,
                   clips_per_video: int, ablations: bool, persistent: bool = False):
    """Every view of each video, one video per sample (test or validation)."""
    scored_set = EvaluationClips(records, clip, clips_per_video=clips_per_video, three_crop=config.three_crop,
                                 normalisation=None, temporal_ablations=ablations, **videos)
    workers = capped_workers(config.workers, "loader workers")
    # Its own generator: starting its workers must not draw from torch's global RNG, or scoring validation between
    # epochs would change the dropout masks of the epochs after it (a tuning run and the run kept at its chosen
    # epoch must follow one trajectory).
    loader = DataLoader(scored_set, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=seed_worker,
                        pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                        generator=torch.Generator().manual_seed(0))
    return scored_set, loader


def finetune(train_records, split: int, seed: int, num_classes: int, config: EvalConfig,
             initialization: Initialization, device: torch.device, show_progress: bool, *,
             after_epoch: Callable[[VideoClassifier, int], dict] | None = None):
    """Train a new classifier on the trunk of `initialization`: (model, per-epoch curves, training videos).

    The learning rate follows the schedule of `config.epochs` epochs; training stops after `config.stop_epoch`
    (the last epoch when None), so a run kept at epoch e has the weights a full-length run had at e.
    `after_epoch(model, epoch)` (validation, in tuning) adds its fields to that epoch's curve record."""
    # ---------------------------------------------------------------- seed, data
    seed_everything(seed, 0, config.deterministic)
    use_fast_kernels(device, config.deterministic)
    clip = clip_spec(config)
    normalisation = initialization.normalisation  # applied on the device: the datasets give uint8 clips (None)
    train_set, sampler, train_loader = training_loader(train_records, clip, seed, config, videos_of(config, train_records),
                                                       device)
    # ---------------------------------------------------------------- model, optimizer
    model = VideoClassifier(initialization.build_backbone(), num_classes, config.dropout, config.linear_probe).to(device)
    trunk_lr_scale = 0.0 if config.linear_probe else config.trunk_scale(initialization.pretrained)
    optimizer = build_optimizer(model, config, trunk_lr_scale)
    autocast, scaler = autocast_for(config, device)
    total_steps = config.epochs * len(train_loader)  # full batches only (drop_last)
    stop_epoch = config.stop_epoch or config.epochs
    state, curves = {"step": 0}, []
    # ---------------------------------------------------------------- train
    with tqdm(total=stop_epoch * len(train_loader), unit="step", desc=f"split {split} seed {seed}",
              disable=not show_progress) as progress:
        for epoch in range(stop_epoch):
            sampler.set_epoch(epoch)
            record = {"epoch": epoch + 1, **train_one_epoch(model, train_loader, optimizer, autocast, scaler, state,
                                                             config, total_steps, device, progress, normalisation)}
            if after_epoch is not None:
                record.update(after_epoch(model, epoch + 1))
            curves.append(record)
            logger.info("split %d seed %d epoch %s", split, seed, json.dumps(record, sort_keys=True))
    del train_loader  # its persistent workers exit before a scoring loader starts its own
    return model, curves, len(train_set), trunk_lr_scale


def clip_spec(config: EvalConfig) -> ClipSpec:
    return ClipSpec(frames=config.frames, stride=config.stride, short_side=config.short_side, crop=config.crop)


def videos_of(config: EvalConfig, records) -> dict:
    """Where the loaders read videos: the prepared copies of `records` (config.prepared) or the originals."""
    prepared = None
    if config.prepared:
        sizes = {record.id: _file_size(record.path) for record in records}
        prepared = prepared_videos(config.prepared, short_side=config.short_side, sources=sizes)
    return dict(prepared=prepared, decoder=config.decoder, decode_device=config.decode_device)


def run_split(train_records, test_records, split: int, seed: int, num_classes: int, config: EvalConfig,
              initialization: Initialization, device: torch.device, show_progress: bool,
              validation_videos: int = 0):
    """Finetune on one split's train part with one seed and score its test list once: (RunResult, model)."""
    started = time.monotonic()
    model, curves, train_videos, trunk_lr_scale = finetune(train_records, split, seed, num_classes, config,
                                                           initialization, device, show_progress)
    test_set, test_loader = scoring_loader(test_records, clip_spec(config), config, videos_of(config, test_records),
                                           device, clips_per_video=config.test_clips,
                                           ablations=config.temporal_ablations)
    autocast, _ = autocast_for(config, device)
    clip_logits, clip_video_index, failed = predict(model, test_loader, config.batch_size, autocast, device,
                                                    config.max_decode_failures, show_progress,
                                                    initialization.normalisation)
    metrics = score(clip_logits, clip_video_index, test_set.records, num_classes, test_set.views_per_video)
    result = RunResult(split=split, seed=seed, train_videos=train_videos, validation_videos=validation_videos,
                       lr=config.lr, stop_epoch=config.stop_epoch or config.epochs,
                       failed_videos=[str(test_set.records[index].path) for index in sorted(failed)],
                       trunk_lr_scale=trunk_lr_scale, curves=curves, seconds=time.monotonic() - started, **metrics)
    return result, model


def validation_grouping(config: EvalConfig) -> str:
    """The grouping validation keeps whole: the data set's source groups, or "video" (each video its own group)."""
    return config.data if config.val_groups == "source" else VIDEO_GROUPS


def training_parts(config: EvalConfig, split: int, train_records, test_records) -> tuple[list, list]:
    """(train part, validation part) of one split's train list: `val_fraction` of it in whole source groups,
    stratified by class, divided once with `val_seed` (evaluate.validation); every run trains on the train part."""
    grouping = validation_grouping(config)
    train_part, validation_part = split_validation(train_records, grouping, config.val_fraction, config.val_seed)
    check_validation_split(train_part, validation_part, test_records, grouping)
    if len(train_part) < config.batch_size:
        raise FinetuneError(f"split {split} has {len(train_part)} training videos after holding out "
                            f"{len(validation_part)} for validation, fewer than batch_size={config.batch_size} "
                            "(training drops the last partial batch); lower --batch-size or val_fraction")
    return train_part, validation_part


def _file_size(path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op thread count for the block (None: unchanged), restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_eval(config: EvalConfig, show_progress: bool = False,
             chosen: Mapping[int, tuple[float, int]] | None = None) -> EvalResult:
    """Every (split, seed) run of `config`; writes `<out>/results.json`, config.yaml and provenance.json.

    `chosen` (evaluate.tuning): split -> (lr, stop_epoch) chosen on that split's validation part; its runs use
    them instead of the config's lr and stop_epoch."""
    with torch_threads(config.threads):
        return _run_eval(config, show_progress, dict(chosen or {}))


def split_config(config: EvalConfig, split: int, chosen: Mapping[int, tuple[float, int]]) -> EvalConfig:
    """The config of one split's runs: the lr and stop_epoch chosen for it, when tuning chose them."""
    if split not in chosen:
        return config
    lr, stop_epoch = chosen[split]
    return dataclasses.replace(config, lr=lr, stop_epoch=stop_epoch)


def _run_eval(config: EvalConfig, show_progress: bool, chosen: dict[int, tuple[float, int]]) -> EvalResult:
    started = time.monotonic()
    listing, splits_folder = load_listing(config)
    split_lists = {split: split_records(listing, split, splits_folder) for split in config.splits}
    initialization = resolve_init(config.init, student=config.student, width=config.width)
    # Refuses an init that saw test videos (by name, content or source video)
    record_pretraining_overlap(initialization, split_lists, config.allow_test_overlap, dataset=config.data)
    initialization.build_backbone().check_clip_shape(config.frames, config.crop)
    parts = {split: training_parts(config, split, train_records, test_records)
             for split, (train_records, test_records) in split_lists.items()}
    dataset = dataset_description(config, listing, splits_folder)
    key = results_key(config, dataset["manifest_sha256"], initialization, chosen=chosen)
    out_dir = Path(config.out) if config.out else DEFAULT_OUT_ROOT / key
    make_output_folder(out_dir)
    write_provenance(out_dir, config, key=key, init=initialization.description, dataset=dataset,
                     code_version=CODE_VERSION, chosen={str(split): list(value) for split, value in chosen.items()})
    device = resolve_device(config.device)
    runs = []
    for split in config.splits:
        run_config = split_config(config, split, chosen)
        run_key = results_key(run_config, dataset["manifest_sha256"], initialization)
        for seed in config.seeds:
            run = _cached_run(out_dir, run_key, split, seed, run_config)
            if run is None:
                (train_part, validation_part), test_records = parts[split], split_lists[split][1]
                run, model = run_split(train_part, test_records, split, seed, len(listing.class_names), run_config,
                                       initialization, device, show_progress, validation_videos=len(validation_part))
                _store_run(out_dir, run_key, run, model, listing.class_names, run_config)
            logger.info("split %d seed %d: clip top-1 %.3f, video top-1 %.3f, top-5 %.3f (%d of %d test videos "
                        "failed to decode, counted wrong)", split, seed, run.clip_top1, run.video_top1, run.video_top5,
                        run.failed_test_videos, run.test_videos)
            for ablation, metrics in run.ablations.items():
                logger.info("split %d seed %d, %s test clips: clip top-1 %.3f, video top-1 %.3f, top-5 %.3f", split,
                            seed, ablation, metrics["clip_top1"], metrics["video_top1"], metrics["video_top5"])
            runs.append(run)
    result = EvalResult(out_dir=out_dir, key=key, config=config, init=initialization.description, dataset=dataset,
                        class_names=list(listing.class_names), runs=runs, summary=summarise(runs),
                        seconds=time.monotonic() - started)
    write_results(result)
    return result


__all__ = ["EvalConfig", "EvalResult", "FinetuneError", "RunResult", "VideoClassifier", "run_eval", "run_split"]
