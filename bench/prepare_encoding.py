"""Prepared copies' x264 options against stage two's decode cost: `-tune fastdecode` and shorter GOPs.

    python bench/prepare_encoding.py                                        # ~4 min on 2 cores
    python bench/prepare_encoding.py --videos 3 --clips-per-video 4 --repeats 1 --out /tmp/p.json   # a smoke run

Videos: bench/kinetics_videos.py's Kinetics-like videos (10 s, 340x256, 30 fps, x264 defaults; real clips and
camera motion over real photos) in --work, made once and reused, plus one synthetic `testsrc2` video of the same
size, reported apart (a flat synthetic pattern is where the issue's first measurement came from).

Each variant (VARIANTS: today's options, `tune: fastdecode`, `gop: 8`, both) is made by `distinit prepare`'s own
code (run_prepare on the folder, every core), which also stores each copy's layout record. Per variant: bytes
per video, encode core-seconds, and PSNR/SSIM of the copy against its source scaled as prepare scales it (what
x264 lost). Then one child process pinned to one core reads the same seeded random clips from every variant
through stage two's decode path: `read_clip` with the stored layout, threads=1, the clip of configs/distill.yaml
(8 frames, stride 2, short side 128), with the PyAV backend (what `auto` picks for prepared copies) and the
ffmpeg backend, round after round, the variants interleaved clip by clip so all meet the same load. Per clip it
records wall time and CPU time (this process's, plus its ffmpeg children's): CPU time is far less disturbed by
other work on a shared machine than wall time. It also checks that every variant gives clips of the same shape,
that both backends give the same frames, and how far each variant's frames are from the original's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# The repository first: bench/ holds extract.py and distill.py, which would hide the packages of those names.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kinetics_like import bench_distill, clip_list  # noqa: E402
from kinetics_videos import BITEXACT, FRAME_COUNT, HEIGHT, WIDTH, X264Defaults, make_videos, recipes  # noqa: E402
from distinit.pipeline.atomic import atomic_write_text  # noqa: E402
from distinit.pipeline.demo_data.encode import run_ffmpeg  # noqa: E402
from distinit.pipeline.prepared import PrepareConfig, prepared_videos, run_prepare  # noqa: E402
from distinit.pipeline.prepared.encoding import SCALER_FLAGS  # noqa: E402
from distinit.pipeline.video import ffmpeg_binary, read_clip  # noqa: E402
from distinit.pipeline.video.layout_record import layout_from_record  # noqa: E402
from distinit.pipeline.video.probe import probe_layout  # noqa: E402

BASELINE = "gop16"  # configs/prepare.yaml's options before this benchmark (no tune)
VARIANTS = {  # spelled out: the defaults may change with what this measures
    "gop16": {"gop": 16, "tune": None},
    "gop16-fastdecode": {"gop": 16, "tune": "fastdecode"},
    "gop8": {"gop": 8, "tune": None},
    "gop8-fastdecode": {"gop": 8, "tune": "fastdecode"},
}
DECODERS = ("pyav", "ffmpeg")
FRAMES, STRIDE, SHORT_SIDE = 8, 2, 128  # configs/distill.yaml's clip
SYNTHETIC = "synthetic_testsrc2.mp4"


# ------------------------------------------------------------------------------------------ videos and copies
def make_synthetic(folder: Path) -> Path:
    """testsrc2 at the Kinetics-like videos' size, rate and length, with x264's defaults."""
    target = folder / SYNTHETIC
    if not target.is_file():
        arguments = ["-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate=30", "-frames:v", str(FRAME_COUNT),
                     *BITEXACT, *X264Defaults().arguments()]
        run_ffmpeg(arguments, target, 300.0)
    return target


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children only: ffmpeg runs to the end
    return usage.ru_utime + usage.ru_stime


def prepare_variant(videos: Path, out: Path, options: dict[str, Any], workers: int) -> dict[str, Any]:
    """`distinit prepare` on the folder with these options, from scratch; its copies and what they cost."""
    shutil.rmtree(out, ignore_errors=True)
    config = PrepareConfig(data="folder", root=str(videos), out=str(out), workers=workers, **options)
    cpu, wall = children_cpu_seconds(), time.monotonic()
    report = run_prepare(config, show_progress=False)
    wall, cpu = time.monotonic() - wall, children_cpu_seconds() - cpu
    copies = {video_id: [str(path), record] for video_id, (path, record) in prepared_videos(report.folder).items()}
    return {"key": report.key, "copies": copies, "encode_wall_seconds": round(wall, 2),
            "encode_core_seconds_per_video": round(cpu / len(copies), 3)}


def quality(copy: str, source: Path, width: int, height: int) -> tuple[float, float]:
    """(PSNR dB, SSIM) of the copy against its source scaled as prepare scales it: what x264 lost."""
    graph = (f"[1:v]scale={width}:{height}:flags={SCALER_FLAGS},format=yuv420p,split[r1][r2];"
             "[0:v]format=yuv420p,split[d1][d2];[d1][r1]psnr[p];[d2][r2]ssim[s]")
    command = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-threads", "1", "-i", copy, "-i", str(source),
               "-filter_complex", graph, "-map", "[p]", "-f", "null", "-", "-map", "[s]", "-f", "null", "-"]
    log = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stderr
    psnr = re.search(r"PSNR .*average:(\S+)", log).group(1)
    return float(psnr), float(re.search(r"SSIM .*All:(\S+)", log).group(1))


# ------------------------------------------------------------------------------------------ the decode child
def clip_reader(path: str, layout, decoder: str):
    def read(first: int) -> np.ndarray:
        return read_clip(path, first / layout.info.fps, FRAMES, stride=STRIDE, short_side=SHORT_SIDE, threads=1,
                         decoder=decoder, layout=layout)
    return read


def timed(read, first: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one clip; CPU is this process's plus its finished children's (ffmpeg's)."""
    children, cpu, wall = children_cpu_seconds(), time.process_time(), time.perf_counter()
    read(first)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu + children_cpu_seconds() - children


def check_frames(readers, originals, clips) -> dict[str, Any]:
    """Per variant: shapes, both backends equal, mean |difference| from the original's frames (PyAV)."""
    checks = {}
    for variant, by_decoder in readers.items():
        shapes, equal, difference = set(), True, []
        for video_id, first in clips:
            clips_read = [by_decoder[decoder][video_id](first) for decoder in DECODERS]
            original = originals[video_id](first)
            shapes |= {tuple(clip.shape) for clip in clips_read}
            equal &= all(np.array_equal(clips_read[0], clip) for clip in clips_read[1:])
            if clips_read[0].shape == original.shape:
                difference.append(float(np.abs(clips_read[0].astype(np.int16) - original).mean()))
        checks[variant] = {"clips": len(clips), "shapes": sorted(list(shape) for shape in shapes),
                           "backends_equal": equal, "mean_absolute_difference_from_original": round(
                               statistics.fmean(difference), 3) if len(difference) == len(clips) else None}
    return checks


def child_decode(spec: dict[str, Any]) -> dict[str, Any]:
    os.sched_setaffinity(0, {spec["cpu"]})  # the ffmpeg backend's processes inherit the mask
    readers = {variant: {decoder: {video_id: clip_reader(path, layout_from_record(path, record), decoder)
                                   for video_id, (path, record) in copies.items()} for decoder in DECODERS}
               for variant, copies in spec["variants"].items()}
    originals = {video_id: clip_reader(path, probe_layout(path), "pyav")
                 for video_id, path in spec["originals"].items()}
    clips = spec["clips"]
    checks = check_frames(readers, originals, clips[: spec["check_clips"]])  # also the warm-up
    names = list(readers)
    times = {decoder: {variant: [] for variant in names} for decoder in DECODERS}  # [round, clip, wall, cpu]
    rng = np.random.default_rng(spec["seed"])
    for round_number in range(spec["repeats"]):
        for position in rng.permutation(len(clips)):
            video_id, first = clips[position]
            for decoder in DECODERS:
                for offset in range(len(names)):  # each clip starts with another variant
                    variant = names[(position + round_number + offset) % len(names)]
                    wall, cpu = timed(readers[variant][decoder][video_id], first)
                    times[decoder][variant].append([round_number, int(position), wall, cpu])
    return {"checks": checks, "times": times}


def decode_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--decode-child", json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        raise RuntimeError(f"decode child failed ({completed.returncode}): {completed.stderr.strip()[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ summaries
def milliseconds(values: list[float]) -> dict[str, float]:
    values = [1e3 * value for value in values]
    return {"median": round(statistics.median(values), 3), "mean": round(statistics.fmean(values), 3),
            "p10": round(float(np.percentile(values, 10)), 3), "p90": round(float(np.percentile(values, 90)), 3)}


def summarise_decode(times: dict[str, dict[str, list]], clips: list[list], group: set[str]) -> dict[str, Any]:
    """Per decoder and variant, over the group's clips: wall and CPU ms per clip (every clip of every round; and
    each round's mean), and against the baseline: the ratio of means and the median of per-clip ratios."""
    summary = {}
    for decoder, by_variant in times.items():
        rows = {variant: {(row[0], row[1]): row[2:] for row in runs if clips[row[1]][0] in group}
                for variant, runs in by_variant.items()}
        baseline = rows[BASELINE]
        summary[decoder] = {}
        for variant, measured in rows.items():
            result = {"clips_timed": len(measured)}
            for column, kind in enumerate(("wall", "cpu")):
                values = [value[column] for value in measured.values()]
                rounds = sorted({round_number for round_number, _ in measured})
                round_means = [1e3 * statistics.fmean(value[column] for (number, _), value in measured.items()
                                                      if number == round_number) for round_number in rounds]
                result[f"{kind}_ms_per_clip"] = {**milliseconds(values),
                                                  "round_means": [round(value, 3) for value in round_means]}
                base = [baseline[clip][column] for clip in measured]
                result[f"{kind}_ratio_to_{BASELINE}"] = {
                    "of_means": round(statistics.fmean(values) / statistics.fmean(base), 3),
                    "median_per_clip": round(statistics.median(
                        value / reference for value, reference in zip(values, base)), 3)}
            summary[decoder][variant] = result
    return summary


def summarise_copies(prepared: dict[str, Any], group: set[str]) -> dict[str, Any]:
    summary = {}
    baseline_bytes = sum(prepared[BASELINE]["copies"][video_id][1]["file"]["size"] for video_id in group)
    for variant, made in prepared.items():
        records = [made["copies"][video_id][1] for video_id in sorted(group)]
        total = sum(record["file"]["size"] for record in records)
        scores = [made["quality"][video_id] for video_id in sorted(group)]
        summary[variant] = {
            "options": VARIANTS[variant], "key": made["key"], "videos": len(records),
            "bytes_per_video": round(total / len(records)),
            "bytes_per_video_second": round(total / sum(record["duration"] for record in records)),
            f"bytes_ratio_to_{BASELINE}": round(total / baseline_bytes, 3),
            "psnr_db": round(statistics.fmean(score[0] for score in scores), 2),
            "ssim": round(statistics.fmean(score[1] for score in scores), 4),
            "encode_core_seconds_per_video": made["encode_core_seconds_per_video"],
            "frame_size": sorted({f"{record['width']}x{record['height']}" for record in records}),
            "keyframes_every": sorted({round(record["frame_count"] / len(record["keyframes"]), 1)
                                       for record in records if record.get("keyframes")}),
        }
    return summary


def verdict(copies: dict[str, Any], decode: dict[str, Any]) -> dict[str, Any]:
    """Per variant against the baseline, on the Kinetics-like videos: CPU per clip with PyAV (stage two's
    backend for copies), bytes, PSNR. Whether one wins is docs/benchmarks.md's call; these are its figures."""
    pyav = decode["pyav"]
    return {variant: {"pyav_cpu_ratio": pyav[variant][f"cpu_ratio_to_{BASELINE}"]["of_means"],
                      "pyav_wall_ratio": pyav[variant][f"wall_ratio_to_{BASELINE}"]["of_means"],
                      "ffmpeg_cpu_ratio": decode["ffmpeg"][variant][f"cpu_ratio_to_{BASELINE}"]["of_means"],
                      "bytes_ratio": copies[variant][f"bytes_ratio_to_{BASELINE}"],
                      "psnr_change_db": round(copies[variant]["psnr_db"] - copies[BASELINE]["psnr_db"], 2)}
            for variant in copies}


def print_report(report: dict[str, Any]) -> None:
    for group, result in report["groups"].items():
        print(f"\n{group}: {result['videos']} videos, {result['clips']} clips of {FRAMES} frames (stride {STRIDE})")
        print(f"  {'variant':18} {'bytes/video':>11} {'ratio':>6} {'PSNR':>6} {'SSIM':>7}   "
              + "   ".join(f"{decoder} cpu ms (ratio) wall ms (ratio)" for decoder in DECODERS))
        for variant, copies in result["copies"].items():
            cells = []
            for decoder in DECODERS:
                timing = result["decode"][decoder][variant]
                cells.append(" ".join(f"{timing[f'{kind}_ms_per_clip']['mean']:7.2f} "
                                      f"({timing[f'{kind}_ratio_to_{BASELINE}']['of_means']:.3f})"
                                      for kind in ("cpu", "wall")))
            print(f"  {variant:18} {copies['bytes_per_video']:11d} {copies[f'bytes_ratio_to_{BASELINE}']:6.3f} "
                  f"{copies['psnr_db']:6.2f} {copies['ssim']:7.4f}   " + "   ".join(cells))
    for variant, check in report["frame_checks"].items():
        print(f"  frames {variant}: {check}")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--videos", type=int, default=12, help="Kinetics-like videos to make and use")
    add("--work", type=Path, default=Path("/tmp/distinit-prepare-encoding"),
        help="scratch folder for the videos (kept for the next run) and the copies")
    add("--out", type=Path, default=Path("bench/results/prepare_encoding.json"))
    add("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    add("--clips-per-video", type=int, default=16)
    add("--repeats", type=int, default=4, help="timed rounds over every clip")
    add("--check-clips", type=int, default=24, help="clips whose frames are compared (also the warm-up)")
    add("--seed", type=int, default=0)
    add("--note", default=None, help="what else ran on the machine, recorded in the JSON")
    add("--decode-child", help=argparse.SUPPRESS)
    return parser.parse_args()


def git_state() -> dict[str, Any]:
    """The commit and the files changed beside it: the decode path measured is the working tree's."""
    def git(*arguments: str) -> str:
        repository = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", *arguments], capture_output=True, text=True, cwd=repository).stdout

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(), "changed_files": changed}


def link_sources(work: Path, count: int, seed: int, cores: int) -> dict[str, Path]:
    """{video id: path} of this run's videos, hard-linked into their own folder (prepare lists a whole folder)
    from where every video made so far is kept."""
    kept = work / f"videos-seed{seed}"
    videos = [*make_videos(kept, count, seed, workers=cores), make_synthetic(kept)]
    folder = work / "sources"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in videos:
        os.link(path, folder / path.name)
    return {path.stem: folder / path.name for path in videos}


def prepare_variants(names: list[str], sources: dict[str, Path], work: Path, cores: int, log) -> dict[str, Any]:
    """Every variant's copies (prepare_variant), with each copy's (PSNR, SSIM)."""
    folder = next(iter(sources.values())).parent
    prepared = {}
    for variant in [BASELINE, *(name for name in names if name != BASELINE)]:
        made = prepare_variant(folder, work / "prepared" / variant, VARIANTS[variant], cores)
        made["quality"] = {video_id: quality(path, sources[video_id], record["width"], record["height"])
                           for video_id, (path, record) in made["copies"].items()}
        prepared[variant] = made
        log(f"prepared {variant}: {made['encode_wall_seconds']} s")
    return prepared


def main() -> None:
    arguments = parse_arguments()
    if arguments.decode_child:
        print(json.dumps(child_decode(json.loads(arguments.decode_child))))
        return
    distill = bench_distill()
    machine, started, tree = distill.machine_info(), time.monotonic(), git_state()  # the tree when it started
    cores = len(os.sched_getaffinity(0))
    sources = link_sources(arguments.work, arguments.videos, arguments.seed, cores)
    distill.log(f"{len(sources)} videos")
    prepared = prepare_variants(arguments.variants, sources, arguments.work, cores, distill.log)
    frame_counts = [probe_layout(sources[video_id]).info.frame_count for video_id in sorted(sources)]
    clips = clip_list(sorted(sources), frame_counts, arguments.clips_per_video, (FRAMES - 1) * STRIDE + 1,
                      arguments.seed)
    spec = {"cpu": max(os.sched_getaffinity(0)), "seed": arguments.seed, "repeats": arguments.repeats,
            "check_clips": arguments.check_clips, "clips": clips,
            "originals": {video_id: str(path) for video_id, path in sources.items()},
            "variants": {variant: copies["copies"] for variant, copies in prepared.items()}}
    load_before_decode = distill.load_average()
    decoded = decode_in_child(spec)
    distill.log("decoded")
    synthetic = Path(SYNTHETIC).stem
    groups = {"kinetics_like": set(sources) - {synthetic}, "synthetic_testsrc2": {synthetic}}
    report: dict[str, Any] = {
        "benchmark": "prepare_encoding", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(["bench/prepare_encoding.py", *sys.argv[1:]]), "machine": machine,
        "git": tree, "conditions": arguments.note,
        "settings": {key: str(value) if isinstance(value, Path) else value
                     for key, value in vars(arguments).items() if key != "decode_child"},
        "clip": {"frames": FRAMES, "stride": STRIDE, "short_side": SHORT_SIDE, "threads": 1, "decoders": DECODERS,
                 "layout": "stored (prepare's record)", "pinned_cpu": spec["cpu"]},
        "made_from": [recipe.name + ": " + recipe.details for recipe in recipes(arguments.videos, arguments.seed)],
        "groups": {}, "frame_checks": decoded["checks"],
    }
    for group, members in groups.items():
        copies = summarise_copies(prepared, members)
        decode = summarise_decode(decoded["times"], clips, members)
        report["groups"][group] = {"videos": len(members), "clips": sum(clip[0] in members for clip in clips),
                                   "copies": copies, "decode": decode, "against_baseline": verdict(copies, decode)}
    machine["load_average_before_decode"] = load_before_decode
    machine["load_average_after"] = distill.load_average()
    report["seconds"] = round(time.monotonic() - started, 1)
    atomic_write_text(arguments.out, json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwrote {arguments.out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
