"""Trial kind 5: bad command lines and hostile output folders. Each must end with a non-zero exit, one
`Error: ...` line naming the culprit (no traceback), no temp file, and every earlier output untouched.

Every case runs on its own copy of the folder it writes to (an earlier extraction, an earlier distill
run), hashed before and after: an earlier file changed or removed fails the case, and so does any new
file, except where the case says a partial new output is fair (a full disk). Read-only folders bind
root only without CAP_DAC_OVERRIDE (see common.permission_preexec); a full disk is a file-size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored so a write fails with EFBIG rather than killing the process).
Cases run two at a time; each has its own folders, so they cannot see each other's writes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, Collection

from bench.faults_trials.common import (
    KindReport, TrialResult, error_line, make_video_folder, one_line_error_problem, permission_preexec, run_cli,
    snapshot_changes, temporary_files, tree_snapshot,
)

COMMAND_TIMEOUT_SECONDS = 180.0
EXTRACT_FILE_LIMIT = 20_000  # bytes: videos.jsonl fits, a shard (tens of kB) does not
DISTILL_FILE_LIMIT = 200_000  # bytes: config and provenance fit, a checkpoint (~1 MB) does not


@dataclasses.dataclass
class Case:
    name: str
    arguments: list[str]
    watched: str | None  # which earlier output (a key of Fixtures.earlier) the case gets a copy of, as {out}
    mentions: tuple[str, ...]  # what the error line must name (any one of them)
    may_add: bool = False  # a partial new output is fair (the command got as far as writing)
    preexec: Callable[[], None] | None = None
    read_only: bool = False  # the copy of the watched folder is made read-only (every folder 0555)


@dataclasses.dataclass
class Fixtures:
    work: Path
    videos: Path
    targets: Path  # a finished targets folder (read by the distill cases)
    earlier: dict[str, Path]  # name -> an output folder from earlier runs
    hmdb_good: Path
    hmdb_bad: Path
    ucf_bad: Path
    a_file: Path


def file_size_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def write_hmdb(base: Path, malformed: bool) -> Path:
    """3 classes x 2 placeholder videos, HMDB-51 layout (adapters list files, errors come before decoding)."""
    root = base / "videos"
    splits = base / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True, exist_ok=True)
    for class_name in ("brush_hair", "cartwheel", "ride_bike"):
        (root / class_name).mkdir(parents=True, exist_ok=True)
        names = [f"{class_name}_{number}.avi" for number in range(2)]
        for name in names:
            (root / class_name / name).write_bytes(b"placeholder")
        for split in (1, 2, 3):
            lines = [f"{names[0]} 1 ", f"{names[1]} 2 "]
            if malformed and class_name == "cartwheel" and split == 2:
                lines[1] = f"{names[1]} train"
            (splits / f"{class_name}_test_split{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_ucf_malformed(base: Path) -> Path:
    root = base / "UCF-101"
    lists = base / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("1 Basketball\r\n2 Diving\r\n")
    for class_name in ("Basketball", "Diving"):
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for group in (1, 2):
            (root / class_name / f"v_{class_name}_g0{group}_c01.avi").write_bytes(b"placeholder")
    for split in (1, 2, 3):
        train = "Basketball/v_Basketball_g01_c01.avi 1\r\nDiving/v_Diving_g01_c01.avi 2\r\n"
        if split == 1:
            train = "Basketball/v_Basketball_g01_c01.avi 1\r\nDiving v_Diving_g01_c01.avi\r\n"
        (lists / f"trainlist0{split}.txt").write_text(train)
        (lists / f"testlist0{split}.txt").write_text("Basketball/v_Basketball_g02_c01.avi\r\nDiving/v_Diving_g02_c01.avi\r\n")
    return root


def build_fixtures(work: Path) -> Fixtures:
    videos = make_video_folder(work / "videos", 3, seconds=1.0)
    extracted = work / "earlier-targets"
    done = run_cli(["extract", "--data", "folder", "--root", str(videos), "--out", str(extracted), "--shard-count", "2",
                    "--workers", "0", "--max-frames-per-video", "2", "--no-progress"], timeout=COMMAND_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"extraction for the bad-CLI trials failed: {done.stderr[-500:]}")
    targets = next((extracted / "folder").glob("*/manifest.json")).parent
    runs = work / "earlier-runs"
    done = run_cli(["distill", "--targets", str(targets), "--width", "tiny", "--frames", "2", "--short-side", "32",
                    "--crop", "32", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                    "--out", str(runs), "--no-progress"], timeout=COMMAND_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"distillation for the bad-CLI trials failed: {done.stderr[-500:]}")
    evaluations = work / "earlier-eval"
    evaluations.mkdir(parents=True, exist_ok=True)
    (evaluations / "results.json").write_text('{"earlier": true}\n')
    a_file = work / "a-file"
    a_file.write_text("a file where a folder should be\n")
    return Fixtures(work, videos, targets, {"targets": extracted, "runs": runs, "eval": evaluations},
                    write_hmdb(work / "hmdb-good", malformed=False), write_hmdb(work / "hmdb-bad", malformed=True),
                    write_ucf_malformed(work / "ucf-bad"), a_file)


def extract_cases(fixtures: Fixtures, permissions: Callable[[], None] | None) -> list[Case]:
    videos = str(fixtures.videos)
    base = ["extract", "--data", "folder", "--root", videos, "--workers", "0", "--no-progress"]

    def extract(*arguments: str, out: str = "{out}") -> list[str]:
        return [*base, "--out", out, *arguments]

    hmdb_splits = "cartwheel_test_split2.txt"
    return [
        Case("extract: unknown dataset", ["extract", "--data", "nope", "--root", videos, "--out", "{out}"], "targets", ("nope",)),
        Case("extract: unknown teacher", extract("--teachers", "nope"), "targets", ("nope",)),
        Case("extract: missing root", ["extract", "--data", "folder", "--root", str(fixtures.work / "missing"),
                                        "--out", "{out}"], "targets", ("missing",)),
        # split=1: a labeled dataset without a split is refused before its split files are read.
        Case("extract: malformed HMDB-51 split file", ["extract", "--data", "hmdb51", "--root", str(fixtures.hmdb_bad),
                                                       "--set", "split=1", "--out", "{out}"], "targets",
             (f"{hmdb_splits}:2",)),
        Case("extract: malformed UCF-101 train list", ["extract", "--data", "ucf101", "--root", str(fixtures.ucf_bad),
                                                       "--set", "split=1", "--out", "{out}"], "targets",
             ("trainlist01.txt:2",)),
        Case("extract: --shard 3/2", extract("--shard", "3/2"), "targets", ("3/2",)),
        Case("extract: --shard-count 0", extract("--shard-count", "0"), "targets", ("shard_count", "shard-count")),
        Case("extract: --batch-size -1", extract("--batch-size", "-1"), "targets", ("batch_size", "batch-size")),
        Case("extract: --frames-per-second 0", extract("--frames-per-second", "0"), "targets", ("frames_per_second",)),
        Case("extract: --max-frames-per-video 0", extract("--max-frames-per-video", "0"), "targets", ("max_frames_per_video",)),
        Case("extract: --workers -1", extract("--workers", "-1"), "targets", ("workers",)),
        Case("extract: --limit 0", extract("--limit", "0"), "targets", ("limit",)),
        Case("extract: --out is a file", extract(out=str(fixtures.a_file)), None, (fixtures.a_file.name,)),
        Case("extract: read-only --out", extract("--max-frames-per-video", "3"), "targets", ("{out}",),
             preexec=permissions, read_only=True),
        Case("extract: full disk (RLIMIT_FSIZE)", extract("--max-frames-per-video", "3", "--shard-count", "2"), "targets",
             ("{out}",), may_add=True, preexec=file_size_limit(EXTRACT_FILE_LIMIT)),
    ]


def distill_cases(fixtures: Fixtures, permissions: Callable[[], None] | None) -> list[Case]:
    def distill(*arguments: str, out: str = "{out}") -> list[str]:
        return ["distill", "--targets", str(fixtures.targets), "--width", "tiny", "--frames", "2", "--short-side", "32",
                "--crop", "32", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                "--no-progress", "--out", out, *arguments]

    return [
        Case("distill: unknown student", distill("--student", "nope"), "runs", ("nope",)),
        Case("distill: missing targets", ["distill", "--targets", str(fixtures.work / "missing"), "--out", "{out}"],
             "runs", ("missing",)),
        Case("distill: --batch-size 0", distill("--batch-size", "0"), "runs", ("batch_size",)),
        Case("distill: --frames -1", distill("--frames", "-1"), "runs", ("frames",)),
        Case("distill: --crop 0", distill("--crop", "0"), "runs", ("crop",)),
        Case("distill: --epochs 0", distill("--epochs", "0"), "runs", ("epochs",)),
        Case("distill: --out is a file", distill(out=str(fixtures.a_file)), None, (fixtures.a_file.name,)),
        Case("distill: read-only --out", distill("--seed", "9"), "runs", ("{out}",), preexec=permissions,
             read_only=True),
        Case("distill: full disk (RLIMIT_FSIZE)", distill("--seed", "9"), "runs", ("{out}",), may_add=True,
             preexec=file_size_limit(DISTILL_FILE_LIMIT)),
    ]


def eval_cases(fixtures: Fixtures) -> list[Case]:
    def evaluate(*arguments: str, root: Path = fixtures.hmdb_good, out: str = "{out}") -> list[str]:
        return ["eval", "--data", "hmdb51", "--root", str(root), "--splits", "1", "--init", "scratch", "--width", "tiny",
                "--workers", "0", "--device", "cpu", "--no-progress", "--out", out, *arguments]

    return [
        Case("eval: unknown dataset", ["eval", "--data", "nope", "--root", str(fixtures.hmdb_good), "--out", "{out}"],
             "eval", ("nope",)),
        Case("eval: unknown init", evaluate("--init", "nope"), "eval", ("nope",)),
        Case("eval: unknown student", evaluate("--student", "nope"), "eval", ("nope",)),
        Case("eval: missing root", evaluate(root=fixtures.work / "missing"), "eval", ("missing",)),
        Case("eval: malformed split file", evaluate(root=fixtures.hmdb_bad), "eval", ("cartwheel_test_split2.txt:2",)),
        Case("eval: --batch-size 0", evaluate("--batch-size", "0"), "eval", ("batch_size",)),
        Case("eval: --test-clips 0", evaluate("--test-clips", "0"), "eval", ("test_clips",)),
        Case("eval: --out is a file", evaluate(out=str(fixtures.a_file)), None, (fixtures.a_file.name,)),
    ]


def other_cases(fixtures: Fixtures) -> list[Case]:
    return [
        Case("manifest: unknown dataset", ["manifest", "--data", "nope", "--root", str(fixtures.videos), "--out",
                                           "{out}/videos.jsonl"], "eval", ("nope",)),
        Case("manifest: --out is a folder", ["manifest", "--data", "folder", "--root", str(fixtures.videos), "--out",
                                             "{out}"], "eval", ("{out}",)),
    ]


def run_case(case: Case, fixtures: Fixtures, number: int) -> TrialResult:
    out = None
    if case.watched is not None:
        out = fixtures.work / "cases" / f"{number:02d}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(fixtures.earlier[case.watched], out, symlinks=True)
        if case.read_only:
            _set_writable(out, False)
    arguments = [argument.replace("{out}", str(out)) for argument in case.arguments]
    before = tree_snapshot(out) if out is not None else {}
    targets_before = tree_snapshot(fixtures.targets)
    result = run_cli(arguments, timeout=COMMAND_TIMEOUT_SECONDS, preexec=case.preexec)
    problems = []
    wrong = one_line_error_problem(result)
    if wrong:
        problems.append(wrong)
    else:
        line = error_line(result)
        mentions = [mention.replace("{out}", str(out)) for mention in case.mentions]
        if not any(mention in line for mention in mentions):
            problems.append(f"error does not name {' or '.join(mentions)}: {line!r}")
    if out is not None:
        _set_writable(out, True)
        changes = snapshot_changes(before, tree_snapshot(out))
        kept = [change for change in changes if not (case.may_add and change.startswith("added"))]
        if kept:
            problems.append(f"earlier outputs touched: {kept[:4]}")
        if temporary_files(out):
            problems.append(f"temp files left: {[path.name for path in temporary_files(out)]}")
    if tree_snapshot(fixtures.targets) != targets_before:
        problems.append("the targets folder it read changed")
    if fixtures.a_file.read_text() != "a file where a folder should be\n":
        problems.append("the file passed as --out was overwritten")
    return TrialResult(case.name, not problems, "; ".join(problems), {"error": error_line(result),
                                                                       "exit": result.returncode})


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755 if writable else 0o555)


def run(work: Path, only: Collection[str] | None = None, parallel: int = 2) -> KindReport:
    """Every case, or those named in `only`."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    fixtures = build_fixtures(work)
    permissions, binds, permission_note = permission_preexec()
    cases = [*extract_cases(fixtures, permissions), *distill_cases(fixtures, permissions), *eval_cases(fixtures),
             *other_cases(fixtures)]
    if only is not None:
        unknown = set(only) - {case.name for case in cases}
        if unknown:
            raise ValueError(f"no such bad-CLI cases: {sorted(unknown)}")
        cases = [case for case in cases if case.name in only]
    if not binds:
        cases = [case for case in cases if not case.read_only]
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(lambda pair: run_case(pair[1], fixtures, pair[0]), enumerate(cases)))
    notes = f"{len(cases)} cases; read-only folders: {permission_note}"
    return KindReport("bad CLI input", results, notes, time.monotonic() - started)
