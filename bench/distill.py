"""Stage-two benchmark: can the data loader feed the student? Loader clips/s alone against step clips/s alone.

    python bench/distill.py --out bench/results/distill.json            # everything, ~15 min on 2 cores
    python bench/distill.py --only profile --update                     # redo one part, keep the others
    python bench/distill.py --only step --device cuda --amp bf16 --frames 16 --widths full \
        --step-shapes 112:128 --step-threads 0 --full-steps 20 --full-warmup-steps 5 --out gpu.json

Parts (each measurement runs in a fresh child process, so its peak memory is its own):
  loader   iterate the training DataLoader exactly as distill.train.build_loaders builds it (same sampler,
           workers, seeding), no model: clips/s of epoch 1 and epoch 2, per clip shape (--loader-shapes);
           variants: decoding, --cache-clips (a fresh cache folder per run, so epoch 1 builds it and
           epoch 2 reads it), and decoding with every video probed once in the parent (a candidate fix);
  step     distill.train.train_one_epoch over one fixed, pre-loaded batch (forward + loss + backward +
           optimizer step: the trainer's own code), per width, clip shape and torch thread count;
  train    distill.train.train() end to end at tiny width; clips/s and data-wait fraction from log.jsonl;
           variants: decoding, --cache-clips, and one torch thread in the training process;
  profile  one process, no workers: where a sample's time goes (probe, shard rows, ffmpeg decode,
           normalisation, collation, cache build and read), what starting ffmpeg costs, and decoding a
           video's clips in one ffmpeg process instead of one process per clip (a candidate fix).
The goal from issue 4: loader clips/s >= 2 x step clips/s with 2 workers; "goal" in the JSON pairs every
step with every loader variant of the same clip shape. Loader and step runs are interleaved round by
round (--repeats rounds, after a warm-up) so both meet the same background load; the JSON keeps every
run plus best and median, and the load average before, after and per round.

Memory: ru_maxrss of the child (RUSAGE_SELF) and of its largest finished descendant (RUSAGE_CHILDREN),
in MiB. A forked process's ru_maxrss counts the pages it shares with its parent, so for DataLoader
workers the loader also samples /proc/PID/smaps_rollup: the workers' summed Pss and the largest
worker's private memory. torch.cuda.max_memory_allocated on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from distinit.pipeline.atomic import atomic_write_text  # noqa: E402
from distinit.pipeline.video import ffmpeg_binary  # noqa: E402

PARTS = ("loader", "step", "train", "profile")
GOAL_RATIO = 2.0


# ---------------------------------------------------------------------------------------------- helpers
def summary(values: list[float]) -> dict[str, Any]:
    return {"best": round(max(values), 3), "median": round(statistics.median(values), 3),
            "runs": [round(value, 3) for value in values]}


def peak_memory() -> dict[str, float]:
    """Peak resident memory so far, MiB (Linux reports ru_maxrss in KiB)."""
    memory = {
        "self_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return memory


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load_average()[0]:.2f}] {message}", file=sys.stderr, flush=True)


def base_config(arguments: argparse.Namespace, **overrides) -> dict[str, Any]:
    """DistillConfig keyword arguments for this benchmark's clip settings (children build the config)."""
    config = dict(
        targets=arguments.targets, videos_root=arguments.videos, student=arguments.student, frames=arguments.frames,
        stride=arguments.stride, short_side=arguments.short_side, crop=arguments.crop,
        clips_per_video=arguments.clips_per_video, batch_size=arguments.batch_size, workers=arguments.workers,
        device=arguments.device, amp=arguments.amp, seed=arguments.seed, save_every_steps=10**9,
    )
    config.update(overrides)
    return config


def run_child(part: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--spec", json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{part} child failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- children
def child_context(config):
    from distinit.pipeline.training.distributed import DistributedContext
    from distinit.pipeline.devices import resolve_device

    return DistributedContext(rank=0, world_size=1, local_rank=0, device=resolve_device(config.device))


def child_loader(spec: dict[str, Any]) -> dict[str, Any]:
    """Epochs of the trainer's training DataLoader, timed from creating the iterator (workers start) to
    its last batch; 'steady' leaves out the wait for the first batch."""
    from distinit.distill.config import DistillConfig
    from distinit.distill.targets_folder import resolve_targets_dir
    from distinit.distill.train import build_loaders

    config = DistillConfig(**spec["config"])
    store, loader, _ = build_loaders(config, resolve_targets_dir(config.targets), child_context(config))
    store.close()
    prefill_seconds = prefill_probes(loader.dataset) if spec.get("prefill_probe") else None
    epochs, worker_peaks = [], {"workers_pss_mib": 0.0, "worker_private_mib": 0.0}
    for epoch in range(spec["epochs"]):
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        clips, first_batch_clips, first_batch_seconds = 0, 0, None
        started = time.perf_counter()
        iterator = iter(loader)
        for batch in iterator:
            clips += len(batch["video"])
            sample_worker_memory(iterator, worker_peaks)
            if first_batch_seconds is None:
                first_batch_seconds, first_batch_clips = time.perf_counter() - started, clips
        seconds = time.perf_counter() - started
        steady = (clips - first_batch_clips) / max(seconds - first_batch_seconds, 1e-9)
        epochs.append({"clips": clips, "seconds": round(seconds, 4), "first_batch_seconds": round(first_batch_seconds, 4),
                       "clips_per_second": round(clips / seconds, 3), "steady_clips_per_second": round(steady, 3)})
    return {"epochs": epochs, "prefill_probe_seconds": prefill_seconds, "memory": {**peak_memory(), **worker_peaks}}


def smaps_mib(pid: int) -> dict[str, float]:
    """Pss and private (unshared) memory of a live process, MiB, from /proc/PID/smaps_rollup."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, amount = line.split(":", 1)
            values[name] = int(amount.split()[0]) / 1024
    return {"pss": values.get("Pss", 0.0), "private": values.get("Private_Clean", 0.0) + values.get("Private_Dirty", 0.0)}


def sample_worker_memory(iterator, peaks: dict[str, float]) -> None:
    """Forked workers share most pages with the parent, so their ru_maxrss overstates them: track the
    workers' summed Pss and the largest worker's private memory instead (DataLoader internals, bench only)."""
    workers = [smaps_mib(worker.pid) for worker in getattr(iterator, "_workers", [])]
    if workers:
        peaks["workers_pss_mib"] = round(max(peaks["workers_pss_mib"], sum(worker["pss"] for worker in workers)), 1)
        peaks["worker_private_mib"] = round(max(peaks["worker_private_mib"], max(worker["private"] for worker in workers)), 1)


def prefill_probes(dataset) -> float:
    """A candidate fix, measured: probe every video once in the parent, so forked workers inherit the
    results (the probe cache and the dataset's fps / frame count) instead of re-probing every epoch."""
    from distinit.pipeline.video.probe import probe_layout

    started = time.perf_counter()
    for position in dataset.positions:
        if not dataset.videos.layouts.has(position):
            dataset._probed[int(position)] = probe_layout(dataset.videos.paths[position])  # what the dataset keeps
    return round(time.perf_counter() - started, 4)


def child_step(spec: dict[str, Any]) -> dict[str, Any]:
    """train_one_epoch over a list holding one pre-loaded batch `steps` times: the trainer's step, no loading."""
    from tqdm import tqdm

    from distinit.distill.config import DistillConfig
    from distinit.distill.heads import head_specs_from_teachers
    from distinit.distill.losses import DistillationLoss
    from distinit.distill.students import create_student
    from distinit.distill.targets_folder import resolve_targets_dir
    from distinit.distill.train import autocast_for, build_loaders, build_optimizer, train_one_epoch

    config = DistillConfig(**spec["config"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    context = child_context(config)
    store, loader, _ = build_loaders(config, resolve_targets_dir(config.targets), context)
    batch = next(iter(loader))  # workers=0: decoded here, before any timing
    heads = head_specs_from_teachers(store.teachers)
    store.close()
    model = create_student(config.student, heads, width=config.width).to(context.device)
    if context.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
        batch["video"] = batch["video"].pin_memory()
    loss_fn = DistillationLoss(heads, temperature=config.temperature)
    optimizer = build_optimizer(model, config)
    autocast, scaler = autocast_for(config, context.device)
    state = {"step": 0, "epoch": 0, "stopped": False}
    total_steps = spec["warmup_steps"] + spec["repeats"] * spec["steps"]
    rates = []
    with tqdm(disable=True) as progress:
        for repeat in range(spec["repeats"] + 1):  # the first call warms up (allocator, kernels, autotuning)
            steps = spec["warmup_steps"] if repeat == 0 else spec["steps"]
            if context.device.type == "cuda":
                torch.cuda.synchronize()
            stats = train_one_epoch(model, [batch] * steps, loss_fn, optimizer, scaler, autocast, state, config,
                                    context, total_steps, progress, lambda: None)
            if context.device.type == "cuda":
                torch.cuda.synchronize()
            if repeat > 0:
                rates.append(stats["clips"] / stats["seconds"])
    return {"clips_per_second": summary(rates), "batch_shape": list(batch["video"].shape),
            "parameters": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads(),
            "device": str(context.device), "memory": peak_memory()}


def child_train(spec: dict[str, Any]) -> dict[str, Any]:
    """distill.train.train() into a scratch folder; its log.jsonl lines."""
    from distinit.distill.config import DistillConfig
    from distinit.distill.train import train

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = train(DistillConfig(**spec["config"]), show_progress=False)
    lines = (result.run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    keep = ("epoch", "clips_per_second", "data_wait_fraction", "seconds", "train_loss")
    records = [{key: record[key] for key in keep if key in record} for record in map(json.loads, lines)]
    return {"epochs": records, "torch_threads": torch.get_num_threads(), "memory": peak_memory()}


CHILDREN = {"loader": child_loader, "step": child_step, "train": child_train}


BUILD, LOOKUP, COLLATE = "build cache entry (decode whole video)", "cache lookup (stat, hash, info.json)", "collate batch"


class StageClock:
    """Wraps functions so that each call's wall time adds to a named total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, function):
        def timed(*arguments, **options):
            started = time.perf_counter()
            try:
                return function(*arguments, **options)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed


def ffmpeg_start_seconds(repeats: int = 10) -> float:
    """Median wall time of `ffmpeg -version`: starting the (static, large) binary, no decoding."""
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([ffmpeg_binary(), "-hide_banner", "-version"], capture_output=True, check=True)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def profiled_epoch(config, train_ids, order, cache_folder) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """One epoch of samples in the sampler's order, in this process, with the dataset's stages timed."""
    from torch.utils.data import default_collate

    import distinit.distill.data
    from distinit import distill
    from distinit.pipeline.clips import normalisation
    from distinit.distill.data import TargetClipDataset
    from distinit.pipeline.clips.spec import ClipSpec
    from distinit.distill.targets_folder import resolve_targets_dir

    clock = StageClock()
    patched = {(distill.data, "probe"): "probe (one ffmpeg run per video)", (distill.data, "read_clip"): "decode clip (ffmpeg)",
               (distill.data, "aggregate_targets"): "aggregate targets",
               (normalisation, "rgb_to_tensor"): "normalise to float tensor"}
    originals = {key: getattr(*key) for key in patched}
    clip = ClipSpec(frames=config.frames, stride=config.stride, short_side=config.short_side, crop=config.crop)
    dataset = TargetClipDataset(resolve_targets_dir(config.targets), train_ids, clip, train=True,
                                clips_per_video=config.clips_per_video, seed=config.seed, cache_clips=cache_folder,
                                videos_root=config.videos_root)
    dataset._rows = clock.wrap("read shard rows (h5py)", dataset._rows)
    if dataset.cache is not None:
        import distinit.distill.clip_cache  # noqa: F401  (distill.clip_cache below)

        dataset.cache._build = clock.wrap(BUILD, dataset.cache._build)
        dataset.cache.get = clock.wrap(LOOKUP, dataset.cache.get)
        originals[(distill.clip_cache.CachedVideo, "read_clip")] = distill.clip_cache.CachedVideo.read_clip
        patched[(distill.clip_cache.CachedVideo, "read_clip")] = "read cached clip (mmap)"
    try:
        for (owner, name), label in patched.items():
            setattr(owner, name, clock.wrap(label, originals[(owner, name)]))
        samples, started = [], time.perf_counter()
        for index in order:
            samples.append(dataset[index])
        sample_seconds = time.perf_counter() - started
    finally:
        for (owner, name), function in originals.items():
            setattr(owner, name, function)
    collate = clock.wrap(COLLATE, default_collate)
    for first in range(0, len(samples), config.batch_size):
        collate(samples[first : first + config.batch_size])
    clips = len(samples)
    if LOOKUP in clock.seconds:  # the lookup's time includes the builds it triggered
        clock.seconds[LOOKUP] -= clock.seconds.get(BUILD, 0.0)
    stages = {label: {"ms_per_clip": round(1e3 * seconds / clips, 3), "calls": clock.calls[label]}
              for label, seconds in clock.seconds.items()}
    inside_samples = sum(seconds for label, seconds in clock.seconds.items() if label != COLLATE)
    stages["other (windows, crop, flip, tensors)"] = {
        "ms_per_clip": round(1e3 * (sample_seconds - inside_samples) / clips, 3), "calls": clips}
    total = sample_seconds + clock.seconds[COLLATE]
    starts: dict[str, list[float]] = {}
    for sample in samples:
        starts.setdefault(sample["video_id"], []).append(sample["clip_start"])
    return {"clips": clips, "ms_per_clip_total": round(1e3 * total / clips, 3),
            "one_process_clips_per_second": round(clips / total, 3), "stages": stages}, starts


def grouped_decode(config, clip_starts: dict[str, list[float]]) -> dict[str, Any]:
    """A candidate fix, measured: one ffmpeg process per video for all of its clips of an epoch
    (read_frames over the union of their frames) against one process per clip (read_clip, as the
    dataset decodes); the probe is cached on both sides, and the frames must be identical."""
    import numpy as np

    from distinit.distill.data import open_targets, video_paths
    from distinit.pipeline.clips.spec import ClipSpec
    from distinit.distill.targets_folder import resolve_targets_dir
    from distinit.pipeline.video import probe, read_clip, read_frames

    clip = ClipSpec(frames=config.frames, stride=config.stride, short_side=config.short_side, crop=config.crop)
    store = open_targets(resolve_targets_dir(config.targets))
    paths = video_paths(store, config.videos_root)
    store.close()
    separate_seconds = grouped_seconds = 0.0
    identical = True
    for video_id, starts in clip_starts.items():
        info = probe(paths[video_id])
        path, fps = paths[video_id], info.fps
        first_frames = [round(start * fps) for start in starts]
        started = time.perf_counter()
        one_by_one = [read_clip(path, first / fps, clip.decoded_frames, stride=clip.stride, short_side=clip.short_side,
                                threads=1) for first in first_frames]
        separate_seconds += time.perf_counter() - started
        times = [(first + offset * clip.stride) / fps for first in first_frames for offset in range(clip.decoded_frames)]
        started = time.perf_counter()
        together = read_frames(path, times, short_side=clip.short_side, threads=1)
        grouped_seconds += time.perf_counter() - started
        # Past the last frame read_clip repeats its last decoded frame, read_frames the video's last frame: compare the rest.
        inside = [first + offset * clip.stride < info.frame_count for first in first_frames for offset in range(clip.decoded_frames)]
        identical = identical and np.array_equal(together[inside], np.concatenate(one_by_one)[inside])
    clips = sum(len(starts) for starts in clip_starts.values())
    return {"clips": clips, "videos": len(clip_starts), "process_per_clip_ms_per_clip": round(1e3 * separate_seconds / clips, 3),
            "process_per_video_ms_per_clip": round(1e3 * grouped_seconds / clips, 3),
            "frames_identical_before_the_end": identical}


def child_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Stage breakdown of one epoch (no cache), then of two epochs with a fresh cache (build, then read)."""
    from distinit.distill.config import DistillConfig
    from distinit.distill.data import open_targets, split_videos
    from distinit.pipeline.clips.sampler import ResumableSampler
    from distinit.distill.targets_folder import resolve_targets_dir

    torch.set_num_threads(1)  # as in a DataLoader worker
    config = DistillConfig(**spec["config"])
    store = open_targets(resolve_targets_dir(config.targets))
    train_ids, _ = split_videos(store.video_ids(), config.val_fraction, config.seed)
    store.close()
    sampler = ResumableSampler(len(train_ids) * config.clips_per_video, shuffle=True, seed=config.seed)
    result: dict[str, Any] = {"ffmpeg_version_run_ms": round(1e3 * ffmpeg_start_seconds(), 2)}
    sampler.set_epoch(0)
    result["decode"], clip_starts = profiled_epoch(config, train_ids, list(sampler), None)
    result["grouped_decode"] = grouped_decode(config, clip_starts)
    cache_folder = tempfile.mkdtemp(prefix="bench-distill-profile-cache-")
    try:
        result["cache_epoch_1"], _ = profiled_epoch(config, train_ids, list(sampler), cache_folder)
        sampler.set_epoch(1)
        result["cache_epoch_2"], _ = profiled_epoch(config, train_ids, list(sampler), cache_folder)
    finally:
        shutil.rmtree(cache_folder, ignore_errors=True)
    result["memory"] = peak_memory()
    return result


CHILDREN["profile"] = child_profile


# ---------------------------------------------------------------------------------------------- parent
@contextlib.contextmanager
def scratch_folder(prefix: str):
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


LOADER_VARIANTS = {  # name -> (cache clips, probe prefilled in the parent)
    "decode": (False, False),
    "cache": (True, False),
    "decode_probe_prefilled": (False, True),
}


def loader_run(arguments, crop: int, short_side: int, cache: bool, prefill: bool) -> dict[str, Any]:
    with scratch_folder("bench-distill-cache-") as cache_folder:
        config = base_config(arguments, crop=crop, short_side=short_side, cache_clips=cache_folder if cache else None)
        spec = {"config": config, "epochs": 2, "prefill_probe": prefill}
        return run_child("loader", spec, arguments.child_timeout)


def step_configs(arguments) -> dict[str, dict[str, Any]]:
    """name -> step child spec, per width x clip shape x torch thread count."""
    configs = {}
    for width in arguments.widths:
        for crop, short_side in parse_shapes(arguments.step_shapes):
            for threads in arguments.step_threads:
                name = f"{arguments.student}-{width}-{arguments.frames}x{crop}" + (f"-threads{threads}" if threads else "")
                configs[name] = {
                    "config": base_config(arguments, width=width, crop=crop, short_side=short_side, workers=0),
                    "steps": arguments.tiny_steps if width == "tiny" else arguments.full_steps,
                    "warmup_steps": arguments.tiny_warmup_steps if width == "tiny" else arguments.full_warmup_steps,
                    "repeats": 1, "threads": threads or None,
                }
    return configs


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """(crop, short side) pairs from '112:128,64:72'."""
    return [tuple(int(number) for number in pair.split(":")) for pair in text.split(",")]


def measure_rounds(arguments) -> tuple[dict[str, Any], dict[str, Any], list[list[float]]]:
    """Loader and step measurements interleaved, round after round, so that both meet the same
    background load (this machine is shared); each round runs every variant once."""
    loader_specs = {f"{name}-{arguments.frames}x{crop}": (crop, short_side, *LOADER_VARIANTS[name])
                    for crop, short_side in parse_shapes(arguments.loader_shapes) for name in arguments.loader_variants}
    loader_runs = {name: [] for name in loader_specs} if "loader" in arguments.only else {}
    steps = step_configs(arguments) if "step" in arguments.only else {}
    step_runs = {name: [] for name in steps}
    if loader_runs:
        loader_run(arguments, *next(iter(loader_specs.values())))  # warm-up: page cache, imports; not recorded
    loads = []
    for round_number in range(1, arguments.repeats + 1):
        loads.append(load_average())
        for name, runs in loader_runs.items():
            runs.append(loader_run(arguments, *loader_specs[name]))
            log(f"round {round_number} loader {name}: " + ", ".join(
                f"epoch {number} {epoch['clips_per_second']:.1f}" for number, epoch in enumerate(runs[-1]["epochs"], 1)))
        for name, spec in steps.items():
            step_runs[name].append(run_child("step", spec, arguments.child_timeout))
            log(f"round {round_number} step {name}: {step_runs[name][-1]['clips_per_second']['best']:.2f} clips/s")
    loader = {name: {"crop": loader_specs[name][0], "short_side": loader_specs[name][1], **summarise_loader(runs)}
              for name, runs in loader_runs.items()}
    step = {name: summarise_step(steps[name], runs) for name, runs in step_runs.items()}
    return loader, step, loads


def summarise_loader(runs: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number in (1, 2):
        epochs = [run["epochs"][number - 1] for run in runs]
        result[f"epoch_{number}"] = {
            "clips": epochs[0]["clips"],
            "clips_per_second": summary([epoch["clips_per_second"] for epoch in epochs]),
            "steady_clips_per_second": summary([epoch["steady_clips_per_second"] for epoch in epochs]),
            "first_batch_seconds_median": round(statistics.median(epoch["first_batch_seconds"] for epoch in epochs), 3),
        }
    result["memory"] = max_memory(runs)
    if runs[0]["prefill_probe_seconds"] is not None:
        result["prefill_probe_seconds_median"] = statistics.median(run["prefill_probe_seconds"] for run in runs)
    return result


def summarise_step(spec: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    config = spec["config"]
    return {"width": config["width"], "crop": config["crop"], "short_side": config["short_side"],
            "frames": config["frames"], "batch_size": config["batch_size"], "amp": config["amp"], "steps_per_repeat": spec["steps"],
            "warmup_steps": spec["warmup_steps"], "torch_threads": runs[0]["torch_threads"],
            "clips_per_second": summary([run["clips_per_second"]["best"] for run in runs]),
            "batch_shape": runs[0]["batch_shape"], "parameters": runs[0]["parameters"], "device": runs[0]["device"],
            "memory": max_memory(runs)}


def max_memory(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: max(run["memory"][key] for run in runs) for key in runs[0]["memory"]}


TRAIN_VARIANTS = {  # name -> (cache clips, torch threads of the training process; None: torch's default)
    "decode": (False, None),
    "cache": (True, None),
    "decode_main_threads_1": (False, 1),
}


def measure_train(arguments) -> dict[str, Any]:
    runs = {name: [] for name in arguments.train_variants}
    for repeat in range(arguments.train_repeats):  # interleaved, as the rounds above
        for name in arguments.train_variants:
            cache, threads = TRAIN_VARIANTS[name]
            with scratch_folder("bench-distill-run-") as out, scratch_folder("bench-distill-cache-") as cache_folder:
                config = base_config(arguments, width="tiny", epochs=arguments.train_epochs, out=out,
                                     cache_clips=cache_folder if cache else None)
                runs[name].append(run_child("train", {"config": config, "threads": threads}, arguments.child_timeout))
            log(f"train {name} run {repeat + 1}: " + ", ".join(
                f"epoch {record['epoch']} {record['clips_per_second']:.1f} clips/s wait {record['data_wait_fraction']:.2f}"
                for record in runs[name][-1]["epochs"]))
    results = {}
    for name, variant_runs in runs.items():
        results[name] = {"torch_threads": variant_runs[0]["torch_threads"], "memory": max_memory(variant_runs)}
        for number in range(1, arguments.train_epochs + 1):
            records = [run["epochs"][number - 1] for run in variant_runs]
            results[name][f"epoch_{number}"] = {
                "clips_per_second": summary([record["clips_per_second"] for record in records]),
                "data_wait_fraction": summary([record["data_wait_fraction"] for record in records]),
            }
    return results


def goal_ratios(loader: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """loader clips/s / step clips/s for every step and loader variant of the same clip shape; goal: >= 2."""
    ratios = {}
    for step_name, step_result in step.items():
        for loader_name, result in loader.items():
            if result["crop"] != step_result["crop"]:
                continue
            for epoch in ("epoch_1", "epoch_2"):
                loader_rate, step_rate = result[epoch]["clips_per_second"], step_result["clips_per_second"]
                ratio = loader_rate["median"] / step_rate["median"]
                ratios[f"{step_name} | loader {loader_name} {epoch}"] = {
                    "loader_clips_per_second_median": loader_rate["median"], "step_clips_per_second_median": step_rate["median"],
                    "ratio_of_medians": round(ratio, 3), "ratio_of_bests": round(loader_rate["best"] / step_rate["best"], 3),
                    "goal_met": ratio >= GOAL_RATIO,
                }
    return ratios


def machine_info() -> dict[str, Any]:
    version = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    memory_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")), 0)
    return {
        "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu": cpu_model,
        "memory_gib": round(memory_kib / 2**20, 1), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "platform": platform.platform(), "ffmpeg": version,
        "load_average_before": load_average(),
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"machine: {report['machine']['nproc']} cpus, torch {report['machine']['torch']}, load "
          f"{report['machine']['load_average_before']} -> {report['machine']['load_average_after']}")
    rows = []
    for variant, result in report.get("loader", {}).items():
        for epoch in ("epoch_1", "epoch_2"):
            rate = result[epoch]["clips_per_second"]
            memory = result["memory"]
            rows.append((f"loader {variant} {epoch}", rate, f"rss {memory['self_peak_rss_mib']} MiB, workers pss "
                                                              f"{memory['workers_pss_mib']} MiB"))
    for name, result in report.get("step", {}).items():
        memory = result["memory"]
        extra = f"rss {memory['self_peak_rss_mib']} MiB" + (f", cuda {memory['cuda_max_allocated_mib']} MiB"
                                                           if "cuda_max_allocated_mib" in memory else "")
        rows.append((f"step {name} ({result['device']})", result["clips_per_second"], extra))
    for variant, result in report.get("train", {}).items():
        for epoch, values in result.items():
            if epoch.startswith("epoch_"):
                rows.append((f"train() tiny {variant} {epoch}", values["clips_per_second"],
                             f"data wait {values['data_wait_fraction']['median']:.2f}"))
    print(f"{'measurement':52} {'best':>9} {'median':>9}  clips/s   notes")
    for name, rate, note in rows:
        print(f"{name:52} {rate['best']:9.2f} {rate['median']:9.2f}            {note}")
    if report.get("goal"):
        print(f"\nloader / step clips/s (ratio of medians; goal >= {GOAL_RATIO}, * = not met)")
    for name, ratio in report.get("goal", {}).items():
        print(f"  {name:78} {ratio['ratio_of_medians']:8.2f}{'' if ratio['goal_met'] else ' *'}")
    profile = report.get("profile")
    if profile:
        print(f"\nprofile, one process (ffmpeg -version: {profile['ffmpeg_version_run_ms']} ms):")
        for part in ("decode", "cache_epoch_1", "cache_epoch_2"):
            print(f"  {part}: {profile[part]['ms_per_clip_total']} ms/clip "
                  f"({profile[part]['one_process_clips_per_second']} clips/s)")
            for stage, values in profile[part]["stages"].items():
                print(f"    {stage:45} {values['ms_per_clip']:8.2f} ms/clip  ({values['calls']} calls)")
        grouped = profile.get("grouped_decode")
        if grouped:
            print(f"  decode a video's {grouped['clips'] // grouped['videos']} clips in one ffmpeg process: "
                  f"{grouped['process_per_video_ms_per_clip']} ms/clip against {grouped['process_per_clip_ms_per_clip']} "
                  f"one process per clip (frames identical: {grouped['frames_identical_before_the_end']})")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--targets", default="targets/demo", help="targets folder, or targets/<data> (its `latest`)")
    add("--videos", default=None, help="video root, if the videos moved since extraction")
    add("--out", type=Path, default=Path("bench/results/distill.json"))
    add("--only", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    add("--update", action="store_true", help="keep the other parts of an existing --out file (e.g. --only profile)")
    add("--student", default="r2plus1d_18")
    add("--widths", nargs="+", choices=("tiny", "full"), default=["tiny", "full"])
    add("--frames", type=int, default=8)
    add("--stride", type=int, default=2)
    add("--short-side", type=int, default=128, help="train() and the profile; the loader and step use the shapes below")
    add("--crop", type=int, default=112)
    add("--step-shapes", default="112:128,64:72", help="crop:short_side pairs for the step")
    add("--loader-shapes", default="112:128,64:72", help="crop:short_side pairs for the loader (64:72: configs/demo-distill.yaml)")
    add("--clips-per-video", type=int, default=4, help="4 as in configs/demo-distill.yaml: ~170 clips per epoch")
    add("--batch-size", type=int, default=8)
    add("--workers", type=int, default=2)
    add("--device", default="cpu", help="cpu | cuda | auto (the step and train(); the loader pins memory on cuda)")
    add("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    add("--step-threads", type=int, nargs="+", default=[0, 1],
        help="torch threads for the step, one measurement each (0: torch's default, one per core)")
    add("--seed", type=int, default=0)
    add("--repeats", type=int, default=3, help="rounds: timed repeats of every loader and step measurement (>= 2)")
    add("--tiny-warmup-steps", type=int, default=2, help="untimed steps before timing, tiny width")
    add("--full-warmup-steps", type=int, default=1, help="untimed steps before timing, full width")
    add("--tiny-steps", type=int, default=10, help="steps per timed repeat at tiny width")
    add("--full-steps", type=int, default=2, help="steps per timed repeat at full width")
    add("--loader-variants", nargs="+", choices=tuple(LOADER_VARIANTS), default=list(LOADER_VARIANTS))
    add("--train-variants", nargs="+", choices=tuple(TRAIN_VARIANTS), default=list(TRAIN_VARIANTS))
    add("--train-epochs", type=int, default=2)
    add("--train-repeats", type=int, default=2)
    add("--child-timeout", type=float, default=1800.0)
    add("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    add("--spec", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    if arguments.child:
        print(json.dumps(CHILDREN[arguments.child](json.loads(arguments.spec))))
        return
    machine = machine_info()
    log(f"machine {machine['nproc']} cpus, load {machine['load_average_before']}")
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(arguments).items()
                if key not in ("child", "spec")}
    report: dict[str, Any] = {"machine": machine, "settings": settings}
    if arguments.update and arguments.out.is_file():  # replace only the parts run now; note when and how
        report = json.loads(arguments.out.read_text(encoding="utf-8"))
        report.setdefault("updates", []).append({"parts": arguments.only, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "machine": machine, "settings": settings})
    if "loader" in arguments.only or "step" in arguments.only:
        loader, step, loads = measure_rounds(arguments)
        report.update({"loader": loader, "step": step, "load_average_per_round": loads})
    if "train" in arguments.only:
        report["train"] = measure_train(arguments)
    if "profile" in arguments.only:
        spec = {"config": base_config(arguments)}
        report["profile"] = run_child("profile", spec, arguments.child_timeout)
        log("profile done")
    if report.get("loader") and report.get("step"):
        report["goal"] = goal_ratios(report["loader"], report["step"])
    ran_on_gpu = any(result["device"].startswith("cuda") for result in report.get("step", {}).values())
    report["gpu_step"] = {"run": ran_on_gpu, "note": (
        "step results above ran on CUDA" if ran_on_gpu else
        f"not run: no CUDA device here ({machine['nproc']} CPUs). Run: python bench/distill.py --only step --device cuda "
        "--amp bf16 --frames 16 --widths full --step-shapes 112:128 --step-threads 0 --full-steps 20 --full-warmup-steps 5")}
    machine["load_average_after"] = load_average()  # `machine` is the update's entry when updating
    atomic_write_text(arguments.out, json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwrote {arguments.out}")


if __name__ == "__main__":
    main()
