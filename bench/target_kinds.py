"""Which targets should a student learn from a classifier teacher: its logits, its pooled features, or both?

On the demo, distil the tiny student three times from EfficientNet-Lite0 (`outputs=logits`, `embedding`,
`logits,embedding`; `make demo` with its own STAMPS/RESULTS/DISTILL_OUT each, see docs/benchmarks.md), then run this:
it finetunes every run on the demo's camera-motion classes with the demo's eval config (the runs `make demo`
already finished are reused from results/eval/), and writes each row's video top-1 with the paired
difference against scratch and against the logits run (same seed, same test videos; bootstrap interval,
evaluate.statistics). bench/appearance_probe.py gives the linear-probe view of the same runs.

    python bench/target_kinds.py --runs logits=runs/demo/distill-logits,embedding=runs/demo/distill-embedding,both=runs/demo/distill-both
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distinit.evaluate.compare import compare  # noqa: E402
from distinit.evaluate.config import EvalConfig  # noqa: E402
from distinit.evaluate.statistics import difference_against  # noqa: E402
from distinit.pipeline.config import load_config  # noqa: E402


def summary(difference) -> dict[str, float] | None:
    if difference is None:
        return None
    return {"mean": difference.mean, "low": difference.low, "high": difference.high, "confidence": difference.confidence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="name=run folder, comma-separated; the first is the reference")
    parser.add_argument("--config", default="configs/demo-eval.yaml")
    parser.add_argument("--root", default="data/demo/actions/videos")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="results/demo-target-kinds")
    parser.add_argument("--json", default="bench/results/target_kinds.json")
    arguments = parser.parse_args()
    runs = dict(pair.split("=", 1) for pair in arguments.runs.split(","))
    config = load_config(EvalConfig, arguments.config, {
        "root": arguments.root, "seeds": [int(seed) for seed in arguments.seeds.split(",")]})
    comparison = compare(config, ["scratch", *runs.values()], Path(arguments.out))
    print(comparison.table)
    scratch, *distilled = comparison.results
    reference_name = next(iter(runs))
    reference = distilled[0]
    rows = {"scratch": {"video_top1": scratch.summary["over_runs"]["video_top1"]}}
    for name, result, versus_scratch in zip(runs, distilled, comparison.differences[1:]):
        rows[name] = {
            "run": runs[name],
            "video_top1": result.summary["over_runs"]["video_top1"],
            "difference_vs_scratch": summary(versus_scratch),
            f"difference_vs_{reference_name}": None if result is reference else summary(
                difference_against(result.runs, reference.runs)),
        }
        line = rows[name][f"difference_vs_{reference_name}"]
        if line:
            print(f"{name} vs {reference_name}: {line['mean']:+.1f} [{line['low']:+.1f}, {line['high']:+.1f}] points")
    record = {"what": "demo camera-motion classes, finetuned; video top-1 in [0, 1], differences in points",
              "seeds": config.seeds, "splits": config.splits, "rows": rows}
    Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.json).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
