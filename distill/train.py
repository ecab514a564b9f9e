"""Stage two: train a 3D student to predict the cached teacher targets from whole clips.

Read top to bottom: set up (processes, seeds, data, model, optimizer) -> resume -> for each epoch,
train one epoch, measure the held-out distillation loss, log one JSON line, save checkpoints.
Runs as one process, or as many under `torchrun` (DDP; gloo on CPU, nccl on GPU). A step is one global batch
(`global_batch` clips over all processes, micro-batches accumulated up to it:
pipeline.clips.sampler.GlobalBatchSampler), so a run is the same run, and resumes, on any number of processes that
makes it up.

Preemption (pipeline.preemption): on SIGTERM or SIGUSR1 every rank finishes its step, the ranks vote (one
all-reduce of a flag per step, on host memory), all save at that step boundary, rank 0 asks SLURM to requeue the
job, and every rank stops with `Preempted`. The requeued job runs the same command and resumes from that step.

Feeding a GPU (distill.device_batch, pipeline.training.device_step): RGB clips travel as uint8 and are normalised
on the device; on CUDA batches are pinned and copied without waiting, and cuDNN picks its fastest kernels for the
fixed clip shape (not with --deterministic). Loader workers persist across epochs: the sampler passes each index's
epoch (pipeline.clips.sampler). A step never waits for the device: loss figures are summed there
(distill.loss_totals) and read every NONFINITE_CHECK_EVERY steps (pipeline.training.loss_tracking).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from distinit.distill.checkpoint import (LAST, CheckpointSaver, append_epoch_log, checkpoint_state, pretraining_content_hashes,
                               resume_or_start, tidy_for_resume)
from distinit.distill.config import CODE_VERSION, DistillConfig
from distinit.distill.clip_videos import freeze_for_workers
from distinit.distill.data import TargetClipDataset, build_clip_videos, open_targets, split_videos, video_files
from distinit.distill.device_batch import input_normalisation, to_device
from distinit.distill.loss_totals import DISTILL_HINT, LossTotals, TrainingError
from distinit.distill.losses import DistillationLoss
from distinit.distill.heads import head_specs_from_teachers
from distinit.distill.students import create_student
from distinit.distill.targets_folder import check_targets, resolve_targets_dir, targets_fingerprint
from distinit.distill.tensorboard_log import open_tensorboard_log
from distinit.pipeline.atomic import make_output_folder, replace_shared_text
from distinit.pipeline.clips.sampler import GlobalBatchSampler, ResumableSampler
from distinit.pipeline.clips.spec import ClipSpec
from distinit.pipeline.devices import capped_workers, cores_per_rank
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file, sha256_json
from distinit.pipeline.preemption import (Preempted, PreemptionWatch, ignore_preemption_signals, preempted_message,
                                 requeue_job)
from distinit.pipeline.prepared.manifest import sealed_folder
from distinit.pipeline.provenance import git_state, write_provenance
from distinit.pipeline.stages.graph import distill_stage_inputs
from distinit.pipeline.stages.stamps import STAGE_RECORD, read_stamp, write_stage_record
from distinit.pipeline.shards import MANIFEST_NAME
from distinit.pipeline.training.device_step import autocast_for, use_fast_kernels
from distinit.pipeline.training.distributed import (DistributedContext, all_gather_objects, all_reduce_sum, any_rank,
                                                    barrier, init_distributed, shutdown, sum_over_ranks)
from distinit.pipeline.training.loss_tracking import NonFiniteWatch
from distinit.pipeline.training.schedule import learning_rate
from distinit.pipeline.training.seeding import rng_states, seed_everything, seed_worker

logger = logging.getLogger(__name__)

__all__ = ["TrainingError", "TrainingResult", "train", "train_one_epoch", "evaluate"]


@dataclasses.dataclass
class TrainingResult:
    run_dir: Path
    step: int
    epoch: int
    history: list[dict[str, Any]]  # every rank's figures, summed over all ranks
    stopped_early: bool
    is_main: bool = True  # rank 0 (or the only process): the one that reports


def run_key(config: DistillConfig, fingerprint: str, world_size: int = 1) -> str:
    """The run folder's name. It holds the global batch (clips per step over all processes), not the number of
    processes: with `global_batch` set, 8 processes x 1 and 2 x 4 accumulation steps are one run. Prepared copies
    hold other pixels than the originals: their folder's key is part of it too."""
    fields = {"config": config.key_fields(world_size), "targets": fingerprint, "code_version": CODE_VERSION}
    if config.prepared is not None:
        fields["prepared"] = sealed_folder(config.prepared).name  # its key: the copies' options and videos
    return sha256_json(fields)[:16]


def loader_worker_init(worker_id: int) -> None:
    """Seed the worker, and leave a scheduler's signals to the training process (pipeline.preemption)."""
    seed_worker(worker_id)
    ignore_preemption_signals()


def build_datasets(config: DistillConfig, targets_dir: Path):
    """(store, training set, held-out set or None), sharing one video table built for this rank."""
    store = open_targets(targets_dir)
    train_ids, val_ids = split_videos(store.video_ids(), config.val_fraction, config.seed)
    clip = ClipSpec(frames=config.frames, stride=config.stride, short_side=config.short_side, crop=config.crop,
                    modality=config.modality)
    # Built once per rank and shared by both sets and their workers (distill.clip_videos).
    videos = build_clip_videos(store, videos_root=config.videos_root, prepared=config.prepared,
                               short_side=config.short_side)
    common = dict(seed=config.seed, cache_clips=config.cache_clips, videos=videos,
                  decoder=config.decoder, decode_device=config.decode_device,
                  max_decode_failures=config.max_decode_failures, target_agg=config.target_agg,
                  temperature=config.temperature, crop_in_teacher_view=config.crop_in_teacher_view,
                  loss_weights=dict(config.loss_weights),
                  # The held-out loss shuffles too, so the control's best checkpoint is picked on its own terms.
                  shuffle_targets=config.shuffle_targets)
    if config.modality == "flow":
        common["flow_method"] = config.flow_method
    train_set = TargetClipDataset(targets_dir, train_ids, clip, train=True, clips_per_video=config.clips_per_video, **common)
    val_set = TargetClipDataset(targets_dir, val_ids, clip, train=False, **common) if val_ids else None
    return store, train_set, val_set


def build_loaders(config: DistillConfig, targets_dir: Path, context: DistributedContext):
    store, train_set, val_set = build_datasets(config, targets_dir)
    freeze_for_workers()  # the workers fork later, at the first iteration (distill.clip_videos)
    train_sampler = GlobalBatchSampler(len(train_set), batch_size=config.batch_size,
                                       global_batch=int(config.global_batch_for(context.world_size)),
                                       seed=config.seed, rank=context.rank, world_size=context.world_size)
    # Loaders get their own generators, so creating an iterator never draws from the global torch RNG
    # (a resumed run creates one at a different point than an uninterrupted run would). Workers persist: the
    # sampler hands them each index's epoch.
    workers = capped_workers(config.workers, "loader workers")
    loader_options = dict(batch_size=config.batch_size, num_workers=workers, worker_init_fn=loader_worker_init,
                          pin_memory=context.device.type == "cuda", persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(config.seed))
    train_loader = DataLoader(train_set, sampler=train_sampler, **loader_options)
    val_loader = None
    if val_set is not None:
        val_sampler = ResumableSampler(len(val_set), shuffle=False, seed=config.seed, rank=context.rank,
                                       world_size=context.world_size)
        # Not persistent: its workers would sit idle (holding memory) through every training epoch.
        val_loader = DataLoader(val_set, sampler=val_sampler, **{**loader_options, "persistent_workers": False})
    return store, train_loader, val_loader


def build_optimizer(model: torch.nn.Module, config: DistillConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters (standard for ResNets).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def agreement_key(heads, teachers: list[dict[str, Any]]) -> str | None:
    """The ImageNet classifier head, whose top-1 agreement with its teacher is logged each epoch. What a teacher
    is comes from its kind: an instance may be named anything (`objects=imagenet-torchvision`)."""
    kinds = {teacher["name"]: teacher.get("kind", teacher["name"]) for teacher in teachers}
    logits_heads = [head for head in heads if head.kind == "logits"]
    imagenet = [head.key for head in logits_heads if kinds.get(head.teacher, head.teacher).startswith("imagenet")]
    return (imagenet or [head.key for head in logits_heads] or [None])[0]


def train_one_epoch(model, loader, loss_fn, optimizer, scaler, autocast, state, config, context, total_steps, progress,
                    on_checkpoint, resumed: dict[str, Any] | None = None, *, accum_steps: int = 1,
                    base_lr: float | None = None, preemption: PreemptionWatch | None = None,
                    on_log=None) -> dict[str, Any]:
    """One pass over this rank's part of the training clips (the rest of it, after a mid-epoch resume), a step
    every `accum_steps` micro-batches (their gradients summed; DDP all-reduces once, at the last). Calls
    `on_checkpoint(epoch_progress)` every `save_every_steps`, with this rank's running figures so far; stops early
    (state["stopped"]) at `stop_after_steps`, and after saving (state["preempted"]) when any rank was signalled
    (`preemption`). `on_log(record)`: every `log_every_steps`, the running training loss since the last one, over
    all ranks. `resumed`: the epoch_progress of the checkpoint this run resumed from, so the returned figures
    cover the whole epoch. Every rank raises the same TrainingError, within NONFINITE_CHECK_EVERY steps and
    before any checkpoint, when a loss is non-finite on any rank. Returns the epoch's loss figures and clips over
    all ranks, and this rank's timings."""
    model.train()
    base_lr = config.lr if base_lr is None else base_lr
    totals = LossTotals(loss_fn, context.device)
    normalisation = input_normalisation(model)
    # A checkpoint follows a passed check, so the watch has nothing to carry over a resume.
    watch = NonFiniteWatch(context, first_step=state["step"] + 1, error=TrainingError, hint=DISTILL_HINT)
    window = torch.zeros(2, dtype=torch.float64, device=context.device)  # loss sum, micro-batches since the last log
    data_wait, earlier_seconds = 0.0, 0.0
    if resumed is not None:
        totals.load_state_dict(resumed["totals"])
        data_wait, earlier_seconds = resumed["data_wait"], resumed["seconds"]
    # This rank's clips of the epoch: the sum of their crop_in_view and their count (a checkpoint keeps them).
    in_view = list(resumed.get("crop_in_view", (0.0, 0))) if resumed is not None else [0.0, 0]
    started = time.monotonic()
    waiting_since = time.monotonic()
    micro = 0
    for batch in loader:
        data_wait += time.monotonic() - waiting_since
        if "crop_in_view" in batch:  # (a TargetClipDataset's batches have it; hand-made ones may not)
            in_view = [in_view[0] + float(batch["crop_in_view"].sum()), in_view[1] + len(batch["crop_in_view"])]
        if micro == 0:
            lr = learning_rate(state["step"], base_lr=base_lr, warmup_steps=config.warmup_steps,
                               total_steps=total_steps, min_lr_fraction=config.min_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        stepping = micro == accum_steps
        video, targets = to_device(batch, context.device, context.device.type == "cuda", normalisation)
        # DDP all-reduces gradients in backward: only the step's last micro-batch needs it.
        syncing = contextlib.nullcontext() if stepping or not hasattr(model, "no_sync") else model.no_sync()
        with syncing:
            with autocast:
                predictions = model(video)
            terms = loss_fn({key: value.float() for key, value in predictions.items()}, targets)
            loss = terms["loss"] / accum_steps if accum_steps > 1 else terms["loss"]  # the mean over the step's clips
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        watch.record(terms["loss"], state["step"] + 1)
        totals.add(terms, len(video))
        window[0] += terms["loss"].detach()
        window[1] += 1
        if not stepping:
            waiting_since = time.monotonic()
            continue
        micro = 0
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        state["step"] += 1
        progress.update(1)
        saving = state["step"] % config.save_every_steps == 0 or state["step"] == config.stop_after_steps
        logging_now = on_log is not None and state["step"] % config.log_every_steps == 0
        if saving or logging_now or watch.due(state["step"]):
            watch.check(state["step"])  # waits for the device: the loss is ready to show without another wait
            progress.set_postfix(loss=f"{terms['loss'].item():.3f}", lr=f"{lr:.2g}", refresh=False)
        if logging_now:
            loss_sum, micro_batches = all_reduce_sum(window.clone(), context).tolist()
            window.zero_()
            on_log({"record": "step", "step": state["step"], "epoch": state["epoch"] + 1, "lr": lr,
                    "train_loss_running": loss_sum / max(micro_batches, 1.0)})
        # Every rank votes every step, so all stop at the same step boundary.
        preempted = preemption is not None and any_rank(preemption.requested, context)
        if saving or preempted:
            on_checkpoint({"totals": totals.state_dict(), "data_wait": data_wait, "crop_in_view": list(in_view),
                           "seconds": earlier_seconds + time.monotonic() - started})
        if preempted:
            state["stopped"] = state["preempted"] = True
            break
        if state["step"] == config.stop_after_steps:
            state["stopped"] = True
            break
        waiting_since = time.monotonic()
    watch.check(state["step"])
    figures, clips = totals.global_figures(context)
    seconds = earlier_seconds + time.monotonic() - started
    in_view_sum, in_view_clips = all_reduce_sum(torch.tensor(in_view, dtype=torch.float64, device=context.device),
                                                context).tolist()  # every rank's clips, as the other figures
    return {"figures": figures, "clips": clips, "data_wait": data_wait, "seconds": seconds,
            "crop_in_view": in_view_sum / in_view_clips if in_view_clips else None}


@torch.no_grad()
def evaluate(model, loader, loss_fn, autocast, context, agreement) -> dict[str, float]:
    """Held-out distillation loss (per term, as over all clips at once: LossTotals), top-1 and top-5 agreement with
    the ImageNet teacher (the teacher's top class among the student's top 1 / top 5), and how many held-out clips
    they are over (on the demo, a handful: read the agreement with that in mind), over all ranks."""
    model.eval()
    totals = LossTotals(loss_fn, context.device)
    agreeing = torch.zeros(2, dtype=torch.float64, device=context.device)  # top-1, top-5
    normalisation = input_normalisation(model)
    for batch in loader:
        video, targets = to_device(batch, context.device, context.device.type == "cuda", normalisation)
        with autocast:
            predictions = model(video)
        totals.add(loss_fn({key: value.float() for key, value in predictions.items()}, targets), len(video))
        if agreement is not None:
            student, teacher = predictions[agreement], targets[agreement].argmax(dim=1, keepdim=True)  # (B, C), (B, 1)
            top5 = student.topk(min(5, student.shape[1]), dim=1).indices  # (B, 5)
            agreeing += torch.stack([(top5[:, :1] == teacher).sum(), (top5 == teacher).sum()]).double()
    figures, clips = totals.global_figures(context)
    result = {f"val_{name}": value for name, value in figures.items()}
    result["val_clips"] = clips
    if agreement is not None:
        top1, top5 = (all_reduce_sum(agreeing, context) / max(clips, 1)).tolist()
        result["val_agreement_top1"], result["val_agreement_top5"] = top1, top5
    return result


def resumed_epoch_progress(state, step_in_epoch: int) -> dict[str, Any] | None:
    """This rank's running figures of the epoch the run resumed in, from its checkpoint; taken once (None for the
    epochs after it). A mid-epoch checkpoint without them predates them: say what the epoch's figures cover."""
    resumed = state.pop("epoch_progress", None)
    if step_in_epoch and resumed is None:
        logger.warning("resumed mid-epoch from a checkpoint written before checkpoints kept the epoch's running "
                       "figures: epoch %d's logged train figures cover only its steps after step %d",
                       state["epoch"] + 1, state["step"])
    return resumed


# Above this fraction of an epoch spent waiting for batches, the loader holds training back: said once an epoch.
DATA_WAIT_WARNING = 0.2


def data_wait_message(fraction: float, workers: int) -> str | None:
    """A warning naming the data-wait fraction when the loader held the steps back, with what to try; else None."""
    if fraction <= DATA_WAIT_WARNING:
        return None
    return (f"the loader held training back: {fraction:.0%} of the epoch waited for batches with {workers} loader "
            f"workers per rank ({cores_per_rank()} cores each); raise workers if cores are idle, or read prepared "
            f"copies (make prepare, PREPARE=1)")


def epoch_record(state, stats: dict, validation: dict, lr: float) -> dict[str, Any]:
    record = {"epoch": state["epoch"], "step": state["step"], "lr": lr}
    record.update({f"train_{name}": value for name, value in stats["figures"].items()})
    record.update(validation)
    # Clips of all ranks over the epoch's wall time; the data-wait fraction is rank 0's own.
    record["clips_per_second"] = stats["clips"] / max(stats["seconds"], 1e-9)
    record["data_wait_fraction"] = stats["data_wait"] / max(stats["seconds"], 1e-9)
    record["seconds"] = stats["seconds"]
    if stats.get("crop_in_view") is not None:  # mean fraction of the epoch's crops inside the teachers' view
        record["train_crop_in_view"] = stats["crop_in_view"]
    return record


def pretraining_videos(store, videos_root: str | None) -> dict[str, Any]:
    """Every video of the targets, held-out ones included (they chose the best checkpoint), so evaluation can
    check that none of its test videos was seen here: {"count", "names" (file stems, sorted), "sha256" (of the
    names), "content_sha256"}. Kept once per checkpoint, outside the provenance: for Kinetics the names are
    megabytes. "content_sha256" (distill.checkpoint.pretraining_content_hashes): the original files' content hashes
    as stage one stored them, so eval finds a renamed copy of a test video; absent when the targets hold none."""
    paths = video_files(store, videos_root)
    names = sorted(os.path.splitext(os.path.basename(path))[0] for path in paths.values())
    videos = {"count": len(names), "names": names, "sha256": sha256_json(names)}
    content = pretraining_content_hashes(store, paths)
    if content is not None:
        videos["content_sha256"] = content
    return videos


def run_provenance(context: DistributedContext, store, targets_dir: Path, fingerprint: str,
                   videos: dict[str, Any]) -> dict[str, Any]:
    """What provenance.json and every checkpoint record about the run; of the pretraining `videos`, their number
    and hash only (the names are in each checkpoint once, and would go on into every eval result from here)."""
    dataset = store.manifest.get("dataset")
    provenance = {**git_state(), "targets_dir": str(targets_dir), "targets_fingerprint": fingerprint,
                  "targets_manifest_sha256": sha256_file(targets_dir / MANIFEST_NAME),
                  "code_version": CODE_VERSION, "world_size": context.world_size,
                  "pretraining_videos": {"count": videos["count"], "sha256": videos["sha256"], "dataset": dataset}}
    if dataset:
        provenance["dataset"] = dataset
    return provenance


def record_stage_key(run_dir: Path, config: DistillConfig, targets_dir: Path, world_size: int) -> None:
    """Record in the finished run the distill stage key it was made under (pipeline.stages.stamps: make adopts the run,
    however it was launched), from the extract key its targets record (targets sealed before extract recorded one:
    nothing to record, make re-runs the stage, which finds this run done)."""
    extract = read_stamp(targets_dir / STAGE_RECORD)
    prepare = read_stamp(sealed_folder(config.prepared) / STAGE_RECORD) if config.prepared is not None else None
    if extract is None or (config.prepared is not None and prepare is None):
        return
    inputs = distill_stage_inputs(config, world_size, extract["key"], prepare["key"] if prepare else None)
    write_stage_record(run_dir, "distill", inputs)


def train(config: DistillConfig, show_progress: bool = True) -> TrainingResult:
    with PreemptionWatch() as preemption:
        return _train(config, show_progress, preemption)


def _train(config: DistillConfig, show_progress: bool, preemption: PreemptionWatch) -> TrainingResult:
    # ---------------------------------------------------------------- processes, seeds, targets
    context = init_distributed(config.device)
    accum_steps = config.accum_steps(context.world_size)  # a global batch these processes cannot make up: refused
    seed_everything(config.seed, context.rank, config.deterministic)
    use_fast_kernels(context.device, config.deterministic)
    targets_dir = resolve_targets_dir(config.targets)
    # The shards are statted against the last clean verify's record; bytes are read only when that is stale.
    check_targets(targets_dir, context)
    fingerprint = targets_fingerprint(targets_dir)
    run_dir = Path(config.out) / run_key(config, fingerprint, context.world_size)
    # ---------------------------------------------------------------- data, model, loss, optimizer
    store, train_loader, val_loader = build_loaders(config, targets_dir, context)
    heads = head_specs_from_teachers(store.teachers)
    if accum_steps > 1 and any(head.kind == "heatmaps" for head in heads):
        # Their term is a mean over the people of the whole step, all ranks together (distill.losses); accumulated
        # micro-batches would each be normalised by their own count, weighing them otherwise than one big step.
        raise ConfigError(
            f"keypoint targets with {accum_steps} accumulation steps: their loss is a mean over the step's people, "
            f"which accumulation does not reproduce; run on {accum_steps * context.world_size} processes of "
            f"batch_size {config.batch_size} (no accumulation), or raise batch_size so that batch_size x processes "
            f"= global_batch")
    model = create_student(config.student, heads, width=config.width, dropout=config.dropout,
                           in_channels=2 if config.modality == "flow" else 3).to(context.device)
    if context.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    loss_fn = DistillationLoss(heads, temperature=config.temperature, weights=dict(config.loss_weights) or None,
                               sum_over_ranks=sum_over_ranks(context), world_size=context.world_size)
    optimizer = build_optimizer(model, config)
    autocast, scaler = autocast_for(config, context.device)
    state = resume_or_start(run_dir, model, optimizer, context, global_batch=int(config.global_batch_for(context.world_size)))
    saved_scale = state.pop("scaler", None)
    if scaler is not None and saved_scale is not None:
        scaler.load_state_dict(saved_scale)  # fp16: the loss scale goes on where it was, not from 2^16 again
    wrapped = DistributedDataParallel(model) if context.enabled else model
    videos = pretraining_videos(store, config.videos_root)
    provenance = run_provenance(context, store, targets_dir, fingerprint, videos)
    # Created only now, so a bad student name or unreadable targets leave no empty run folder behind.
    make_output_folder(run_dir)
    saver = CheckpointSaver(run_dir)
    if context.is_main:
        tidy_for_resume(run_dir, state["epoch"], state["step"])
        write_provenance(run_dir, config, **provenance)
    tensorboard = open_tensorboard_log(run_dir, state["step"], enabled=config.tensorboard and context.is_main)
    steps_per_epoch = train_loader.sampler.steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    base_lr = config.scaled_lr(context.world_size)
    if context.is_main:
        logger.info("global batch %s = %d per process x %d processes x %d accumulation steps; lr %g",
                    config.global_batch_for(context.world_size), config.batch_size, context.world_size, accum_steps,
                    base_lr)
    agreement = agreement_key(heads, store.teachers)
    history: list[dict[str, Any]] = []

    def snapshot(epoch_progress: dict[str, Any] | None = None) -> dict[str, Any]:
        # A collective (every rank's RNG states and running figures are gathered): every rank calls it, rank 0
        # saves it.
        gathered = all_gather_objects((rng_states(), epoch_progress), context)
        checkpoint = checkpoint_state(model, optimizer, state, config, provenance, [rng for rng, _ in gathered], videos,
                                      [progress for _, progress in gathered])
        if scaler is not None:
            checkpoint["scaler"] = scaler.state_dict()
        return checkpoint

    def save_last(epoch_progress: dict[str, Any] | None = None) -> None:
        checkpoint = snapshot(epoch_progress)
        if context.is_main:
            saver.save_last(checkpoint, periodic=state["step"] % config.save_every_steps == 0)
        barrier(context)

    def log_step(record: dict[str, Any]) -> None:
        if context.is_main:
            append_epoch_log(run_dir / "log.jsonl", record)
            tensorboard.write_step(record)

    # ---------------------------------------------------------------- the loop
    with tensorboard, tqdm(total=total_steps, initial=state["step"], unit="step", desc="distill",
                           disable=not (show_progress and context.is_main)) as progress:
        while state["epoch"] < config.epochs and not state["stopped"]:
            step_in_epoch = state["step"] - state["epoch"] * steps_per_epoch
            # The sampler hands the epoch to the (persistent) workers with each index.
            train_loader.sampler.set_epoch(state["epoch"], start_step=step_in_epoch)
            stats = train_one_epoch(wrapped, train_loader, loss_fn, optimizer, scaler, autocast, state, config, context,
                                    total_steps, progress, save_last, resumed_epoch_progress(state, step_in_epoch),
                                    accum_steps=accum_steps, base_lr=base_lr, preemption=preemption,
                                    on_log=log_step)
            if state["stopped"]:
                break
            state["epoch"] += 1
            validation = evaluate(wrapped, val_loader, loss_fn, autocast, context, agreement) if val_loader else {}
            record = epoch_record(state, stats, validation, optimizer.param_groups[0]["lr"])
            history.append(record)
            # Global figures, identical on every rank, so every rank takes this branch alike.
            val_loss = validation.get("val_loss", record.get("train_loss", math.inf))
            if context.is_main:
                waiting = data_wait_message(record["data_wait_fraction"], train_loader.num_workers)
                if waiting is not None:
                    logger.warning("epoch %d: %s", record["epoch"], waiting)
                append_epoch_log(run_dir / "log.jsonl", record)
                tensorboard.write_epoch(record)
                logger.info("epoch %s", json.dumps(record, sort_keys=True))
            if val_loss < state["best_val_loss"]:
                state["best_val_loss"] = val_loss
                checkpoint = snapshot()
                if context.is_main:
                    saver.save_best(checkpoint)
            save_last()
    if context.is_main and not state["stopped"]:
        record_stage_key(run_dir, config, targets_dir, context.world_size)
        replace_shared_text(Path(config.out) / "latest", run_dir.name + "\n")  # runs of other keys may finish now too
    requeued = None
    if state.get("preempted"):
        # Rank 0 asks for the requeue before any rank exits: a rank's non-zero exit makes srun (--kill-on-bad-exit)
        # end the step, which could kill rank 0 before it asked.
        requeued = requeue_job() if context.is_main else None
        barrier(context)
    shutdown(context)
    if state.get("preempted"):
        raise Preempted(preempted_message("distill", preemption.signal_name or "a signal on another rank",
                                          f"saved {run_dir / LAST} at step {state['step']}", requeued))
    return TrainingResult(run_dir, state["step"], state["epoch"], history, state["stopped"], context.is_main)
