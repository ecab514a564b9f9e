"""Reliability trials (issue 7) with the issue's full counts; prints the table and writes JSON:

    .venv/bin/python bench/faults.py [--kinds kill-extract,corrupt] [--seed 0] [--json bench/results/faults.json]

Kinds: kill-extract (20 SIGKILLs at random moments + the planted leftovers of a kill inside a small write),
kill-distill (5 SIGKILLs at random steps + a kill just after an epoch's log record), corrupt (one trial per
file of a mixed good/bad folder + the run as a whole), broken-shards (20 random byte flips + 4 fixed
damages), bad-cli (every case), write-scope (extract, distill, eval). The trial code is in
bench/faults_trials/; tests/reliability/ runs the same code with smaller counts. Takes ~10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The repository root goes first: the script folder (bench/) is on the path too, and bench/extract.py and
# bench/distill.py would shadow the `extract` and `distill` packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.faults_trials import bad_cli, broken_shards, corrupt_inputs, kill_distill, kill_extract, write_scope  # noqa: E402
from bench.faults_trials.common import KindReport  # noqa: E402

KINDS = {
    "kill-extract": lambda work, seed: kill_extract.run(work, trials=20, seed=seed, workers_choices=(0, 1)),
    "kill-distill": lambda work, seed: kill_distill.run(work, trials=5, seed=seed, workers_choices=(0, 1)),
    "corrupt": lambda work, seed: corrupt_inputs.run(work),
    "broken-shards": lambda work, seed: broken_shards.run(work, flips=20, seed=seed),
    "bad-cli": lambda work, seed: bad_cli.run(work),
    "write-scope": lambda work, seed: write_scope.run(work),
}


def table(reports: list[KindReport]) -> str:
    lines = ["| kind | trials run | passed | notes |", "| --- | --- | --- | --- |"]
    for report in reports:
        lines.append(f"| {report.kind} | {len(report.trials)} | {report.passed} | {report.notes} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "faults.json"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temp folder, deleted after)")
    arguments = parser.parse_args()
    kinds = [kind.strip() for kind in arguments.kinds.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    work = Path(arguments.work) if arguments.work else Path(tempfile.mkdtemp(prefix="distinit-faults-"))
    started = time.monotonic()
    reports = []
    try:
        for kind in kinds:
            print(f"running {kind} ...", flush=True)
            report = KINDS[kind](work / kind, arguments.seed)
            reports.append(report)
            print(f"  {report.passed}/{len(report.trials)} passed in {report.seconds:.0f} s", flush=True)
            for failure in report.failures():
                print(f"  FAILED {failure}", flush=True)
    finally:
        if arguments.work is None:
            for path in work.rglob("*"):  # the corrupt-input folder holds a mode-000 file
                if path.is_file() and not path.is_symlink():
                    path.chmod(0o644)
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(reports))
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seed": arguments.seed,
        "seconds": round(time.monotonic() - started, 1),
        "kinds": [{**{key: value for key, value in dataclasses.asdict(report).items() if key != "trials"},
                   "run": len(report.trials), "passed": report.passed,
                   "trials": [dataclasses.asdict(trial) for trial in report.trials]} for report in reports],
    }
    Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.json).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\n{arguments.json}")
    return 0 if all(report.passed == len(report.trials) for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
