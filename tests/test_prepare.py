"""distinit prepare (pipeline/prepared/): the copies hold the source's frames at its rate, at short side 128 or
less, with a keyframe every 16 frames; their recorded layouts are a fresh probe's; bad sources are listed with
their reason; parts + finalize, resumes after damage and runs killed at random moments all end with the bytes of
one uninterrupted run.

x264's tune (default fastdecode) reaches the encoder and the key, and a copy made with it holds the same frames
and layout as one made without; a folder prepared before the option existed keeps its key under `tune: null`.

Sources are tiny synthetic videos of every container the decoder tests use (FFV1/MKV, H.264 with B-frames and
open GOPs in MP4, MPEG-4 in AVI, MPEG-2 in MPEG-TS), one larger than 128 px at 30000/1001 fps, one of odd size,
one in a subfolder, a text file and a truncated MP4.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from distinit.pipeline.cli import main as cli
from distinit.pipeline.errors import ConfigError, DistinitError, VideoError
from distinit.pipeline.hashing import sha256_json
from distinit.pipeline.prepared import (
    CODE_VERSION, PrepareConfig, finalize, plan_prepare, prepare_key, prepared_videos, run_prepare,
)
from distinit.pipeline.prepared.encoding import Encoding, check_same_frames, encode_command, prepared_size
from distinit.pipeline.video import read_clip
from distinit.pipeline.video.binary import ffmpeg_binary
from distinit.pipeline.video.layout_record import layout_from_record, layout_record
from distinit.pipeline.video.probe import clear_probe_cache, probe_layout
from test_video import LOSSY_CODECS, encode, lossless_frames, noise_frames

REPOSITORY = Path(__file__).resolve().parents[1]
BAD_SOURCES = {"broken.mp4": "Invalid data found", "truncated.mp4": "moov atom not found"}


def lavfi_video(path: Path, source: str, frames: int, codec: list[str]) -> Path:
    command = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
               "-frames:v", str(frames), *codec, str(path)]
    subprocess.run(command, check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    encode(lossless_frames(), root / "lossless.mkv", ["-c:v", "ffv1"])
    for name, codec in sorted(LOSSY_CODECS.items()):
        if name.endswith(".ts"):  # the folder adapter lists no .ts: the same MPEG-TS stream named .mpg
            name, codec = name.replace(".ts", ".mpg"), [*codec, "-f", "mpegts"]
        encode(noise_frames(), root / name, codec)
    (root / "nested").mkdir()
    encode(noise_frames()[:30], root / "nested" / "short.avi", LOSSY_CODECS["mpeg4_bframes.avi"])
    lavfi_video(root / "large_ntsc.mp4", "testsrc2=size=320x240:rate=30000/1001", 45,
                ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "250"])
    lavfi_video(root / "odd_size.mkv", "testsrc2=size=75x51:rate=25", 20, ["-c:v", "ffv1", "-pix_fmt", "yuv444p"])
    (root / "broken.mp4").write_text("this is not a video\n")
    data = (root / "h264_bframes.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    return root


def make_config(sources: Path, out: Path, **options) -> PrepareConfig:
    return PrepareConfig(data="folder", root=str(sources), out=str(out), workers=2, max_failure_rate=1.0, **options)


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (provenance.json left out: it records the command line and git
    state), and every folder."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.name == "provenance.json":
            continue
        relative = path.relative_to(root).as_posix()
        hashes[relative] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def without(mapping: dict, name: str) -> dict:
    return {key: value for key, value in mapping.items() if key != name}


def temporary_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory) -> dict:
    """One uninterrupted run: its folder, report, and the whole output tree's hashes."""
    out = tmp_path_factory.mktemp("prepared") / "out"
    before = tree_hashes(sources)
    report = run_prepare(make_config(sources, out), show_progress=False)
    assert tree_hashes(sources) == before  # nothing written beside the sources
    return {"out": out, "report": report, "folder": report.folder, "hashes": tree_hashes(out)}


def good_sources(sources: Path) -> list[Path]:
    return sorted(path for path in sources.rglob("*") if path.is_file() and path.name not in BAD_SOURCES)


def test_copies_hold_every_frame_at_the_source_rate(sources, prepared):
    videos = prepared_videos(prepared["folder"])
    assert sorted(videos) == sorted(path.relative_to(sources).with_suffix("").as_posix() for path in good_sources(sources))
    for video_id, (path, _) in videos.items():
        source = next(sources.glob(f"{video_id}.*"))
        expected, got = probe_layout(source), probe_layout(path)
        assert got.info.frame_count == expected.info.frame_count, video_id
        assert got.info.fps == pytest.approx(expected.info.fps, rel=1e-9), video_id
        np.testing.assert_allclose(got.frame_times, expected.frame_times, atol=1e-4, err_msg=video_id)
        assert list(got.keyframe_indices) == list(range(0, got.info.frame_count, 16)), video_id
        assert got.info.codec == "h264" and got.seekable


def test_copies_have_short_side_128_or_the_source_size_rounded_to_even(sources, prepared):
    for video_id, (path, record) in prepared_videos(prepared["folder"]).items():
        source = probe_layout(next(sources.glob(f"{video_id}.*"))).info
        assert (record["width"], record["height"]) == prepared_size(source.width, source.height, 128)
    videos = prepared_videos(prepared["folder"])
    sizes = {video_id: (record["width"], record["height"]) for video_id, (_, record) in videos.items()}
    assert sizes["large_ntsc"] == (170, 128)
    assert sizes["odd_size"] == (74, 50)
    assert sizes["lossless"] == (64, 48)


def test_prepared_size_never_upscales():
    assert prepared_size(340, 256, 128) == (170, 128)
    assert prepared_size(256, 340, 128) == (128, 170)
    assert prepared_size(1920, 1080, 128) == (228, 128)
    assert prepared_size(128, 171, 128) == (128, 170)
    assert prepared_size(129, 131, 128) == (128, 130)
    assert prepared_size(64, 48, 128) == (64, 48)


def test_smaller_short_side_shrinks_every_copy(sources, tmp_path):
    report = run_prepare(make_config(sources, tmp_path / "out", short_side=32, limit=3), show_progress=False)
    for _, (path, record) in prepared_videos(report.folder).items():
        assert min(record["width"], record["height"]) == 32
        assert (probe_layout(path).info.width, probe_layout(path).info.height) == (record["width"], record["height"])


def test_recorded_layouts_equal_a_fresh_probe(prepared):
    clear_probe_cache()
    for video_id, (path, record) in prepared_videos(prepared["folder"]).items():
        assert path.is_absolute() and path.is_file()
        assert layout_record(probe_layout(path)) == record, video_id


def test_bad_sources_are_listed_with_their_reason(prepared):
    manifest = json.loads((prepared["folder"] / "manifest.json").read_text())
    reasons = {entry["source"]: entry["reason"] for entry in manifest["skipped"]}
    assert sorted(reasons) == sorted(BAD_SOURCES)
    for name, reason in BAD_SOURCES.items():
        assert reason in reasons[name]
        assert not (prepared["folder"] / "videos" / name).exists()
    assert manifest["totals"]["skipped"] == 2
    assert len(prepared["report"].skipped) == 2


def test_manifest_totals_and_rows(sources, prepared):
    folder = prepared["folder"]
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = [json.loads(line) for line in (folder / "videos.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert manifest["totals"]["prepared"] == len(rows) == len(good_sources(sources))
    assert manifest["totals"]["bytes"] == sum((folder / "videos" / row["path"]).stat().st_size for row in rows)
    assert manifest["bytes_per_video_second"] == pytest.approx(manifest["totals"]["bytes"] / manifest["totals"]["seconds"])
    key = prepare_key(make_config(sources, "elsewhere"), manifest["dataset_manifest_hash"])
    assert manifest["key"] == folder.name == key
    nested = next(row for row in rows if row["id"] == "nested/short")
    assert nested["path"] == "nested/short.mp4" and nested["source"] == "nested/short.avi"
    assert nested["source_size"] == (sources / "nested" / "short.avi").stat().st_size
    assert (folder.parent / "latest").read_text() == folder.name + "\n"
    assert prepared_videos(folder.parent).keys() == prepared_videos(folder).keys()  # <out>/<data> reads `latest`


def test_key_follows_what_the_copies_are(sources):
    config = make_config(sources, "out")
    key = prepare_key(config, "a" * 64)
    assert prepare_key(config, "b" * 64) != key
    for option, value in (("short_side", 112), ("gop", 8), ("crf", 23), ("preset", "fast"), ("tune", None),
                          ("tune", "film")):
        assert prepare_key(make_config(sources, "out", **{option: value}), "a" * 64) != key, option
    moved = PrepareConfig(data="folder", root="/elsewhere", out="other", workers=1, timeout_seconds=5.0,
                          max_failure_rate=0.5)
    assert prepare_key(moved, "a" * 64) == key


def test_a_folder_prepared_before_tune_existed_keeps_its_key_under_tune_null(sources):
    """Keys then hashed short_side, gop, crf and preset: `tune: null` names the same folder, and the default
    (fastdecode) another, so copies made with and without it are never mixed."""
    before = {"short_side": 128, "gop": 16, "crf": 20, "preset": "medium"}
    old_key = sha256_json({"dataset_manifest_hash": "a" * 64, "options": before, "code": CODE_VERSION})[:16]
    assert prepare_key(make_config(sources, "out", tune=None), "a" * 64) == old_key
    assert make_config(sources, "out").tune == "fastdecode"
    assert prepare_key(make_config(sources, "out"), "a" * 64) != old_key


def test_tune_reaches_the_ffmpeg_command():
    def command(tune):
        return encode_command("in.mkv", "out.mp4", (170, 128), Encoding(128, 16, 20, "medium", 60.0, tune), (340, 256))

    tuned = command("fastdecode")
    assert tuned[tuned.index("-tune") + 1] == "fastdecode" and tuned.index("-tune") > tuned.index("libx264")
    assert "-tune" not in command(None)


def x264_settings(path: Path) -> str:
    """The settings x264 writes into the stream (its SEI: `cabac=1 ref=3 deblock=1:0:0 ...`)."""
    data = path.read_bytes()
    start = data.index(b"cabac=")
    return data[start:data.index(b"\x00", start)].decode("ascii", "replace")


@pytest.fixture(scope="module")
def untuned(sources, tmp_path_factory) -> dict:
    """Copies made with `tune: null` (as before the option) into the same --out as `prepared`'s default ones."""
    out = tmp_path_factory.mktemp("untuned") / "out"
    report = run_prepare(make_config(sources, out, tune=None), show_progress=False)
    return {"out": out, "folder": report.folder}


def test_fastdecode_copies_are_made_with_it_and_hold_the_same_frames_and_layout(prepared, untuned):
    tuned, plain = prepared_videos(prepared["folder"]), prepared_videos(untuned["folder"])
    assert prepared["folder"].name != untuned["folder"].name and sorted(tuned) == sorted(plain)
    for video_id, (path, record) in tuned.items():
        plain_path, plain_record = plain[video_id]
        assert "cabac=0" in x264_settings(path) and "deblock=0:" in x264_settings(path), video_id
        assert "cabac=1" in x264_settings(plain_path) and "deblock=1:" in x264_settings(plain_path), video_id
        assert without(record, "file") == without(plain_record, "file"), video_id  # times, keyframes, size
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == record["frame_count"], video_id
        layout = layout_from_record(path, record)
        clip = read_clip(path, 0.0, 4, stride=2, threads=1, decoder="pyav", layout=layout)
        plain_clip = read_clip(plain_path, 0.0, 4, stride=2, threads=1, decoder="pyav",
                               layout=layout_from_record(plain_path, plain_record))
        assert clip.shape == plain_clip.shape == (4, record["height"], record["width"], 3), video_id
    manifest = json.loads((prepared["folder"] / "manifest.json").read_text())
    assert manifest["options"]["tune"] == "fastdecode"
    assert "tune" not in json.loads((untuned["folder"] / "manifest.json").read_text())["options"]


def test_a_folder_made_without_tune_is_left_alone_when_the_default_runs_beside_it(sources, prepared, untuned,
                                                                                   tmp_path):
    out = tmp_path / "out"
    shutil.copytree(untuned["out"], out)
    before = tree_hashes(out / "folder" / untuned["folder"].name)
    report = run_prepare(make_config(sources, out), show_progress=False)
    assert report.kept == 0 and report.folder.name == prepared["folder"].name != untuned["folder"].name
    assert tree_hashes(out / "folder" / untuned["folder"].name) == before
    assert (out / "folder" / "latest").read_text() == report.folder.name + "\n"
    assert all("cabac=0" in x264_settings(path) for path, _ in prepared_videos(out / "folder").values())


def test_shard_parts_then_finalize_equal_one_run(sources, prepared, tmp_path):
    out = prepared["out"]
    saved = tmp_path / "saved"
    shutil.copytree(out, saved)
    try:
        shutil.rmtree(out)
        config = make_config(sources, out)
        first = run_prepare(config, (0, 2), show_progress=False)
        assert first.manifest is None and not (first.folder / "manifest.json").exists()
        with pytest.raises(DistinitError, match="not prepared yet"):
            finalize(config)
        second = run_prepare(config, (1, 2), show_progress=False)
        assert second.manifest is None and first.videos + second.videos == len(plan_prepare(config).videos)
        finalize(config)
        assert tree_hashes(out) == prepared["hashes"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(saved, out)


def test_rerun_redoes_damaged_and_unfinished_copies(sources, prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared["out"], out)
    videos = out / "folder" / prepared["folder"].name / "videos"
    damaged = videos / "lossless.mp4"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (videos / "odd_size.mp4.json").unlink()  # a copy renamed into place by a run killed before its row
    (videos / ".large_ntsc.mp4.k1ll3d.mp4.tmp").write_bytes(b"half-written")
    os.utime(videos / "h264_bframes.mp4", (0, 0))  # touched, not changed: kept, its recorded mtime restored
    (out / "folder" / prepared["folder"].name / "manifest.json").unlink()
    report = run_prepare(make_config(sources, out), show_progress=False)
    assert report.written == 2 and report.kept == report.videos - 2
    config_file = f"folder/{prepared['folder'].name}/config.yaml"  # names its --out
    assert without(tree_hashes(out), config_file) == without(prepared["hashes"], config_file)
    path, record = prepared_videos(out / "folder")["h264_bframes"]
    assert layout_from_record(path, record) is not None
    assert not temporary_files(out)


def test_a_copy_with_other_frames_is_refused(sources):
    longer, shorter = probe_layout(sources / "lossless.mkv"), probe_layout(sources / "nested" / "short.avi")
    with pytest.raises(VideoError, match="prepared copy has 30 frames, the source 40"):
        check_same_frames("source.mkv", longer, shorter)
    faster = dataclasses.replace(longer, info=dataclasses.replace(longer.info, fps=50.0))
    with pytest.raises(VideoError, match="runs at 50.0000 fps, the source at 25.0000"):
        check_same_frames("source.mkv", longer, faster)


def test_unsealed_folder_is_refused_by_the_reader(tmp_path):
    with pytest.raises(DistinitError, match="not a finished prepared-videos folder"):
        prepared_videos(tmp_path)


def test_config_rejects_what_x264_cannot_do():
    for options in ({"short_side": 127}, {"gop": 0}, {"crf": 52}, {"preset": "quick"}, {"tune": "fast"},
                    {"workers": 0}):
        with pytest.raises(ConfigError):
            PrepareConfig(**options)


def test_cli_errors_are_one_line(sources, tmp_path):
    runner = CliRunner()
    for arguments, message in (
        (["--shard", "2/2"], "need 0 <= i < N"),
        (["--set", "bitrate=1M"], "unknown option(s) bitrate"),
        (["--short-side", "99"], "even number"),
    ):
        command = ["prepare", "--data", "folder", "--root", str(sources), "--out", str(tmp_path), *arguments]
        result = runner.invoke(cli, command)
        assert result.exit_code == 1 and message in result.output, result.output
    assert not any(tmp_path.iterdir())


# ---- killed at random moments ------------------------------------------------------------------------------


def start_prepare(arguments: list[str], log: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log, "wb") as stream:
        return subprocess.Popen([sys.executable, "-m", "distinit.pipeline", *arguments], cwd=REPOSITORY, stdout=stream,
                                stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def kill_and_resume(sources: Path, work: Path, seeds: range, workers: int = 2) -> list[str]:
    """For each seed: start `distinit prepare`, SIGKILL it (only the CLI: its ffmpeg children live on, finish
    their video and exit) at a seeded moment from a third into an uninterrupted run's time to a little past its
    end, re-run it at once, and compare the whole output tree with the uninterrupted run's. Returns what went
    wrong, one line a trial."""
    out = work / "out"
    arguments = ["prepare", "--data", "folder", "--root", str(sources), "--out", str(out), "--workers", str(workers),
                 "--set", "max_failure_rate=1.0", "--no-progress"]
    started = time.monotonic()
    reference = start_prepare(arguments, work / "reference.log")
    assert reference.wait(timeout=120) == 0, (work / "reference.log").read_text()
    duration = time.monotonic() - started
    expected = tree_hashes(out)
    problems = []
    for seed in seeds:
        shutil.rmtree(out)
        process = start_prepare(arguments, work / f"kill-{seed}.log")
        delay = random.Random(seed).uniform(0.3, 1.1) * duration
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        copies = len(list(out.rglob("*.mp4"))) if out.exists() else 0
        where = f"seed {seed}: killed after {delay:.2f} s of {duration:.2f} s with {copies} copies written"
        rerun = start_prepare(arguments, work / f"rerun-{seed}.log")
        if rerun.wait(timeout=120) != 0:
            problems.append(f"{where}: the re-run failed: {(work / f'rerun-{seed}.log').read_text()[-300:]}")
        deadline = time.monotonic() + 30
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_alive(process.pid):
            problems.append(f"{where}: its ffmpeg processes outlived it by 30 s")
        if tree_hashes(out) != expected:
            problems.append(f"{where}: the output differs from the uninterrupted run's")
        if temporary_files(out):
            problems.append(f"{where}: temp files left: {temporary_files(out)}")
    return problems


def test_killed_runs_resume_to_the_bytes_of_an_uninterrupted_run(sources, tmp_path):
    assert kill_and_resume(sources, tmp_path, range(3)) == []
