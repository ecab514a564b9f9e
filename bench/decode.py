"""Decode benchmark: sampling frames with read_frames against decoding every frame.

    python bench/decode.py --videos data/demo/pool --out bench/results/decode.json

For each video, frames are sampled at --per-second frames per second of video (times 0, 0.5, 1, ...
for 2/s) and fetched four ways, each timed --repeats times (median kept):
  a   read_frames(strategy='auto'), probe included (cold cache), as extraction would call it;
      also with the probe cached, and with strategy 'sequential' and 'seek' forced, to show the rule;
  b   one ffmpeg process decodes every frame to an rgb24 pipe, Python keeps the sampled ones;
  c   ffmpeg decoding every frame to `-f null` (no conversion, no pipe): the ceiling for any
      method that decodes every frame, as decoded frames/s and as sampled frames/s if free.
The summary reports sampled frames per second of wall time and the ratio a/b, and checks that a and
b return identical frames. Timings depend on load: the JSON records the load average around the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distinit.pipeline.atomic import atomic_write_text  # noqa: E402
from distinit.pipeline.video import ffmpeg_binary, output_size, read_frames  # noqa: E402
from distinit.pipeline.video.decode import frame_index_at  # noqa: E402
from distinit.pipeline.video.probe import clear_probe_cache, probe_layout  # noqa: E402

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v"}


def list_videos(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file())


def sample_times(duration: float, per_second: float) -> list[float]:
    return [index / per_second for index in range(max(1, math.ceil(duration * per_second - 1e-9)))]


def median_seconds(function, repeats: int) -> tuple[float, object]:
    durations, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), result


def decode_all_keep_sampled(
    path: Path, native: tuple[int, int], size: tuple[int, int], keep: list[int], threads: int | None
) -> np.ndarray:
    """Method b: every frame through one rgb24 pipe; keep the sampled indices (in request order)."""
    width, height = size
    command = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    command += ["-threads", str(threads)] if threads else []
    command += ["-i", str(path), "-map", "0:V:0", "-fps_mode", "passthrough"]
    if size != native:  # the same scaler read_frames uses, so the frames can be compared
        flags = "area" if width * height < native[0] * native[1] else "bicubic"
        command += ["-vf", f"scale={width}:{height}:flags={flags}"]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    frame_bytes = width * height * 3
    wanted = set(keep)
    kept: dict[int, np.ndarray] = {}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    buffer = bytearray(frame_bytes)
    index = 0
    while process.stdout.readinto(buffer) == frame_bytes:
        if index in wanted:
            kept[index] = np.frombuffer(bytes(buffer), dtype=np.uint8).reshape(height, width, 3)
        index += 1
    process.wait()
    last = index - 1
    return np.stack([kept[min(position, last)] for position in keep])


def decode_null(path: Path, threads: int | None) -> None:
    command = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    command += ["-threads", str(threads)] if threads else []
    subprocess.run([*command, "-i", str(path), "-map", "0:V:0", "-f", "null", "-"], check=True)


def read_cold(path: Path, times: list[float], **options) -> np.ndarray:
    clear_probe_cache()
    return read_frames(path, times, **options)


def measure_video(path: Path, arguments: argparse.Namespace) -> dict:
    layout = probe_layout(path)
    info = layout.info
    times = sample_times(info.duration, arguments.per_second)
    indices = [frame_index_at(t, info.fps, info.frame_count) for t in times]
    size = output_size(info.width, info.height, arguments.short_side)
    options = {"short_side": arguments.short_side, "threads": arguments.threads}
    repeats = arguments.repeats
    seconds: dict[str, float] = {}
    seconds["a_auto"], frames_a = median_seconds(lambda: read_cold(path, times, **options), repeats)
    probe_layout(path)
    seconds["a_auto_probe_cached"], _ = median_seconds(lambda: read_frames(path, times, **options), repeats)
    for strategy in ("sequential", "seek"):
        forced = {**options, "strategy": strategy}
        seconds[f"a_{strategy}"], _ = median_seconds(lambda: read_cold(path, times, **forced), repeats)
    native = (info.width, info.height)
    seconds["b_full_pipe"], frames_b = median_seconds(
        lambda: decode_all_keep_sampled(path, native, size, indices, arguments.threads), repeats
    )
    seconds["c_null_decode"], _ = median_seconds(lambda: decode_null(path, arguments.threads), repeats)
    keyframes = len(layout.keyframe_indices)
    return {
        "video": str(path),
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "fps": round(info.fps, 4),
        "frame_count": info.frame_count,
        "duration": round(info.duration, 3),
        "keyframes": keyframes,
        "mean_gop_frames": round(info.frame_count / keyframes, 1),
        "seekable": layout.seekable,
        "sampled_frames": len(times),
        "seconds": {name: round(value, 5) for name, value in seconds.items()},
        "a_equals_b": bool(np.array_equal(frames_a, frames_b)),
    }


def summarize(records: list[dict]) -> dict:
    sampled = sum(record["sampled_frames"] for record in records)
    decoded = sum(record["frame_count"] for record in records)
    totals = {name: sum(record["seconds"][name] for record in records) for name in records[0]["seconds"]}
    sampled_per_second = {name: round(sampled / value, 1) for name, value in totals.items()}
    return {
        "videos": len(records),
        "sampled_frames": sampled,
        "decoded_frames_total": decoded,
        "total_seconds": {name: round(value, 4) for name, value in totals.items()},
        "sampled_frames_per_second": sampled_per_second,
        "c_decoded_frames_per_second": round(decoded / totals["c_null_decode"], 1),
        "ratio_a_over_b": round(totals["b_full_pipe"] / totals["a_auto"], 2),
        "ratio_a_probe_cached_over_b": round(totals["b_full_pipe"] / totals["a_auto_probe_cached"], 2),
        "ratio_c_over_b_ceiling_without_skipping": round(totals["b_full_pipe"] / totals["c_null_decode"], 2),
        "all_a_equal_b": all(record["a_equals_b"] for record in records),
    }


def machine_info() -> dict:
    version = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "load_average_before": [round(value, 2) for value in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ffmpeg": version,
        "ffmpeg_binary": ffmpeg_binary(),
    }


def print_table(records: list[dict], summary: dict) -> None:
    columns = ["a_auto", "a_sequential", "a_seek", "b_full_pipe", "c_null_decode"]
    header = "".join(f"{name:>15}" for name in columns)
    print(f"{'video':28} {'size':>9} {'gop':>5} {'n':>3}{header}  (milliseconds)")
    for record in records:
        size = f"{record['width']}x{record['height']}"
        times = "".join(f"{record['seconds'][name] * 1e3:15.1f}" for name in columns)
        name = Path(record["video"]).name[:28]
        print(f"{name:28} {size:>9} {record['mean_gop_frames']:>5} {record['sampled_frames']:>3}{times}")
    rates = summary["sampled_frames_per_second"]
    print(f"\nsampled frames/s over {summary['videos']} videos ({summary['sampled_frames']} frames):")
    for name, rate in rates.items():
        print(f"  {name:22} {rate:9.1f}")
    print(f"  c decode-only: {summary['c_decoded_frames_per_second']} decoded frames/s")
    print(f"ratio a/b = {summary['ratio_a_over_b']}  (probe cached: {summary['ratio_a_probe_cached_over_b']}; "
          f"ceiling for decoding every frame c/b = {summary['ratio_c_over_b_ceiling_without_skipping']}); "
          f"a == b frames: {summary['all_a_equal_b']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--videos", type=Path, default=Path("data/demo/pool"), help="folder of videos (searched recursively)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    parser.add_argument("--per-second", type=float, default=2.0, help="sampled frames per second of video")
    parser.add_argument("--short-side", type=int, default=None, help="resize in ffmpeg (a and b alike)")
    parser.add_argument("--threads", type=int, default=None, help="ffmpeg decoder threads (default: ffmpeg's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N videos")
    arguments = parser.parse_args()
    videos = list_videos(arguments.videos)[: arguments.limit]
    if not videos:
        sys.exit(f"no videos under {arguments.videos}; pass --videos DIR")
    machine = machine_info()
    records = [measure_video(path, arguments) for path in videos]
    machine["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    summary = summarize(records)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(arguments).items()}
    report = {"machine": machine, "settings": settings, "summary": summary, "videos": records}
    atomic_write_text(arguments.out, json.dumps(report, indent=2) + "\n")
    print_table(records, summary)
    print(f"\nwrote {arguments.out}")


if __name__ == "__main__":
    main()
