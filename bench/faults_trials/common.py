"""What every kind of fault trial needs: running the real CLI, judging its error output, hashing trees,
making tiny videos, and the records a trial hands back.

The CLI runs as a subprocess (`python -m distinit.pipeline`), as a user would run it, so a kill is a real
SIGKILL and an error is what a terminal would show. Subprocesses get one torch thread: the runs are
tiny, and on a busy 2-core machine torch's spinning threads made a 4 s extraction take 11 s (measured).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.video.binary import ffmpeg_binary

REPOSITORY = Path(__file__).resolve().parents[2]
# Names the project's writers give temporary files (pipeline/atomic.py, pipeline/shards/writer.py).
TEMPORARY_SUFFIX = ".tmp"
TIMED_OUT = 124  # what timeout(1) reports


@dataclasses.dataclass
class TrialResult:
    """One trial: what was tried, whether every check held, and why not (or what was seen)."""

    name: str
    passed: bool
    detail: str = ""
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class KindReport:
    """All trials of one kind, plus a note for the table (e.g. where kills landed)."""

    kind: str
    trials: list[TrialResult]
    notes: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(trial.passed for trial in self.trials)

    def failures(self) -> list[str]:
        return [f"{trial.name}: {trial.detail}" for trial in self.trials if not trial.passed]


@dataclasses.dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def subprocess_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    # No .pyc writes: under RLIMIT_FSIZE CPython writes a truncated .pyc (it does not check for a short
    # write) that then breaks every later import of that module ("marshal data too short"); seen here.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                   "PYTHONDONTWRITEBYTECODE": "1"}
    environment.update(extra or {})
    return environment


def distinit_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "distinit.pipeline", *[str(argument) for argument in arguments]]


def run_cli(
    arguments: Sequence[str], *, cwd: Path | None = None, timeout: float = 300.0,
    environment: dict[str, str] | None = None, preexec: Callable[[], None] | None = None,
) -> CommandResult:
    """Run `distinit ARGUMENTS` to the end and capture its output. A run past `timeout` is killed and
    reported as exit status 124 (a hang is a finding, not a reason to stop the other trials)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            distinit_command(*arguments), cwd=cwd, capture_output=True, text=True, timeout=timeout,
            env=environment or subprocess_environment(), preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired as expired:
        stdout, stderr = (_text(output) for output in (expired.stdout, expired.stderr))
        return CommandResult(TIMED_OUT, stdout, f"{stderr}\n(hung: killed after {timeout:g} s)", time.monotonic() - started)
    return CommandResult(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def _text(output: bytes | str | None) -> str:
    """TimeoutExpired carries bytes whatever `text=` said."""
    if output is None:
        return ""
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output


def one_line_error_problem(result: CommandResult) -> str | None:
    """None when the command failed the way a user should see it: non-zero exit, stderr's last
    non-empty line starting with `Error:`, and no Python traceback anywhere; else what is wrong."""
    if result.returncode == 0:
        return "exit status 0, expected an error"
    if result.returncode < 0:
        return f"killed by signal {-result.returncode}"
    output = result.stdout + result.stderr
    if "Traceback (most recent call last)" in output:
        return "Python traceback: " + last_lines(result.stderr, 3)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if not lines or not lines[-1].startswith("Error:"):
        return "last stderr line is not 'Error: ...': " + last_lines(result.stderr, 2)
    return None


def last_lines(text: str, count: int) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "(empty)"


def error_line(result: CommandResult) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def tree_snapshot(root: Path, skip: Callable[[Path], bool] | None = None) -> dict[str, str]:
    """relative path -> what is there ('dir', 'link:<target>', 'fifo', or the file's sha256 and mode).
    An absent root is an empty snapshot."""
    snapshot: dict[str, str] = {}
    if not root.exists():
        return snapshot
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in [*subfolders, *sorted(files)]:
            path = Path(folder) / name
            if skip is not None and skip(path):
                continue
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                snapshot[relative] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                snapshot[relative] = "dir"
            elif path.is_file():
                mode = oct(path.stat().st_mode & 0o7777)
                snapshot[relative] = f"{sha256_file(path) if os.access(path, os.R_OK) else 'unreadable'} {mode}"
            else:
                snapshot[relative] = "special"
    return snapshot


def snapshot_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Human-readable differences between two snapshots: added, removed, changed paths."""
    changes = [f"added {path}" for path in sorted(set(after) - set(before))]
    changes += [f"removed {path}" for path in sorted(set(before) - set(after))]
    changes += [f"changed {path}" for path in sorted(set(before) & set(after)) if before[path] != after[path]]
    return changes


def temporary_files(root: Path) -> list[Path]:
    """Files a writer left behind: the project's temp names (`.<name>.<...>.tmp`)."""
    if not root.exists():
        return []
    return sorted(path for path in root.rglob("*") if path.name.endswith(TEMPORARY_SUFFIX))


def ffmpeg() -> str:
    return ffmpeg_binary()


def make_video(path: Path, *, pattern: str = "testsrc", size: str = "48x32", rate: int = 10, seconds: float = 2.0,
               hue: int = 0, extra: Sequence[str] = ()) -> Path:
    """A real tiny H.264 clip (lavfi test pattern), deterministic for the same arguments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate={rate}", "-t", str(seconds),
        "-vf", f"hue=h={hue}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "5", "-threads", "1", *extra, str(path),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return path


def make_video_folder(folder: Path, count: int, seconds: float = 2.0) -> Path:
    patterns = ("testsrc", "testsrc2", "smptebars", "rgbtestsrc", "smptehdbars", "yuvtestsrc")
    for number in range(count):
        make_video(folder / f"video_{number:02d}.mp4", pattern=patterns[number % len(patterns)], hue=number * 33,
                   seconds=seconds)
    return folder


# ---------------------------------------------------------------------------------------------- processes
def live_group_members(group_id: int) -> list[str]:
    """Processes of process group `group_id` still running (zombies excluded), as 'pid name'. Linux /proc;
    elsewhere [] (the check is then skipped)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        state, process_group = fields[0], int(fields[2])
        if process_group == group_id and state not in ("Z", "X"):
            members.append(f"{entry.name} {name}")
    return members


def wait_for_group_to_exit(group_id: int, timeout: float) -> list[str]:
    """Wait until no process of the group runs; kill and return whatever is still there after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        members = live_group_members(group_id)
        if not members or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if members:
        try:
            os.killpg(group_id, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return members


def start_cli(arguments: Sequence[str], *, log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start `distinit ARGUMENTS` in its own process group, output to `log_path`."""
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(
            distinit_command(*arguments), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            env=subprocess_environment(), start_new_session=True,
        )
    finally:
        log.close()  # the child holds its own copy


# ---------------------------------------------------------------------------------------------- users
_PR_CAPBSET_DROP = 24
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: what lets root read a mode-000 file or write a read-only folder.
_PERMISSION_OVERRIDE_CAPABILITIES = (1, 2)


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def drop_permission_override() -> None:
    """preexec_fn: take from a root child the capabilities that bypass file modes (from its bounding set,
    so the exec'd program never gets them), so a mode-000 file or a 0555 folder binds it as they bind a
    user. The child stays root otherwise: the interpreter under /root stays reachable."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in _PERMISSION_OVERRIDE_CAPABILITIES:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def permission_preexec() -> tuple[Callable[[], None] | None, bool, str]:
    """(preexec_fn to give a child, whether file modes bind it, a note saying how or why not)."""
    if not running_as_root():
        return None, True, "not root: file modes bind the CLI as they are"
    probe_folder = Path(tempfile.mkdtemp(prefix="distinit-permissions-"))
    try:
        probe_folder.chmod(0o555)
        done = subprocess.run(["touch", str(probe_folder / "x")], capture_output=True, timeout=30,
                              preexec_fn=drop_permission_override)
        enforced = done.returncode != 0
    except (OSError, subprocess.SubprocessError):
        enforced = False
    finally:
        probe_folder.chmod(0o755)
        for child in probe_folder.iterdir():
            child.unlink()
        probe_folder.rmdir()
    if enforced:
        return drop_permission_override, True, "root: CLI run without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH so file modes bind"
    return None, False, "root and CAP_DAC_OVERRIDE cannot be dropped: permission checks skipped (root reads and writes anything)"
