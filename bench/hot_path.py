"""The clip hot path on the host, from read_clip to a collated batch: this code against a checkout from before a change.

    git archive HEAD | tar -x -C /tmp/hot_path_before      # before changing anything (or git worktree add ...)
    python bench/hot_path.py --before /tmp/hot_path_before --out bench/results/hot_path.json

One prepared-like video is made in --work (10 s of testsrc2 at 340x256, 30 fps, shrunk to 170x128 and encoded as
`distinit prepare` encodes: H.264, CRF 20, a keyframe every 16 frames, MP4). For each clip shape (--clips: frames x
stride; 8x2 is configs/distill.yaml's clip, 16x2 a longer one), short side 128, crop 112, child processes import
either this repository or --before and time, per clip, with torch on one thread and the process pinned to one core
(as one loader worker):
  sample_and_collate  evaluate.clips.TrainingClips(normalisation=None), the finetuning loader's dataset, with the
                      video's stored layout (no probe): read_clip, crop, flip, the clip tensor; then the DataLoader's
                      default_collate of --batch samples. distill.data.TargetClipDataset runs the same steps around
                      its target reads;
  read_clip           the decode alone, same clip starts (what changes in it: the copy out of the filter graph, and
                      the graph kept across clips);
  after_decode_to_batch  the same samples and collate again, read_clip replaced by a lookup of the frames it gave:
                      crop, flip, the clip tensor, collate, and the dataset's own bookkeeping (layout lookup, rng);
  to_device_cpu       pipeline.clips.views.video_to_device of that batch on the CPU (a CPU run's mirror + normalisation).
Rounds alternate between the two code trees, so both meet the same load; reported are medians over rounds of each
round's mean, per clip: wall milliseconds and process CPU milliseconds (time.process_time: this process's user +
system time, which other work on the machine does not inflate as it does wall time). "compared" pairs the medians
(before, after); on a GPU run to_device_cpu is device work, on a CPU run it is the host's too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
SOURCE_SIZE, PREPARED_SIZE, FPS, SECONDS, GOP, CRF = (340, 256), (170, 128), 30, 10, 16, 20
SHORT_SIDE, CROP = 128, 112
COPIES_PER_CLIP = {
    "before": ["PyAV: np.stack of the converted frames (to_ndarray of rgb24 is a view, no copy); ffmpeg: the pipe "
               "read into one buffer", "the crop (flipped or not) transposed to a contiguous (3, T, H, W)",
               "collate into the (B, 3, T, H, W) batch"],
    "after": ["each converted frame copied into its row of one (N, H, W, 3) array (ffmpeg: the pipe read into one "
              "buffer, as before)", "collate of the crop view into the (B, T, H, W, 3) batch"],
    "device": "before: the float32 conversion of (B, 3, T, H, W) (to channels_last_3d on CUDA: a permuting pass); "
              "after: a view as (B, 3, T, H, W), the flagged clips mirrored in uint8 (one flip + one select pass, "
              "only when a clip of the batch is flipped), the float32 conversion, channels_last_3d already",
}


def make_video(work: Path) -> Path:
    """The prepared-like copy (made once in --work)."""
    from distinit.pipeline.video import ffmpeg_binary

    path = work / "prepared_like_128p_gop16.mp4"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        gop = str(GOP)
        command = [
            ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi",
            "-i", f"testsrc2=size={SOURCE_SIZE[0]}x{SOURCE_SIZE[1]}:rate={FPS}", "-t", str(SECONDS),
            "-vf", f"scale={PREPARED_SIZE[0]}:{PREPARED_SIZE[1]}:flags=area+accurate_rnd+bitexact,format=yuv420p",
            "-c:v", "libx264", "-preset", "medium", "-crf", str(CRF), "-g", gop, "-keyint_min", gop,
            "-sc_threshold", "0", "-threads", "1", "-movflags", "+faststart", "-f", "mp4", str(path) + ".part",
        ]  # fmt: skip
        subprocess.run(command, check=True, timeout=300)
        os.replace(str(path) + ".part", path)
    return path


# ------------------------------------------------------------------------------------------ child
def child(options: dict[str, Any]) -> dict[str, Any]:
    """One round in one code tree: per-clip wall and CPU milliseconds of each part."""
    sys.path[:0] = [options["shim"], options["code"]]  # the tree's own stage folders as distinit.*
    import numpy as np
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    os.sched_setaffinity(0, {options["core"]})
    from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION
    from distinit.pipeline.clips.spec import ClipSpec
    from distinit.pipeline.clips.views import video_to_device
    from distinit.evaluate import clips as clips_module
    from distinit.evaluate.clips import TrainingClips
    from distinit.pipeline.datasets import VideoRecord
    from distinit.pipeline.video import read_clip
    from distinit.pipeline.video.layout_record import layout_record
    from distinit.pipeline.video.probe import probe_layout

    video = Path(options["video"])
    layout = probe_layout(video)
    record = layout_record(layout)
    frames, stride, batch_size = options["frames"], options["stride"], options["batch"]
    count = options["batches"] * batch_size
    records = [VideoRecord(f"clip{index}", video, label=0) for index in range(count)]
    clip = ClipSpec(frames=frames, stride=stride, short_side=SHORT_SIDE, crop=CROP)
    dataset = TrainingClips(records, clip, seed=options["round"], normalisation=None,
                            prepared={item.id: (video, record) for item in records})
    collate = torch.utils.data.default_collate

    def timed(work) -> tuple[Any, float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        return result, time.perf_counter() - wall, time.process_time() - cpu

    def sample_batch(first: int):
        return collate([dataset[(index, 0)] for index in range(first, first + batch_size)])

    sample_batch(0)  # warm-up: imports, the first filter graph, page cache
    batches, sample_wall, sample_cpu = [], 0.0, 0.0
    for first in range(0, count, batch_size):
        batch, wall, cpu = timed(lambda: sample_batch(first))
        batches.append(batch)
        sample_wall, sample_cpu = sample_wall + wall, sample_cpu + cpu
    starts = [float(start) for batch in batches for start in batch["clip_start"]]
    decoded, decode_wall, decode_cpu = timed(lambda: {start: read_clip(
        video, start, frames, stride=stride, short_side=SHORT_SIDE, threads=1, layout=layout) for start in starts})
    # The same samples again with the decode replaced by a lookup of its frames: the rest of the host path alone.
    clips_module.read_clip = lambda path, start, *args, **kwargs: decoded[start]
    _, rest_wall, rest_cpu = timed(lambda: [sample_batch(first) for first in range(0, count, batch_size)])
    device = torch.device("cpu")

    def to_device():
        for batch in batches:
            flipped = {"flipped": batch["flipped"]} if "flipped" in batch else {}
            video_to_device(batch["video"], device, VIDEO_NORMALISATION, **flipped)

    to_device()  # warm-up
    _, device_wall, device_cpu = timed(to_device)
    milliseconds = lambda seconds: round(1000 * seconds / count, 4)  # noqa: E731
    first_batch = batches[0]["video"]
    return {
        "sample_and_collate": {"wall_ms": milliseconds(sample_wall), "cpu_ms": milliseconds(sample_cpu)},
        "read_clip": {"wall_ms": milliseconds(decode_wall), "cpu_ms": milliseconds(decode_cpu)},
        "after_decode_to_batch": {"wall_ms": milliseconds(rest_wall), "cpu_ms": milliseconds(rest_cpu)},
        "to_device_cpu": {"wall_ms": milliseconds(device_wall), "cpu_ms": milliseconds(device_cpu)},
        "batch_shape": list(first_batch.shape), "batch_strides": list(first_batch.stride()),
        "flipped_clips": int(sum(int(batch.get("flipped", torch.zeros(1)).sum()) for batch in batches)),
        "checksum": int(sum(int(batch["video"].sum()) for batch in batches)),
        "clips": count, "decoder": "auto (pyav)" if _has_pyav() else "auto", "numpy": np.__version__,
    }


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ parent
def stage_shim(code: Path, work: Path) -> Path:
    """A folder whose distinit/ links to the tree's stage folders: first on sys.path, `distinit.*` imports that
    tree's code, not the checkout the venv's editable install maps (which a plain PYTHONPATH would not override)."""
    if not (code / "pipeline" / "clips" / "views.py").exists():
        raise SystemExit(f"{code}: a tree from before issue 22 (no pipeline/clips/); this benchmark imports its "
                         "modules by their later paths, so compare trees from then on")
    shim = work / "shims" / hashlib.sha256(str(code).encode()).hexdigest()[:12]
    (shim / "distinit").mkdir(parents=True, exist_ok=True)
    for stage in ("pipeline", "extract", "distill", "evaluate"):
        link = shim / "distinit" / stage
        if not link.is_symlink():
            link.symlink_to(code / stage)
    return shim


def run_child(code: Path, options: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps({**options, "code": str(code), "shim": str(stage_shim(code, Path(options["work"])))})
    environment = {**os.environ, "PYTHONPATH": str(code)}
    output = subprocess.run([sys.executable, __file__, "--child", payload], check=True, capture_output=True,
                            text=True, env=environment, cwd=code, timeout=1200)
    return json.loads(output.stdout.strip().splitlines()[-1])


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    parts = ("sample_and_collate", "read_clip", "after_decode_to_batch", "to_device_cpu")
    summary: dict[str, Any] = {}
    for part in parts:
        for measure in ("wall_ms", "cpu_ms"):
            values = [result[part][measure] for result in rounds]
            summary.setdefault(part, {})[measure] = {"median": round(statistics.median(values), 4),
                                                      "min": min(values), "max": max(values)}
    summary["batch_shape"], summary["batch_strides"] = rounds[0]["batch_shape"], rounds[0]["batch_strides"]
    summary["checksums"] = sorted({result["checksum"] for result in rounds})
    return summary


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Median CPU ms per clip before -> after, for the host's share (decode to batch) and a CPU run's whole share."""
    def cpu(summary, part):
        return summary[part]["cpu_ms"]["median"]

    return {
        "same_bytes_before_and_after": before["checksums"] == after["checksums"],
        "cpu_ms_after_decode_to_batch": [cpu(before, "after_decode_to_batch"), cpu(after, "after_decode_to_batch")],
        "cpu_ms_read_clip": [cpu(before, "read_clip"), cpu(after, "read_clip")],
        "cpu_ms_sample_and_collate": [cpu(before, "sample_and_collate"), cpu(after, "sample_and_collate")],
        "cpu_ms_cpu_run_total": [round(cpu(before, "sample_and_collate") + cpu(before, "to_device_cpu"), 4),
                                 round(cpu(after, "sample_and_collate") + cpu(after, "to_device_cpu"), 4)],
    }


def machine_info() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import av
    import torch

    return {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu": cpu,
            "torch": torch.__version__, "pyav": av.__version__, "pyav_ffmpeg": av.ffmpeg_version_info,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_before": [round(value, 2) for value in os.getloadavg()],
            "note": "2 cores shared with other engineers' work (tests, benchmarks) during the run: wall times carry "
                    "their load; process CPU time per clip is the steadier comparison"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=False, help="a checkout of the code before the change")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "bench" / "results" / "hot_path.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/distinit_hot_path"))
    parser.add_argument("--clips", nargs="+", default=["8x2", "16x2"], help="FRAMESxSTRIDE clip shapes")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--core", type=int, default=0, help="the core each child is pinned to")
    parser.add_argument("--trees-note", default="", help="what --before and this tree are, for the JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(json.loads(arguments.child))))
        return
    sys.path.insert(0, str(REPOSITORY))
    from distinit.pipeline.atomic import atomic_write_text

    trees = {"after": REPOSITORY, **({"before": arguments.before.resolve()} if arguments.before else {})}
    video = make_video(arguments.work)
    machine = machine_info()
    results: dict[str, Any] = {}
    started = time.time()
    for shape in arguments.clips:
        frames, stride = (int(value) for value in shape.split("x"))
        rounds: dict[str, list] = {name: [] for name in trees}
        for round_number in range(arguments.rounds):
            for name, code in trees.items():  # alternating: both trees meet the same load
                options = {"video": str(video), "frames": frames, "stride": stride, "batch": arguments.batch,
                           "batches": arguments.batches, "round": round_number, "core": arguments.core,
                           "work": str(arguments.work)}
                rounds[name].append(run_child(code, options))
        results[shape] = {name: summarise(values) for name, values in rounds.items()}
        if "before" in trees:
            results[shape]["compared"] = compare(results[shape]["before"], results[shape]["after"])
    machine["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    command = shlex.join(["python", "bench/hot_path.py", *sys.argv[1:]])
    report = {
        "command": command, "machine": machine,
        "settings": {"video": f"{PREPARED_SIZE[0]}x{PREPARED_SIZE[1]} H.264 CRF {CRF}, GOP {GOP}, {FPS} fps, "
                              f"{SECONDS} s, MP4 (testsrc2 at {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]}, area-scaled)",
                     "short_side": SHORT_SIDE, "crop": CROP, "batch": arguments.batch,
                     "clips_per_round": arguments.batch * arguments.batches, "rounds": arguments.rounds,
                     "torch_threads": 1, "pinned_core": arguments.core, "seconds": round(time.time() - started, 1),
                     "trees": {name: str(code) for name, code in trees.items()}, "trees_note": arguments.trees_note},
        "host_copies_per_clip": COPIES_PER_CLIP,
        "results_ms_per_clip": results,
    }
    atomic_write_text(arguments.out, json.dumps(report, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
