"""The demo comparison over many seeds, with the shuffled-target control beside DistInit.

Three seeds on the demo's 30 test videos cannot settle a difference (one video is 3.3 points, seeds
spread by tens of points). This script runs the same finetuning schedule as `make demo`
(configs/demo-eval.yaml, split 1) for every seed asked, on three inits:
- scratch (the reference of every paired difference);
- DistInit: the student `make demo` distilled (runs/demo/distill);
- the control: a student distilled with the same config on targets shuffled across videos
  (`shuffle_targets: true`; same marginal distribution of targets, no correspondence to the clip),
  distilled here first when it does not exist yet.
It writes the paired bootstrap differences (evaluate.statistics) of
each against scratch, and of DistInit against the control, to one JSON file (splits fixed; each replicate
redraws the seeds and, once per split, the test videos shared by its seeds).

    make demo                                   # the targets and runs/demo/distill
    python bench/demo_seeds.py --seeds 0-9      # ~1.5 min per (init, seed) on 2 cores; finished runs are reused
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.config import DistillConfig  # noqa: E402
from distill.train import train  # noqa: E402
from evaluate.compare import compare  # noqa: E402
from evaluate.config import EvalConfig  # noqa: E402
from evaluate.statistics import difference_against  # noqa: E402
from pipeline.config import load_config  # noqa: E402


def seed_list(text: str) -> list[int]:
    """"0-9" or "0,1,2" -> a list of seeds."""
    if "-" in text:
        first, last = (int(part) for part in text.split("-"))
        return list(range(first, last + 1))
    return [int(part) for part in text.split(",") if part]


def distill_control(config_path: str, targets: str, out: str) -> str:
    """The shuffled-target student: distilled with the demo config and shuffle_targets on, unless present."""
    if not (Path(out) / "latest").is_file():
        config = load_config(DistillConfig, config_path, {"targets": targets, "out": out, "shuffle_targets": True})
        started = time.monotonic()
        train(config)
        logging.info("distilled the control in %.0f s", time.monotonic() - started)
    return out


def video_top1_per_seed(result) -> dict[str, float]:
    return {str(run.seed): 100 * run.video_top1 for run in sorted(result.runs, key=lambda run: run.seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--distill-config", default="configs/demo-distill.yaml")
    parser.add_argument("--eval-config", default="configs/demo-eval.yaml")
    parser.add_argument("--targets", default="targets/demo")
    parser.add_argument("--distill-out", default="runs/demo/distill")
    parser.add_argument("--control-out", default="runs/demo/distill-shuffled")
    parser.add_argument("--root", default="data/demo/actions/videos")
    parser.add_argument("--out", default="results/demo-seeds")
    parser.add_argument("--json", default="bench/results/demo_seeds.json")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    started = time.monotonic()
    control = distill_control(arguments.distill_config, arguments.targets, arguments.control_out)
    seeds = seed_list(arguments.seeds)
    config = load_config(EvalConfig, arguments.eval_config, {"root": arguments.root, "seeds": seeds})
    comparison = compare(config, ["scratch", arguments.distill_out, control], arguments.out)
    print(comparison.table)
    scratch, distinit, shuffled = comparison.results
    versus_control = difference_against(distinit.runs, shuffled.runs)
    record = {
        "what": "demo comparison (split 1, configs/demo-eval.yaml) over many seeds, with the shuffled-target control",
        "seeds": seeds,
        "epochs": config.epochs,
        "test_videos": scratch.runs[0].test_videos,
        "rows": {
            label: {"video_top1_mean_std": result.summary["over_runs"]["video_top1"],
                    "video_top1_per_seed": video_top1_per_seed(result)}
            for label, result in zip(comparison.labels, comparison.results)
        },
        "paired_vs_scratch": {
            label: difference.to_dict() if difference is not None else None
            for label, difference in zip(comparison.labels[1:], comparison.differences[1:])
        },
        "paired_distinit_vs_control": versus_control.to_dict() if versus_control is not None else None,
        "seconds": time.monotonic() - started,
    }
    Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.json).write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
