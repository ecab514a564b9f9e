"""A real one-node SLURM cluster on this machine for the tests: munged, slurmctld and slurmd run as root with all
their state (slurm.conf, munge key and socket, spool, state, logs) in one temp folder, on free ports, so nothing
under /etc/slurm or /var/spool is touched and a second or a crashed cluster does not collide.

Every client (sbatch, srun, scontrol, ...) and the code under test must run with `cluster.env`, which points
SLURM_CONF at this cluster. `python tests/slurm_cluster.py` starts and stops one and says whether it could."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "distinit-slurm-"
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "unmunge", "sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}
# Enough task slots for a 3-task array or two 2-task jobs side by side on a 2-CPU runner (task/none binds nothing).
MIN_CPUS = 4

# Timing choices, measured on slurm-wlm 22.05.8: a requeued job waits cred_expire + 1 s before it may start again
# (the default 120 s; below 5 slurmctld logs "cred_expire=1 invalid" and keeps 120), and a job whose begin time
# passes starts at the next main scheduling pass (sched_interval, default 60 s). batch_sched_delay=0 lets a job
# freed by another's end start within a second instead of about three.
CONFIG = """\
ClusterName=distinit
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
MailProg=/bin/true
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 \
RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterUnavailable(RuntimeError):
    """The cluster cannot start here; the message is one line that says why."""


def find_program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]  # all open at once, so the ports differ
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


def last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"(no {path.name})"
    if not lines:
        return f"({path.name} is empty)"
    # "fatal: Unable to process configuration file" alone does not say which line: the error before it does
    shown = lines[-2:] if "fatal" in lines[-1] and len(lines) > 1 else lines[-1:]
    return f"{path.name}: {' | '.join(shown)}"


def process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_processes_of(conf: Path) -> None:
    """Job steps, batch shells and their children carry the cluster's SLURM_CONF; none may outlive it."""
    needle = b"SLURM_CONF=" + bytes(conf)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def reap_stale_clusters(parent: Path) -> None:
    """A cluster whose pytest died without stopping it (SIGKILL, power cut): stop its processes, remove its folder."""
    for root in parent.glob(PREFIX + "*"):
        try:
            pid, started = (root / "owner").read_text().split()
        except (OSError, ValueError):
            continue
        if process_start_time(int(pid)) == started:
            continue  # another live session's cluster
        kill_processes_of(root / "slurm.conf")  # the daemons too: they were started with its SLURM_CONF
        shutil.rmtree(root, ignore_errors=True)


class SlurmCluster:
    """One controller and one node on localhost; `start()` returns once the node is idle."""

    def __init__(self, parent: str | None = None):
        self.parent = Path(parent or tempfile.gettempdir())
        self.root: Path | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {}

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def logs(self) -> dict[str, Path]:
        return {daemon: self.root / "log" / f"{daemon}.log" for daemon in DAEMONS}

    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise ClusterUnavailable("not root (slurmd must run as root to start jobs)")
        missing = [name for name in DAEMONS + CLIENTS if find_program(name) is None]
        if missing:
            raise ClusterUnavailable(f"missing {', '.join(missing)} (apt-get install slurm-wlm munge)")
        reap_stale_clusters(self.parent)
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.parent))
        self.root.chmod(0o755)  # munged refuses a socket in a folder others cannot enter
        (self.root / "owner").write_text(f"{os.getpid()} {process_start_time(os.getpid())}\n")
        for folder in ("run", "log", "state", "spool"):
            (self.root / folder).mkdir(mode=0o755)
        (self.root / "plugstack.conf").write_text("")  # not /etc/slurm's
        self.env = self._client_environment()
        atexit.register(self.stop)
        try:
            self._start_munge()
            self._write_config()
            self._launch("slurmctld", ["-D", "-f", str(self.conf)])
            self._launch("slurmd", ["-D", "-f", str(self.conf)])
            self._wait_until_idle(timeout)
        except ClusterUnavailable as error:
            self.stop()  # the folder stays for its logs; the next start removes it
            raise ClusterUnavailable(f"{error} (logs in {self.root / 'log'})") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _client_environment(self) -> dict[str, str]:
        # A SLURM_JOB_ID inherited from an outer allocation (pytest run inside a job) would send srun there.
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join(filter(None, [env.get("PATH"), *SBIN_DIRS]))
        return env

    def _launch(self, daemon: str, arguments: list[str]) -> None:
        log = open(self.root / "log" / f"{daemon}.out", "ab")
        self.processes[daemon] = subprocess.Popen(
            [find_program(daemon), *arguments], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)  # Ctrl-C in pytest reaches stop(), not the daemons
        log.close()

    def _start_munge(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        socket_path = self.root / "run" / "munge.socket"
        self._launch("munged", [
            "-F", f"--socket={socket_path}", f"--key-file={key}", f"--log-file={self.logs['munged']}",
            f"--seed-file={self.root / 'state/munge.seed'}", f"--pid-file={self.root / 'run/munged.pid'}"])
        deadline = time.monotonic() + 10
        while True:
            probe = subprocess.run(f"munge -n -S {socket_path} | unmunge -S {socket_path}", shell=True,
                                   env=self.env, capture_output=True, text=True)
            if probe.returncode == 0:
                return
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"munged does not answer: {last_line(self.logs['munged'])}")
            time.sleep(0.1)

    def _write_config(self) -> None:
        detected = subprocess.run([find_program("slurmd"), "-C"], capture_output=True, text=True).stdout
        numbers = dict(re.findall(r"(CPUs|RealMemory)=(\d+)", detected))
        if "CPUs" not in numbers:
            raise ClusterUnavailable(f"`slurmd -C` printed no CPUs= line: {detected.strip()[:200]!r}")
        controller_port, node_port = free_ports(2)
        self.conf.write_text(CONFIG.format(
            host=socket.gethostname().split(".")[0], root=self.root, controller_port=controller_port,
            node_port=node_port, cpus=max(int(numbers["CPUs"]), MIN_CPUS), memory=numbers.get("RealMemory", 1)))

    def _check_alive(self, daemon: str) -> None:
        process = self.processes[daemon]
        if process.poll() is not None:
            # a daemon that dies before opening its log file says why on stderr (.out)
            log = max(self.logs[daemon], self.root / "log" / f"{daemon}.out",
                      key=lambda path: path.stat().st_mtime if path.exists() else 0)
            raise ClusterUnavailable(f"{daemon} exited with {process.returncode}: {last_line(log)}")

    def _wait_until_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for daemon in DAEMONS:
                self._check_alive(daemon)
            state = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise ClusterUnavailable(f"the node is not idle after {timeout:.0f} s (sinfo: {state or 'nothing'}); "
                                 f"{last_line(self.logs['slurmd'])}")

    def stop(self) -> None:
        """Cancel every job, stop the daemons and any process left with this cluster's SLURM_CONF."""
        if not self.processes:
            return
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            self.run(["scancel", "--user", "root"], check=False, timeout=10)
            deadline = time.monotonic() + 10  # KillWait (5 s) for a job ignoring SIGTERM, then SIGKILL
            while time.monotonic() < deadline and self.run(["squeue", "-h", "-t", "R,CG"], check=False,
                                                           timeout=10).stdout.strip():
                time.sleep(0.2)
        for daemon in reversed(DAEMONS):
            process = self.processes.pop(daemon, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        kill_processes_of(self.conf)
        atexit.unregister(self.stop)

    def remove(self) -> None:
        self.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def run(self, arguments: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A client command against this cluster; with check, a failure raises with its stderr."""
        try:
            result = subprocess.run([str(argument) for argument in arguments], env=self.env, capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            if check:
                raise AssertionError(f"{' '.join(map(str, arguments))} took over {timeout} s") from error
            return subprocess.CompletedProcess(arguments, 124, "", "timed out")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, arguments))} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def submit(self, *sbatch_arguments: str) -> str:
        """sbatch; returns the job id."""
        return self.run(["sbatch", "--parsable", *sbatch_arguments]).stdout.strip().split(";")[0]

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job` as one dict per record (an array gives one per task); [] once the job is purged."""
        result = self.run(["scontrol", "-o", "show", "job", job_id], check=False)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]

    def wait_for(self, job_id: str, states=("COMPLETED",), timeout: float = 60) -> str:
        """Poll until the job (every task of an array) is in one of `states` or has ended; returns its state
        (tasks' differing states joined by commas). A timeout raises with the job's record and the logs' ends."""
        wanted = set(states) | FINAL_STATES
        deadline = time.monotonic() + timeout
        while True:
            records = self.job_records(job_id)
            found = sorted({record.get("JobState", "?") for record in records})
            if records and set(found) <= wanted and (len(found) == 1 or set(found) <= FINAL_STATES):
                return ",".join(found)
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not in {sorted(states)} after {timeout} s: "
                                     f"{records}; {self.describe()}")
            time.sleep(0.1)

    def start_now(self, job_id: str) -> None:
        """Let a requeued job start at once instead of after cred_expire + 1 s (`scontrol update StartTime=now`)."""
        self.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"])

    def describe(self) -> str:
        return "; ".join(last_line(path) for path in self.logs.values()) + f"; logs in {self.root / 'log'}"


def main() -> int:
    """Start and stop a cluster; print one NOTE line saying whether the SLURM tests will run."""
    cluster = SlurmCluster()
    try:
        began = time.monotonic()
        cluster.start()
        version = cluster.run(["sinfo", "--version"]).stdout.strip()
        print(f"NOTE: {version} starts as a one-node cluster here in {time.monotonic() - began:.1f} s: "
              "the slurm tests RUN")
    except ClusterUnavailable as error:
        print(f"NOTE: no SLURM cluster can start here: {error}; the slurm tests SKIP")
        return 1
    cluster.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
