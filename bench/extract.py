"""Stage one's speed on the demo pool; run by hand, not in CI (it takes minutes):

    .venv/bin/python bench/extract.py [--videos data/demo/pool] [--repeats 3] [--json bench/results/extract.json]

Teacher frames per second of
  runner        `run_extraction` into a temp folder (progress off), timed as the whole call and as the
                part after `prepare()` returns (teacher construction and video listing excluded); run
                with the configured decode workers and with 0 to show what the overlap buys;
  teacher only  the same teacher over frames decoded beforehand, in exactly the runner's batches
                (the video groups its `teach` calls received, recorded while it ran);
  naive         PyAV decodes every frame of each video, keeps the sampled indices, resizes to short
                side 256 with torch and runs the teacher one frame at a time (needs `pip install av`).
Goals (issue 3): runner / teacher-only >= 0.9, runner / naive >= 5. Also written: bytes per row per
teacher in the shards, where the runner's main process spends its time (the runner's functions are
wrapped here, not edited), and diagnostics for the gap. Variants run interleaved, round by round, so
a noisy machine slows each alike; best and median over the rounds are reported, with CPU seconds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

# The repository root goes first: the script folder (bench/) is on the path too, and this file would
# shadow the `extract` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# A spawned decode worker re-runs the main script as `__mp_main__` before it takes its first video.
# It needs nothing from this file, and importing torch there (~1-3 s here) would be charged to the
# runner's worker start-up, which under `distinit extract` only imports the light CLI module.
if __name__ != "__mp_main__":
    import h5py
    import numpy as np
    import torch

    import distinit.extract.run as run_module
    from distinit.extract.config import ExtractConfig
    from distinit.extract.decode_worker import DecodedVideo, decode_video
    from distinit.extract.sampling import sample_frames
    from distinit.extract.teachers.base import frames_to_tensor, normalise, resize_short_side_and_center_crop
    from distinit.extract.teaching import teach
    from distinit.pipeline.shards import ShardWriter, output_key, shard_name
    from distinit.pipeline.video import ffmpeg_binary, output_size, probe

    # The module, not the function `pipeline.video.probe` that its package exports under the same name.
    probe_module = sys.modules["distinit.pipeline.video.probe"]

# ------------------------------------------------------------------ timing helpers


def cpu_seconds() -> tuple[float, float]:
    """(this process, reaped children) user + system CPU seconds; ffmpeg and pool workers count as children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs that were busy over `seconds` (from /proc/stat); called while this process idles."""

    def sample() -> tuple[int, int]:
        ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    total_before, idle_before = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    return 1.0 - (idle_after - idle_before) / max(total_after - total_before, 1)


QUIET = {"max_busy": 1.0, "patience_seconds": 0.0}  # set from the command line


def wait_for_quiet() -> float:
    """On a shared machine, wait (up to the patience) until other processes leave the CPUs mostly idle."""
    deadline = time.monotonic() + QUIET["patience_seconds"]
    while True:
        busy = busy_fraction()
        if busy <= QUIET["max_busy"] or time.monotonic() > deadline:
            return busy


def measure(function: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    busy = wait_for_quiet()
    own_before, children_before = cpu_seconds()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    own_after, children_after = cpu_seconds()
    return result, {
        "seconds": seconds, "cpu_main": own_after - own_before, "cpu_children": children_after - children_before,
        "cpu_busy_before": busy,
    }


def summarise(runs: list[dict[str, float]], frames: int, key: str = "seconds") -> dict[str, Any]:
    seconds = [run[key] for run in runs]
    return {
        "runs": len(runs), "frames": frames, "seconds": [round(value, 3) for value in seconds],
        "best_frames_per_second": frames / min(seconds), "median_frames_per_second": frames / statistics.median(seconds),
        "median_cpu_seconds_per_frame": statistics.median(
            (run.get("cpu_main", 0.0) + run.get("cpu_children", 0.0)) / frames for run in runs
        ),
        "cpu_busy_before": [round(run["cpu_busy_before"], 2) for run in runs],
    }


class PhaseClock:
    """Seconds per named phase of the runner's main process, and the video groups each `teach` call got."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.groups: list[list[str]] = []
        self.prepared_at: float | None = None

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@contextlib.contextmanager
def instrumented_runner(clock: PhaseClock):
    """Wrap the names extract.run looks up at call time; nothing in the runner is changed."""
    original = {name: getattr(run_module, name) for name in ("prepare", "teach", "DecodePool", "ShardWriter", "finalize")}

    def timed_prepare(config):
        with clock.phase("prepare (listing, teacher construction)"):
            plan = original["prepare"](config)
        clock.prepared_at = time.perf_counter()
        return plan

    def timed_teach(teachers, videos):
        clock.groups.append([video.video_id for video in videos])
        with clock.phase("teach (teacher preprocessing + forward)"):
            return original["teach"](teachers, videos)

    def timed_finalize(config, targets_dir):
        with clock.phase("finalize (manifest, provenance)"):
            return original["finalize"](config, targets_dir)

    class TimedPool(original["DecodePool"]):
        def decode(self, videos):
            iterator = super().decode(videos)
            while True:
                # The pool's first result also waits for the workers to spawn and import.
                first = not getattr(self, "started", False)
                self.started = True
                with clock.phase("first decoded video (workers spawn)" if first else "waiting for decoded videos"):
                    video = next(iterator, None)
                if video is None:
                    return
                yield video

        def close(self) -> None:
            with clock.phase("pool shutdown"):
                super().close()

    class TimedWriter(original["ShardWriter"]):
        def __init__(self, *arguments, **options):
            with clock.phase("shard open"):
                super().__init__(*arguments, **options)

        def append(self, rows):
            with clock.phase("shard append (float16, finite check, gzip flushes)"):
                super().append(rows)

        def close(self):
            with clock.phase("shard close (last flush, fsync, rename)"):
                return super().close()

    replacements = {"prepare": timed_prepare, "teach": timed_teach, "DecodePool": TimedPool, "ShardWriter": TimedWriter,
                    "finalize": timed_finalize}
    for name, value in replacements.items():
        setattr(run_module, name, value)
    try:
        yield
    finally:
        for name, value in original.items():
            setattr(run_module, name, value)


# ------------------------------------------------------------------ 1 / 5: the real runner


def storage_per_row(targets_dir: Path) -> dict[str, Any]:
    """File bytes / rows, and each dataset's stored (compressed) bytes / rows beside its raw bytes / rows."""
    rows, file_bytes = 0, 0
    stored: collections.Counter = collections.Counter()
    raw: collections.Counter = collections.Counter()
    paths = sorted(targets_dir.glob("shard-*.h5"))
    shard_count = len(paths)
    for path in paths:
        file_bytes += path.stat().st_size
        with h5py.File(path, "r") as shard:
            rows += shard["video_id"].shape[0]

            def visit(name: str, item: Any) -> None:
                if isinstance(item, h5py.Dataset):
                    stored[name] += item.id.get_storage_size()
                    raw[name] += item.size * item.dtype.itemsize

            shard.visititems(visit)
    datasets = {
        name: {"stored_bytes_per_row": stored[name] / rows, "raw_bytes_per_row": raw[name] / rows,
               "compression_ratio": raw[name] / max(stored[name], 1)}
        for name in sorted(stored)
    }
    teachers: collections.defaultdict = collections.defaultdict(float)
    for name in stored:
        if "/" in name:
            teachers[name.split("/")[0]] += stored[name] / rows
    return {
        "rows": rows, "shards": shard_count, "file_bytes": file_bytes,
        "file_bytes_per_row": file_bytes / rows, "teacher_stored_bytes_per_row": dict(teachers), "datasets": datasets,
        "metadata_bytes_per_shard": (file_bytes - sum(stored.values())) / shard_count,
        "note": "metadata: attributes (1000 class names per output, teacher description), chunk index; fixed per shard",
    }


def run_runner(config: ExtractConfig) -> dict[str, Any]:
    """One timed run_extraction into a fresh temp folder; returns timings, phases, groups and storage."""
    clock = PhaseClock()
    probe_module._cache.clear()  # a warm probe cache would favour workers=0 (it decodes in this process)
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as out:
        with instrumented_runner(clock):
            report, timing = measure(lambda: run_module.run_extraction(dataclasses.replace(config, out=out), show_progress=False))
        finished = time.perf_counter()
        storage = storage_per_row(report.targets_dir)
    extraction_seconds = finished - clock.prepared_at  # from prepare()'s return to run_extraction's
    return {
        **timing, "extraction_seconds": extraction_seconds, "rows": report.rows, "videos": report.videos,
        "skipped": len(report.failures), "phases": dict(clock.seconds), "groups": clock.groups, "storage": storage,
    }


# ------------------------------------------------------------------ 2: the teacher alone, same batches


def decode_everything(plan: run_module.ExtractionPlan) -> tuple[dict[str, DecodedVideo], dict[str, float]]:
    """Every video's teacher frames, decoded in this process with the runner's own decode function."""
    probe_module._cache.clear()
    return measure(lambda: {
        video_id: decode_video(video_id, path, plan.sampling, plan.decode_short_side, plan.config.decode_timeout_seconds)
        for video_id, path in sorted(plan.video_paths.items())
    })


def run_teacher_only(teachers: list, decoded: dict[str, DecodedVideo], groups: list[list[str]]) -> tuple[list, dict]:
    """`teach` over the runner's recorded groups: the teacher calls and batch shapes are the runner's."""
    return measure(lambda: [teach(teachers, [decoded[video_id] for video_id in group]) for group in groups])


def teacher_calls(decoded: dict[str, DecodedVideo], groups: list[list[str]]) -> list[int]:
    """Frames per teacher call in the runner: `teach` splits each group by frame size."""
    sizes = []
    for group in groups:
        by_shape: collections.Counter = collections.Counter()
        for video_id in group:
            by_shape[decoded[video_id].frames.shape[1:]] += len(decoded[video_id].frames)
        sizes += list(by_shape.values())
    return sizes


# ------------------------------------------------------------------ 3: the naive loop


def sampled_indices(plan: run_module.ExtractionPlan) -> dict[str, list[int]]:
    """The runner's frame indices per video, computed outside the naive timing (which it would also need)."""
    indices = {}
    for video_id, path in sorted(plan.video_paths.items()):
        info = probe(path)
        frames = sample_frames(info.duration, info.fps, info.frame_count, plan.sampling)
        indices[video_id] = [frame.frame_index for frame in frames]
    return indices


def torch_resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> short side `short_side` (same size rule as the runner's ffmpeg scale), bilinear."""
    width, height = output_size(image.shape[1], image.shape[0], short_side)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    resized = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()


def naive_video(path: str, wanted: list[int], teacher: Any, short_side: int, clock: PhaseClock) -> dict[int, dict]:
    """Decode every frame with PyAV, convert each to RGB, and run the teacher on each sampled one alone."""
    import av

    wanted_set, outputs = set(wanted), {}
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            with clock.phase("decode, RGB conversion, resize"):
                image = frame.to_ndarray(format="rgb24")
                resized = torch_resize_short_side(image, short_side) if index in wanted_set else None
            if resized is not None:
                with clock.phase("teacher, one frame per call"):
                    outputs[index] = teacher(resized[None])
    return outputs


def run_naive(plan: run_module.ExtractionPlan, indices: dict[str, list[int]]) -> tuple[dict, dict[str, Any]]:
    teacher, clock = plan.teachers[0], PhaseClock()
    outputs, timing = measure(lambda: {
        video_id: naive_video(plan.video_paths[video_id], wanted, teacher, plan.decode_short_side, clock)
        for video_id, wanted in indices.items()
    })
    return outputs, {**timing, "phases": dict(clock.seconds)}


def top1_agreement(teacher: Any, naive: dict, teacher_rows: list[dict]) -> float:
    """Share of frames where the naive loop's top class equals the runner's (they resize differently)."""
    name = teacher.outputs[0].name
    reference = {}
    for rows in teacher_rows:
        values = rows[output_key(teacher.name, name)]
        for video_id, frame_index, row in zip(rows["video_id"], rows["frame_index"], values):
            reference[(video_id, int(frame_index))] = int(np.argmax(row))
    matches = [int(np.argmax(out[name][0])) == reference[(video_id, index)]
               for video_id, frames in naive.items() for index, out in frames.items()]
    return sum(matches) / len(matches)


# ------------------------------------------------------------------ diagnostics for the gap


def centre_square(frames: np.ndarray, side: int) -> np.ndarray:
    height, width = frames.shape[1:3]
    top, left = (height - side) // 2, (width - side) // 2
    return frames[:, top : top + side, left : left + side]


def run_uniform_batches(teacher: Any, decoded: dict[str, DecodedVideo], side: int) -> tuple[np.ndarray, dict]:
    """The teacher over every frame cut to the centre side x side square first, in full batches.

    For a centre-crop teacher whose resize size equals the decoded short side this gives the same
    crop as the full frame (centre 224 of centre 256 = centre 224), so only batching differs."""
    frames = np.concatenate([centre_square(decoded[video_id].frames, side) for video_id in sorted(decoded)])
    return measure(lambda: teacher(frames)[teacher.outputs[0].name])


def preprocessing_seconds(teacher: Any, decoded: dict[str, DecodedVideo], groups: list[list[str]]) -> float | None:
    """Time of the teacher's own input pipeline (uint8 -> float, resize, crop, normalise) over the runner's calls."""
    if not hasattr(teacher, "resize_size"):
        return None
    start = time.perf_counter()
    with torch.inference_mode():
        for group in groups:
            by_shape: dict[tuple, list[np.ndarray]] = {}
            for video_id in group:
                by_shape.setdefault(decoded[video_id].frames.shape[1:], []).append(decoded[video_id].frames)
            for parts in by_shape.values():
                images = frames_to_tensor(np.concatenate(parts), teacher.device)
                images = resize_short_side_and_center_crop(images, teacher.resize_size, teacher.input_size)
                normalise(images, teacher.mean, teacher.std)
    return time.perf_counter() - start


def teacher_rate_by_batch_size(teacher: Any, decoded: dict[str, DecodedVideo], side: int, frames: int = 64) -> dict[int, float]:
    """Frames/s of the teacher alone on `frames` centre squares, called with batches of 1 to 32."""
    squares = np.concatenate([centre_square(decoded[video_id].frames, side) for video_id in sorted(decoded)])[:frames]
    rates = {}
    for batch_size in (1, 2, 4, 8, 16, 32):
        start = time.perf_counter()
        for first in range(0, len(squares), batch_size):
            teacher(squares[first : first + batch_size])
        rates[batch_size] = len(squares) / (time.perf_counter() - start)
    return rates


def pickle_cost(decoded: dict[str, DecodedVideo]) -> dict[str, float]:
    """What handing frames back from a worker costs in serialisation alone (the pipe copy comes on top)."""
    start, total = time.perf_counter(), 0
    for video in decoded.values():
        payload = pickle.dumps(video, protocol=pickle.HIGHEST_PROTOCOL)
        total += len(payload)
        pickle.loads(payload)
    return {"seconds": time.perf_counter() - start, "megabytes": total / 1e6}


def writer_cost(plan: run_module.ExtractionPlan, teacher_rows: list[dict]) -> dict[str, float]:
    """Writing all rows into one shard on its own: float16 conversion, finite check, gzip + fletcher32, fsync."""
    attributes = {"dataset": "bench", "stage_key": "bench", "code_version": "bench", "sampling": dataclasses.asdict(plan.sampling)}
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as folder:
        start = time.perf_counter()
        with ShardWriter(Path(folder) / shard_name(0, 1), teachers=[teacher.describe() for teacher in plan.teachers],
                         shard_index=0, shard_count=1, attributes=attributes) as writer:
            for rows in teacher_rows:
                writer.append(rows)
        return {"seconds": time.perf_counter() - start, "rows": writer.rows_written}


# ------------------------------------------------------------------ report


def machine_info() -> dict[str, Any]:
    import av

    ffmpeg_line = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu_model,
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version, "ffmpeg": ffmpeg_line, "ffmpeg_binary": ffmpeg_binary(),
        "pyav": av.__version__, "pyav_ffmpeg_libraries": {name: ".".join(map(str, version)) for name, version in av.library_versions.items()},
    }


def median_phases(runs: list[dict]) -> dict[str, float]:
    names = sorted({name for run in runs for name in run["phases"]})
    phases = {name: statistics.median(run["phases"].get(name, 0.0) for run in runs) for name in names}
    phases["extraction part, total"] = statistics.median(run["extraction_seconds"] for run in runs)
    accounted = sum(value for name, value in phases.items() if not name.startswith(("prepare", "extraction")))
    phases["rest of the extraction part (loop bookkeeping, shard checks, failure check)"] = phases["extraction part, total"] - accounted
    return {name: round(value, 3) for name, value in phases.items()}


def runner_summary(runs: list[dict], frames: int) -> dict[str, Any]:
    extraction = [{**run, "seconds": run["extraction_seconds"]} for run in runs]
    return {
        "whole_call": summarise(runs, frames), "extraction_part": summarise(extraction, frames),
        "main_process_phases_median_seconds": median_phases(runs),
    }


def ratios(numerator: dict, denominator: dict) -> dict[str, float]:
    """Rate ratios: best over best, median over median, and the median of the ratios within each round
    (the variants of a round run back to back, so this one cancels slow drifts of the machine's load)."""
    paired = [denominator_seconds / numerator_seconds
              for numerator_seconds, denominator_seconds in zip(numerator["seconds"], denominator["seconds"])]
    return {
        "best": numerator["best_frames_per_second"] / denominator["best_frames_per_second"],
        "median": numerator["median_frames_per_second"] / denominator["median_frames_per_second"],
        "median_of_rounds": statistics.median(paired),
    }


def print_table(results: dict[str, dict], summary: dict[str, Any]) -> None:
    print(f"\n{'variant':58s} {'best f/s':>9s} {'median f/s':>11s} {'CPU s/frame':>12s}")
    for name, result in results.items():
        print(f"{name:58s} {result['best_frames_per_second']:9.2f} {result['median_frames_per_second']:11.2f} "
              f"{result['median_cpu_seconds_per_frame']:12.3f}")
    print()
    for name, value in summary.items():
        print(f"{name}: {json.dumps(value)}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default="data/demo/pool", help="folder of videos (read with the 'folder' adapter)")
    parser.add_argument("--teacher", default="imagenet-efficientnet-lite0")
    parser.add_argument("--frames-per-second", type=float, default=2.0)
    parser.add_argument("--max-frames-per-video", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the runner's (8 on CPU, 64 on CUDA)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-count", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of runner / teacher-only / workers-0 runs")
    parser.add_argument("--naive-repeats", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--max-busy", type=float, default=0.35,
                        help="before each timed variant, wait until at most this share of the CPUs is busy ...")
    parser.add_argument("--patience", type=float, default=90.0, help="... for at most this many seconds")
    parser.add_argument("--json", default="bench/results/extract.json")
    return parser.parse_args()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_rounds(arguments, config, plan, decoded, indices) -> tuple[dict[str, list], dict[str, Any]]:
    """Every variant once per round, in a fixed order, so machine load spreads over all of them."""
    runs: dict[str, list] = collections.defaultdict(list)
    kept: dict[str, Any] = {}
    square = plan.decode_short_side
    for round_index in range(arguments.repeats):
        log(f"round {round_index + 1}/{arguments.repeats}")
        runs["runner"].append(run_runner(config))
        kept.setdefault("groups", runs["runner"][0]["groups"])
        log(f"  runner workers={config.workers}: {runs['runner'][-1]['seconds']:.1f} s")
        teacher_rows, timing = run_teacher_only(plan.teachers, decoded, kept["groups"])
        runs["teacher_only"].append(timing)
        kept.setdefault("teacher_rows", teacher_rows)
        log(f"  teacher only: {timing['seconds']:.1f} s")
        runs["runner_workers_0"].append(run_runner(dataclasses.replace(config, workers=0)))
        log(f"  runner workers=0: {runs['runner_workers_0'][-1]['seconds']:.1f} s")
        uniform, timing = run_uniform_batches(plan.teachers[0], decoded, square)
        runs["uniform"].append(timing)
        kept.setdefault("uniform", uniform)
        log(f"  teacher on {square}x{square} crops in full batches: {timing['seconds']:.1f} s")
        if round_index < arguments.naive_repeats:
            naive, timing = run_naive(plan, indices)
            runs["naive"].append(timing)
            kept.setdefault("naive", naive)
            log(f"  naive PyAV loop: {timing['seconds']:.1f} s")
    for run in runs["runner"] + runs["runner_workers_0"]:
        if run["groups"] != kept["groups"]:
            raise RuntimeError("the runner's teacher batches differ between runs; the teacher-only comparison is void")
    return runs, kept


def diagnostics(plan, decoded, decode_timing, kept, frames, runs_naive: list[dict]) -> dict[str, Any]:
    teacher = plan.teachers[0]
    wait_for_quiet()
    calls = teacher_calls(decoded, kept["groups"])
    in_order = {video_id: index for index, video_id in enumerate(sorted(decoded))}
    reference = np.concatenate([rows[output_key(teacher.name, teacher.outputs[0].name)] for rows in kept["teacher_rows"]])
    order = np.argsort([in_order[video_id] for rows in kept["teacher_rows"] for video_id in rows["video_id"]], kind="stable")
    return {
        "decode_only_in_one_process": {
            "seconds": decode_timing["seconds"], "frames_per_second": frames / decode_timing["seconds"],
            "cpu_seconds_per_frame": (decode_timing["cpu_main"] + decode_timing["cpu_children"]) / frames,
            "frame_sizes": sorted({"x".join(map(str, video.frames.shape[1:3])) for video in decoded.values()}),
        },
        "runner_teacher_calls": {
            "calls": len(calls), "mean_frames_per_call": statistics.mean(calls), "sizes": dict(collections.Counter(calls)),
            "note": "teach() batches only frames of equal size; videos of different aspect ratios go in separate calls",
        },
        "teacher_preprocessing_seconds_over_runner_calls": preprocessing_seconds(teacher, decoded, kept["groups"]),
        "uniform_crop_max_abs_difference": float(np.abs(kept["uniform"] - reference[order]).max()),
        "teacher_frames_per_second_by_batch_size": teacher_rate_by_batch_size(teacher, decoded, plan.decode_short_side),
        "pickle_round_trip_of_decoded_videos": pickle_cost(decoded),
        "writer_alone_all_rows": writer_cost(plan, kept["teacher_rows"]),
        "naive_loop_phases_median_seconds": {
            name: statistics.median(run["phases"][name] for run in runs_naive) for name in runs_naive[0]["phases"]
        } if runs_naive else None,
        "naive_top1_agreement_with_runner": top1_agreement(teacher, kept["naive"], kept["teacher_rows"]) if "naive" in kept else None,
    }


def main() -> None:
    arguments = parse_arguments()
    QUIET.update(max_busy=arguments.max_busy, patience_seconds=arguments.patience)
    if arguments.torch_threads is not None:
        torch.set_num_threads(arguments.torch_threads)
    config = ExtractConfig(
        data="folder", root=arguments.videos, teachers=(arguments.teacher,), frames_per_second=arguments.frames_per_second,
        max_frames_per_video=arguments.max_frames_per_video, shard_count=arguments.shard_count,
        batch_size=arguments.batch_size, workers=arguments.workers, device=arguments.device, out="unused",
    )
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as out:
        plan = run_module.prepare(dataclasses.replace(config, out=out))
    decoded, decode_timing = decode_everything(plan)
    failed = [video.video_id for video in decoded.values() if video.error is not None]
    if failed:
        raise SystemExit(f"{arguments.videos}: {len(failed)} videos do not decode ({failed[:3]}); benchmark a clean folder")
    frames = sum(len(video.frames) for video in decoded.values())
    indices = sampled_indices(plan)
    # Warm-up: a process's first forward passes pay for allocator and kernel set-up, for every batch shape.
    teach(plan.teachers, list(decoded.values())[:4])
    run_uniform_batches(plan.teachers[0], dict(list(decoded.items())[: max(1, plan.batch_size // 8)]), plan.decode_short_side)
    runs, kept = run_rounds(arguments, config, plan, decoded, indices)
    for run in runs["runner"] + runs["runner_workers_0"]:
        if run["rows"] != frames:
            raise RuntimeError(f"the runner wrote {run['rows']} rows, the decoder gave {frames} frames")
    runner = runner_summary(runs["runner"], frames)
    runner_0 = runner_summary(runs["runner_workers_0"], frames)
    results = {
        f"runner workers={config.workers}, whole call": runner["whole_call"],
        f"runner workers={config.workers}, extraction part": runner["extraction_part"],
        "runner workers=0, whole call": runner_0["whole_call"],
        "runner workers=0, extraction part": runner_0["extraction_part"],
        "teacher only, pre-decoded, runner's batches": summarise(runs["teacher_only"], frames),
        f"teacher only, {plan.decode_short_side}px centre squares, full batches": summarise(runs["uniform"], frames),
    }
    if runs["naive"]:
        results["naive: PyAV every frame, teacher one frame at a time"] = summarise(runs["naive"], frames)
    teacher_only = results["teacher only, pre-decoded, runner's batches"]
    summary = {
        "runner_extraction_over_teacher_only": ratios(runner["extraction_part"], teacher_only),
        "runner_whole_call_over_teacher_only": ratios(runner["whole_call"], teacher_only),
        "runner_workers_2_over_workers_0_extraction": ratios(runner["extraction_part"], runner_0["extraction_part"]),
    }
    if runs["naive"]:
        naive = results["naive: PyAV every frame, teacher one frame at a time"]
        summary["runner_extraction_over_naive"] = ratios(runner["extraction_part"], naive)
        summary["runner_whole_call_over_naive"] = ratios(runner["whole_call"], naive)
    # Goals on best over best: on a shared machine a loaded round slows every variant by a different amount.
    summary["goal_overlap_ratio_at_least_0.9"] = summary["runner_extraction_over_teacher_only"]["best"] >= 0.9
    if runs["naive"]:
        summary["goal_speedup_over_naive_at_least_5"] = summary["runner_extraction_over_naive"]["best"] >= 5
    document = {
        "benchmark": "bench/extract.py", "date": datetime.date.today().isoformat(),
        "command": " ".join(["bench/extract.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "setup": {
            "videos": arguments.videos, "video_count": len(decoded), "frames": frames, "teacher": arguments.teacher,
            "teacher_backend": plan.teachers[0].backend, "weights_sha256": plan.teachers[0].weights_sha256,
            "frames_per_second": arguments.frames_per_second, "max_frames_per_video": arguments.max_frames_per_video,
            "batch_size": arguments.batch_size, "effective_batch_size": plan.batch_size, "workers": arguments.workers, "shard_count": arguments.shard_count,
            "device": arguments.device, "decode_short_side": plan.decode_short_side, "repeats": arguments.repeats,
            "naive_repeats": arguments.naive_repeats,
        },
        "results_frames_per_second": results,
        "summary": summary,
        "main_process_phases_median_seconds": {
            f"workers={config.workers}": runner["main_process_phases_median_seconds"],
            "workers=0": runner_0["main_process_phases_median_seconds"],
        },
        "storage": runs["runner"][0]["storage"],
        "diagnostics": diagnostics(plan, decoded, decode_timing, kept, frames, runs["naive"]),
    }
    print_table(results, summary)
    Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.json).write_text(json.dumps(document, indent=2) + "\n")
    print(f"written: {arguments.json}")


if __name__ == "__main__":
    main()
