"""GPU benchmark: teachers, students, the stage-two loader and a short real training, in about 9 minutes.

    python bench/gpu.py                                           # a GPU machine: writes bench/results/gpu.json
    python bench/gpu.py --quick --device cpu --amp off --out /tmp/gpu_cpu_check.json   # wiring check, not a figure
    python bench/gpu.py --quick --device cpu --amp off --only train --out /tmp/gpu_cpu_check.json   # one part

--amp off on the CPU: there bf16 autocast gave non-finite BatchNorm weight gradients in the full-width students
from the first step (torch 2.14.1, batch of 2 or 4), and the trainer stops at the first non-finite loss.

Setup (not timed): bench/kinetics_videos.py makes --videos Kinetics-like videos in --work, `distinit prepare`
re-encodes them (short side 128, short GOP) and stage one writes EfficientNet-Lite0 targets for them; all three
use every core and are reused by a later run with the same --work.
Parts, each but train measured for a fixed wall time (--teacher-seconds, --step-seconds, --loader-seconds)
after a warm-up:
  teachers  images/s of EfficientNet-Lite0 (its packaged weights), torchvision ResNet-50 and Keypoint R-CNN (random
            weights: speed does not depend on them, and nothing is downloaded), fed real frames decoded at each
            teacher's own short side, --teacher-batch frames per call as extraction calls them;
  students  training clips/s of R(2+1)D-18 and R3D-18 at full width, 8x112^2 and 16x112^2, --amp (bf16): the
            trainer's own step (distill.train.train_one_epoch) over one pre-loaded batch of --batch-size clips,
            copied to the device and normalised there every step as in training;
  loader    clips/s of the training DataLoader exactly as distill.train.build_loaders builds it, with one worker
            per available core (--workers), no clip cache, on the prepared videos, 8 and 16 frames (stride 2,
            crop 112); from its first batch on (the workers' start-up apart), over as many epochs as the time allows;
  train     distill.train.train() end to end, R(2+1)D-18 at full width, 8x112^2 and 16x112^2 (--train-frames), on the
            prepared videos, --batch-size, --amp, --workers (default the trainer's own: auto, the cores less one), no
            held-out set, in a fresh run folder under --work: 2 epochs (the first starts the workers and tunes cuDNN),
            each of --train-steps steps, or as many as --train-seconds (both epochs) holds at the slower of this run's
            student and loader clips/s (150 when neither was measured). From the run's log.jsonl, each epoch's clips/s
            and data-wait fraction, and whether the trainer's data-wait warning (> 20 %) fired.
Then loader/step for every student: the goal (issue 13) is loader clips/s >= student clips/s; and train_data_wait:
the goal (issue 21) is a data-wait fraction < 0.1 in the second (steady) epoch, so the loader keeps the GPU fed.
Every part runs in this process, one after another; a part that fails is recorded with its error and the rest run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# The repository first: bench/ holds extract.py and distill.py, which would hide the packages of those names.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distinit.pipeline.atomic import atomic_write_text  # noqa: E402
from distinit.pipeline.devices import available_cores, resolve_device  # noqa: E402

TEACHERS = {  # label -> (registered teacher, weights, options)
    "efficientnet_lite0": ("imagenet-efficientnet-lite0", None, {}),
    "resnet50": ("imagenet-torchvision", "random", {"model": "resnet50"}),
    "keypoint_rcnn": ("coco-keypoints", "random", {"backend": "torchvision"}),
}
STUDENTS = ("r2plus1d_18", "r3d_18")
PARTS = ("teachers", "students", "loader", "train")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def for_a_while(work: Callable[[], int], seconds: float, device: torch.device, warmup_calls: int = 1,
                min_calls: int = 2) -> dict[str, Any]:
    """Call `work` (returns items done) `warmup_calls` times untimed, then until `seconds` have passed (at least
    `min_calls` times); items per second over the timed calls."""
    for _ in range(warmup_calls):
        work()
    synchronize(device)
    items, calls, started = 0, 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        items += work()
        calls += 1
    synchronize(device)
    elapsed = time.perf_counter() - started
    return {"per_second": round(items / elapsed, 3), "items": items, "calls": calls, "seconds": round(elapsed, 3)}


# ------------------------------------------------------------------------------------------ teachers
def real_frames(videos: list[Path], short_side: int, count: int) -> np.ndarray:
    """`count` frames of the videos at `short_side`, one every half second, cycling through the videos."""
    from distinit.pipeline.video import read_frames

    per_video = -(-count // len(videos))
    frames = [read_frames(path, [0.5 * index for index in range(per_video)], short_side=short_side) for path in videos]
    return np.concatenate(frames)[:count]


def teacher_images_per_second(label: str, videos: list[Path], device: torch.device, batch: int, seconds: float,
                              quick: bool) -> dict[str, Any]:
    from distinit.extract.teachers import create_teacher

    name, weights, options = TEACHERS[label]
    if quick and name == "coco-keypoints":
        options = {**options, "min_size": 256, "max_size": 448}  # a wiring check, not a figure
    teacher = create_teacher(name, device=device, weights=weights, **options)
    frames = real_frames(videos, teacher.decode_short_side, batch)
    result = for_a_while(lambda: len(teacher(frames)[teacher.outputs[0].name]), seconds, device)
    teacher.close()
    return {"teacher": name, "weights": weights or "packaged", "options": options, "batch": len(frames),
            "frame_size": list(frames.shape[1:3]), "input_size": teacher.input_size,
            "images_per_second": result["per_second"], "timed": result}


# ------------------------------------------------------------------------------------------ students and loader
def context_for(device: torch.device):
    from distinit.pipeline.training.distributed import DistributedContext

    return DistributedContext(rank=0, world_size=1, local_rank=0, device=device)


def step_clips_per_second(config_options: dict[str, Any], seconds: float, warmup_steps: int = 3) -> dict[str, Any]:
    """The trainer's step (train_one_epoch) over one pre-loaded batch, repeated for `seconds` after a warm-up."""
    from tqdm import tqdm

    from distinit.distill.config import DistillConfig
    from distinit.pipeline.training.device_step import use_fast_kernels
    from distinit.distill.heads import head_specs_from_teachers
    from distinit.distill.losses import DistillationLoss
    from distinit.distill.students import create_student
    from distinit.distill.targets_folder import resolve_targets_dir
    from distinit.distill.train import autocast_for, build_loaders, build_optimizer, train_one_epoch

    config = DistillConfig(**{**config_options, "workers": 0})
    context = context_for(resolve_device(config.device))
    use_fast_kernels(context.device, config.deterministic)
    if context.device.type == "cuda":  # the previous student's memory is free once its call returned
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(context.device)
    store, loader, _ = build_loaders(config, resolve_targets_dir(config.targets), context)
    batch = next(iter(loader))  # decoded here, before any timing
    heads = head_specs_from_teachers(store.teachers)
    store.close()
    model = create_student(config.student, heads, width=config.width).to(context.device)
    if context.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    loss_fn = DistillationLoss(heads, temperature=config.temperature)
    optimizer = build_optimizer(model, config)
    autocast, scaler = autocast_for(config, context.device)
    state = {"step": 0, "epoch": 0, "stopped": False}
    chunk = 10 if context.device.type == "cuda" else 1  # steps per call: a call ends with a loss check (a sync)

    def steps() -> int:
        stats = train_one_epoch(model, [batch] * chunk, loss_fn, optimizer, scaler, autocast, state, config, context,
                                10**9, progress, lambda *_: None)
        return stats["clips"]

    with tqdm(disable=True) as progress:
        for _ in range(warmup_steps):
            train_one_epoch(model, [batch], loss_fn, optimizer, scaler, autocast, state, config, context, 10**9,
                            progress, lambda *_: None)
        result = for_a_while(steps, seconds, context.device, warmup_calls=0, min_calls=1)
    memory = round(torch.cuda.max_memory_allocated() / 2**20, 1) if context.device.type == "cuda" else None
    return {"student": config.student, "width": config.width, "batch_shape": list(batch["video"].shape),
            "video_dtype": str(batch["video"].dtype), "amp": config.amp, "clips_per_second": result["per_second"],
            "timed": result, "cuda_max_allocated_mib": memory, "torch_threads": torch.get_num_threads()}


def loader_clips_per_second(config_options: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The training DataLoader as the trainer builds it, epoch after epoch, until `seconds` have passed after its
    first batch; clips/s after the first batch (the wait for the workers to start is reported apart)."""
    from distinit.distill.config import DistillConfig
    from distinit.distill.targets_folder import resolve_targets_dir
    from distinit.distill.train import build_loaders

    config = DistillConfig(**config_options)
    store, loader, _ = build_loaders(config, resolve_targets_dir(config.targets), context_for(resolve_device(config.device)))
    store.close()
    started = time.perf_counter()
    first_batch_seconds, clips, epoch = None, 0, 0
    while first_batch_seconds is None or time.perf_counter() - started - first_batch_seconds < seconds:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if first_batch_seconds is None:
                first_batch_seconds = time.perf_counter() - started
            else:
                clips += len(batch["video"])
            if time.perf_counter() - started - first_batch_seconds >= seconds:
                break
        epoch += 1
    elapsed = time.perf_counter() - started - first_batch_seconds
    workers, clips_per_epoch = loader.num_workers, len(loader.sampler)
    del loader  # stops the persistent workers
    rate = clips / elapsed
    return {"workers": workers, "batch_size": config.batch_size, "frames": config.frames,
            "clips_per_epoch": clips_per_epoch, "clips_per_second": round(rate, 3),
            "clips_per_second_per_worker": round(rate / max(1, workers), 3), "clips": clips,
            "seconds": round(elapsed, 3), "epochs_started": epoch, "first_batch_seconds": round(first_batch_seconds, 3)}


# ------------------------------------------------------------------------------------------ training
TRAIN_EPOCHS = 2  # the first starts the loader workers and tunes cuDNN; the second is the steady state
DATA_WAIT_GOAL = 0.1  # issue 21: the loader keeps up when the steps wait for batches less than this of an epoch
UNMEASURED_STEPS = 150  # steps per epoch when this run measured neither the student's step nor the loader


def train_steps_per_epoch(arguments: argparse.Namespace, report: dict[str, Any], frames: int) -> tuple[int, str]:
    """(steps per epoch, where that number came from): --train-steps, else what --train-seconds holds over both
    epochs at the slower of this run's student step and loader for this clip length."""
    if arguments.train_steps:
        return arguments.train_steps, "--train-steps"
    measured = (report.get("students", {}).get(f"r2plus1d_18-full-{frames}x112", {}),
                report.get("loader", {}).get(f"prepared-{frames}frames", {}))
    rates = [result["clips_per_second"] for result in measured if "clips_per_second" in result]
    if not rates:
        return UNMEASURED_STEPS, "no student or loader clips/s measured in this run"
    steps = round(arguments.train_seconds / TRAIN_EPOCHS * min(rates) / arguments.batch_size)
    return max(2, steps), f"--train-seconds at {min(rates):.1f} clips/s (the slower of step and loader)"


def train_end_to_end(config_options: dict[str, Any], videos: int, steps: int) -> dict[str, Any]:
    """distill.train.train() for TRAIN_EPOCHS epochs of at least `steps` steps over `videos` videos (each giving
    as many clips an epoch as that takes), in a fresh run folder; each epoch's figures from the run's log.jsonl."""
    from distinit.distill.config import DistillConfig
    from distinit.distill.train import data_wait_message, train
    from distinit.pipeline.devices import capped_workers

    shutil.rmtree(config_options["out"], ignore_errors=True)  # a run of the same key would resume, finished
    clips_per_video = -(-steps * config_options["batch_size"] // videos)
    config = DistillConfig(**{**config_options, "clips_per_video": clips_per_video})
    workers = capped_workers(config.workers, "loader workers")  # what build_loaders gives the run
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.monotonic()
    result = train(config, show_progress=False)
    wall_seconds = time.monotonic() - started
    lines = (result.run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    epochs, previous_step = [], 0
    for record in (json.loads(line) for line in lines):
        if record.get("record") == "step":  # the running loss every log_every_steps
            continue
        warning = data_wait_message(record["data_wait_fraction"], workers)  # the trainer's own test and words
        epochs.append({"epoch": record["epoch"], "steps": record["step"] - previous_step,
                       "clips_per_second": round(record["clips_per_second"], 3),
                       "data_wait_fraction": round(record["data_wait_fraction"], 4),
                       "seconds": round(record["seconds"], 3), "train_loss": record.get("train_loss"),
                       "data_wait_warning": warning})
        previous_step = record["step"]
    steady = epochs[-1]
    memory = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    return {"student": config.student, "width": config.width, "frames": config.frames, "crop": config.crop,
            "batch_size": config.batch_size, "workers": workers, "amp": config.amp,
            "clips_per_video": clips_per_video, "videos": videos, "steps": result.step,
            "clips_per_second": steady["clips_per_second"], "data_wait_fraction": steady["data_wait_fraction"],
            "data_wait_warning_fired": any(epoch["data_wait_warning"] for epoch in epochs), "epochs": epochs,
            "wall_seconds": round(wall_seconds, 1), "run_dir": str(result.run_dir), "cuda_max_allocated_mib": memory}


def train_data_wait(report: dict[str, Any]) -> dict[str, Any]:
    """The steady (last) epoch's data-wait fraction of every training run; the goal is < DATA_WAIT_GOAL."""
    return {name: {"data_wait_fraction": result["data_wait_fraction"], "clips_per_second": result["clips_per_second"],
                   "workers": result["workers"], "goal": f"data_wait_fraction < {DATA_WAIT_GOAL}",
                   "goal_met": result["data_wait_fraction"] < DATA_WAIT_GOAL}
            for name, result in report.get("train", {}).items() if "data_wait_fraction" in result}


# ------------------------------------------------------------------------------------------ main
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpus": available_cores(), "cpu": cpu, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_before": [round(value, 2) for value in os.getloadavg()]}


def run_part(report: dict[str, Any], section: str, name: str, measure: Callable[[], dict[str, Any]]) -> None:
    """report[section][name] = measure(), or its error: one failing part does not lose the others."""
    started = time.monotonic()
    try:
        report.setdefault(section, {})[name] = measure()
    except Exception as error:  # recorded in the JSON; the benchmark goes on
        report.setdefault(section, {})[name] = {"error": f"{type(error).__name__}: {error}",
                                                "traceback": traceback.format_exc()[-2000:]}
    log(f"{section} {name}: {time.monotonic() - started:.0f} s")


def student_options(arguments: argparse.Namespace, targets: Path, **overrides) -> dict[str, Any]:
    options = dict(targets=str(targets), student="r2plus1d_18", width="full", frames=8, stride=2, short_side=128,
                   crop=112, batch_size=arguments.batch_size, device=arguments.device, amp=arguments.amp,
                   clips_per_video=arguments.loader_clips_per_video, workers=arguments.workers or available_cores(),
                   seed=0, save_every_steps=10**9, cache_clips=None, tensorboard=False)
    options.update(overrides)
    return options


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """loader clips/s over student clips/s, for the loader of the same clip length; the goal is >= 1."""
    results = {}
    for student_name, student in report.get("students", {}).items():
        loader = report.get("loader", {}).get(f"prepared-{student.get('batch_shape', [0, 0, 0])[2]}frames")
        if "clips_per_second" not in student or not loader or "clips_per_second" not in loader:
            continue
        ratio = loader["clips_per_second"] / student["clips_per_second"]
        results[student_name] = {"loader_clips_per_second": loader["clips_per_second"],
                                 "student_clips_per_second": student["clips_per_second"],
                                 "ratio": round(ratio, 3), "goal_met": ratio >= 1.0}
    return results


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['machine']['device']} ({report['machine']['gpu']}), {report['machine']['cpus']} cores")
    for section, unit in (("teachers", "images_per_second"), ("students", "clips_per_second"),
                          ("loader", "clips_per_second"), ("train", "clips_per_second")):
        for name, result in report.get(section, {}).items():
            value = f"{result[unit]:10.1f} {unit.replace('_per_second', '/s')}" if unit in result else result["error"]
            print(f"  {section:9} {name:32} {value}")
    for name, ratio in report.get("loader_over_step", {}).items():
        print(f"  loader/step {name:28} {ratio['ratio']:10.2f}  {'goal met' if ratio['goal_met'] else 'goal NOT met'}")
    for name, wait in report.get("train_data_wait", {}).items():
        print(f"  data wait {name:30} {wait['data_wait_fraction']:10.1%}  {wait['workers']} workers, "
              f"{'goal met' if wait['goal_met'] else 'goal NOT met'} (< {DATA_WAIT_GOAL:.0%})")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="cuda", help="cuda | cpu | cuda:N")
    add("--quick", action="store_true", help="tiny counts and times: checks the script end to end, no figures")
    add("--out", type=Path, default=Path("bench/results/gpu.json"))
    add("--work", type=Path, default=Path("/tmp/distinit-gpu-bench"), help="scratch folder (videos, targets)")
    add("--videos", type=int, default=48, help="Kinetics-like videos to make (--quick: 3)")
    add("--amp", default="bf16", choices=("bf16", "fp16", "off"))
    add("--batch-size", type=int, default=32, help="clips per training step and loader batch (--quick: 2)")
    add("--teacher-batch", type=int, default=64, help="frames per teacher call (extraction's CUDA default; --quick: 2)")
    add("--workers", type=int, default=None, help="loader workers (default: every available core; train: the "
        "trainer's auto, its cores less one)")
    add("--loader-clips-per-video", type=int, default=64, help="clips per video and epoch in the loader")
    add("--teacher-seconds", type=float, default=25.0)
    add("--step-seconds", type=float, default=20.0)
    add("--loader-seconds", type=float, default=40.0)
    add("--train-seconds", type=float, default=30.0, help="train: both epochs of one clip length, as the measured "
        "rates predict (the start-up comes on top)")
    add("--train-steps", type=int, default=None, help="train: steps per epoch instead of --train-seconds (--quick: 2)")
    add("--train-frames", type=int, nargs="+", choices=(8, 16), default=[8, 16])
    add("--only", nargs="+", choices=PARTS, default=list(PARTS))
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.videos, arguments.batch_size, arguments.teacher_batch = 3, 2, 2
        arguments.teacher_seconds = arguments.step_seconds = arguments.loader_seconds = 1.0
        arguments.loader_clips_per_video, arguments.train_steps = 4, 2
    return arguments


def main() -> None:
    from kinetics_videos import extract_targets, make_videos, prepare_videos, prepared_option

    arguments = parse_arguments()
    device = resolve_device(arguments.device)
    cores = available_cores()
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine_info(device), "quick": arguments.quick,
                              "settings": {key: str(value) if isinstance(value, Path) else value
                                           for key, value in vars(arguments).items()}}
    videos_folder = arguments.work / "videos-seed0"
    videos = make_videos(videos_folder, arguments.videos, workers=cores)
    prepared_folder, _ = prepare_videos(videos_folder, arguments.work / "prepared", workers=cores)
    targets = extract_targets(videos_folder, arguments.work / "targets", device=str(device), workers=cores)
    report["setup_seconds"] = round(time.monotonic() - started, 1)
    log(f"setup: {len(videos)} videos, prepared and extracted in {report['setup_seconds']} s")
    if "teachers" in arguments.only:
        for label in TEACHERS:
            run_part(report, "teachers", label, lambda label=label: teacher_images_per_second(
                label, videos, device, arguments.teacher_batch, arguments.teacher_seconds, arguments.quick))
    if "students" in arguments.only:
        for student in STUDENTS:
            for frames in (8, 16):
                options = student_options(arguments, targets, student=student, frames=frames)
                run_part(report, "students", f"{student}-full-{frames}x112",
                         lambda options=options: step_clips_per_second(options, arguments.step_seconds))
    if "loader" in arguments.only:
        for frames in (8, 16):
            options = student_options(arguments, targets, frames=frames, **prepared_option(prepared_folder))
            run_part(report, "loader", f"prepared-{frames}frames",
                     lambda options=options: loader_clips_per_second(options, arguments.loader_seconds))
    if "train" in arguments.only:
        for frames in arguments.train_frames:
            steps, steps_from = train_steps_per_epoch(arguments, report, frames)
            name = f"r2plus1d_18-full-{frames}x112"
            options = student_options(arguments, targets, frames=frames, workers=arguments.workers or "auto",
                                      epochs=TRAIN_EPOCHS, val_fraction=0.0, out=str(arguments.work / "train" / name),
                                      **prepared_option(prepared_folder))
            run_part(report, "train", name, lambda options=options, steps=steps: {
                **train_end_to_end(options, len(videos), steps), "steps_per_epoch_from": steps_from})
    report["loader_over_step"] = ratios(report)
    report["train_data_wait"] = train_data_wait(report)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    atomic_write_text(arguments.out, json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {arguments.out} ({report['total_seconds']} s)")


if __name__ == "__main__":
    main()
