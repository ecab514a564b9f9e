"""Trial kind 6: each stage writes only under its --out.

extract, distill and eval run in a sandbox: an empty working folder, HOME and TMPDIR pointing at empty
folders of their own, inputs in their own folders. Two independent checks per stage:
  - trees: the working folder, HOME, TMPDIR, the inputs (videos, labeled set, targets a later stage
    reads, an earlier stage's output) and the other stages' outputs are hashed before and after; only
    the stage's own --out may change (TMPDIR must be left as it was: scratch files are removed);
  - syscalls (where strace runs): every successful open-for-writing, create, mkdir, rename, unlink,
    link, truncate or chmod by the CLI and every child (ffmpeg, git, decode workers) must name a path
    under --out, under TMPDIR (multiprocessing's sockets, tempfile's probe), or /dev, /proc. This
    catches writes the trees do not cover: the repository, caches under /root or /usr, /tmp outside
    TMPDIR.
Declared cache: `import torchvision` makes torch create an empty `$TMPDIR/torchinductor_<user>` (its
compile cache folder); it may appear.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.faults_trials.common import (
    TIMED_OUT, KindReport, TrialResult, distinit_command, ffmpeg, make_video_folder, snapshot_changes,
    subprocess_environment, tree_snapshot,
)

RUN_TIMEOUT_SECONDS = 300.0
WRITE_SYSCALLS = ("open", "openat", "openat2", "creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2",
                  "unlink", "unlinkat", "rmdir", "link", "linkat", "symlink", "symlinkat", "truncate", "chmod",
                  "fchmodat", "utimensat")
ALWAYS_ALLOWED = ("/dev/", "/proc/")
DECLARED_CACHE_PREFIX = "torchinductor_"
# One trace file per process (strace -ff), so no call is split into "unfinished" / "resumed" halves.
_CALL = re.compile(r"^(?P<name>\w+)\((?P<arguments>.*)\) += (?P<result>-?\d+)")
# A path argument, with the folder its directory descriptor stands for (strace -y) when there is one.
_QUOTED = re.compile(r'(?:(\d+|AT_FDCWD)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")


def strace_available() -> bool:
    if shutil.which("strace") is None:
        return False
    try:
        return subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat", "-o", os.devnull, "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def written_paths(trace_text: str, cwd: Path) -> set[tuple[str, str]]:
    """(syscall, absolute path) of every change a traced process made, from its `strace -ff -y` output."""
    paths: set[tuple[str, str]] = set()
    for line in trace_text.splitlines():
        call = _CALL.match(line)
        if call is None or int(call["result"]) < 0:
            continue
        name, arguments = call["name"], call["arguments"]
        if name in ("open", "openat", "openat2") and not any(flag in arguments for flag in _WRITE_FLAGS):
            continue
        for directory_fd, directory, raw in _QUOTED.findall(arguments):
            path = raw.encode("utf-8").decode("unicode_escape")
            if not path.startswith("/"):
                path = os.path.join(directory if directory_fd else str(cwd), path)
            paths.add((name, os.path.normpath(path)))
    return paths


def allowed(call: str, path: str, out: Path, scratch: Path) -> bool:
    """Under --out or TMPDIR, or creating --out's parents, or a device / proc file."""
    for folder in (out, scratch):
        if path == str(folder) or path.startswith(str(folder) + os.sep):
            return True
    if path.startswith(ALWAYS_ALLOWED):
        return True
    return call in ("mkdir", "mkdirat") and path in {str(parent) for parent in out.parents}


def outside_out(out: Path, scratch: Path):
    """tree_snapshot's skip: --out itself, what is under it, its parents (created with it), and the
    declared cache."""
    def skip(path: Path) -> bool:
        if path.parent == scratch and path.name.startswith(DECLARED_CACHE_PREFIX):
            return True
        return path == out or out in path.parents or path in out.parents

    return skip


def traced_run(arguments: list[str], cwd: Path, environment: dict[str, str], trace: Path | None) -> subprocess.CompletedProcess:
    command = distinit_command(*arguments)
    if trace is not None:
        # "?name": a syscall this architecture lacks (aarch64 has no open, mkdir, rename) is no error.
        calls = ",".join("?" + name for name in WRITE_SYSCALLS)
        command = ["strace", "-ff", "-qq", "-y", "--seccomp-bpf", "-e", f"trace={calls}", "-o", str(trace), *command]
    try:
        return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, TIMED_OUT, "", f"hung: killed after {RUN_TIMEOUT_SECONDS:g} s")


def make_labeled_set(base: Path) -> Path:
    """A 2-class HMDB-51-shaped set of real tiny AVIs (eval decodes them)."""
    root = base / "videos"
    splits = base / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True, exist_ok=True)
    for label, class_name in enumerate(("pan", "zoom")):
        names = []
        for number in range(3):
            name = f"{class_name}_{number}.avi"
            (root / class_name).mkdir(parents=True, exist_ok=True)
            subprocess.run([ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=48x32:rate=10", "-t", "1",
                            "-vf", f"hue=h={label * 90 + number * 20}", "-c:v", "mpeg4", "-q:v", "3",
                            str(root / class_name / name)], check=True, capture_output=True, timeout=120)
            names.append(name)
        for split in (1, 2, 3):
            lines = [f"{names[0]} 1 ", f"{names[1]} 1 ", f"{names[2]} 2 "]
            (splits / f"{class_name}_test_split{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def stage_commands(sandbox: Path) -> list[tuple[str, list[str], Path]]:
    """(stage, arguments, its --out), in pipeline order."""
    out = sandbox / "out"
    extract = ["extract", "--data", "folder", "--root", str(sandbox / "videos"), "--out", str(out / "targets"),
               "--shard-count", "2", "--workers", "1", "--max-frames-per-video", "2", "--no-progress"]
    distill = ["distill", "--targets", str(out / "targets" / "folder"), "--width", "tiny", "--frames", "2",
               "--short-side", "32", "--crop", "32", "--epochs", "1", "--batch-size", "2", "--workers", "1",
               "--device", "cpu", "--out", str(out / "runs"), "--no-progress"]
    evaluate = ["eval", "--data", "hmdb51", "--root", str(sandbox / "labeled" / "videos"), "--splits", "1",
                "--init", str(out / "runs"), "--frames", "2", "--short-side", "32", "--crop", "32", "--epochs", "1",
                "--batch-size", "3", "--test-clips", "1", "--workers", "1", "--device", "cpu", "--out",
                str(out / "eval"), "--no-progress"]
    return [("extract", extract, out / "targets"), ("distill", distill, out / "runs"), ("eval", evaluate, out / "eval")]


def run(work: Path) -> KindReport:
    started = time.monotonic()
    sandbox = work / "sandbox"
    shutil.rmtree(sandbox, ignore_errors=True)
    for name in ("cwd", "home", "tmp"):
        (sandbox / name).mkdir(parents=True)
    make_video_folder(sandbox / "videos", 4, seconds=1.0)
    make_labeled_set(sandbox / "labeled")
    environment = subprocess_environment({"HOME": str(sandbox / "home"), "TMPDIR": str(sandbox / "tmp")})
    for variable in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        environment.pop(variable, None)
    trace_on = strace_available()
    scratch = sandbox / "tmp"
    results = []
    for stage, arguments, out in stage_commands(sandbox):
        before = tree_snapshot(sandbox, skip=outside_out(out, scratch))
        trace = work / f"{stage}.strace" if trace_on else None
        done = traced_run(arguments, sandbox / "cwd", environment, trace)
        problems = [] if done.returncode == 0 else [f"exit {done.returncode}: {done.stderr.strip()[-300:]}"]
        changes = snapshot_changes(before, tree_snapshot(sandbox, skip=outside_out(out, scratch)))
        if changes:
            problems.append(f"changed outside --out: {changes[:5]}")
        outside = []
        if trace is not None:
            written = set().union(*(written_paths(part.read_text(errors="replace"), sandbox / "cwd")
                                    for part in trace.parent.glob(trace.name + ".*")))
            outside = sorted({path for call, path in written if not allowed(call, path, out, scratch)})
            if outside:
                problems.append(f"{len(outside)} paths written outside --out (strace): {outside[:5]}")
        results.append(TrialResult(f"{stage} writes only under its --out", not problems, "; ".join(problems),
                                   {"outside": outside}))
    notes = "trees: cwd, HOME, TMPDIR, inputs, other stages' outputs; " + (
        "syscalls: strace -ff of the CLI and every child" if trace_on else "no strace here: syscall check skipped")
    return KindReport("writes outside --out", results, notes, time.monotonic() - started)
