"""Does distillation carry what the teachers know? A diagnostic on the demo's held-out labeled videos.

The demo's labeled classes are camera motions: no single frame, hence no image teacher, can tell
them apart. This script relabels the same held-out videos by what the ImageNet teacher *can* see:
the photo under the moving camera (chelsea the cat, coffee, gravel, grass; none of them is in the
unlabeled pool). It lays them out as an HMDB-51 tree (symlinks + split files, 30% test per class,
seeded) and runs `compare` on it, by default as a linear probe, so only the frozen trunk's features
are scored. A random trunk (scratch) against the distilled one then shows whether stage two
transferred the teachers' knowledge at all, separately from whether that knowledge fits the task.

    python bench/appearance_probe.py --inits scratch,runs/demo/distill --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distinit.evaluate.compare import compare, ordered_inits  # noqa: E402
from distinit.evaluate.config import EvalConfig  # noqa: E402
from distinit.pipeline.config import load_config  # noqa: E402

SPLITS_FOLDER = "testTrainMulti_7030_splits"


def build_appearance_tree(actions_dir: Path, out: Path, test_fraction: float = 0.3, seed: int = 0) -> Path:
    """`out/videos/<photo>/<video>.avi` (symlinks) + HMDB-51 split files; returns the video root."""
    by_photo: dict[str, list[Path]] = defaultdict(list)
    for video in sorted((actions_dir / "videos").glob("*/*.avi")):
        by_photo[video.name.split("_", 1)[0]].append(video)
    if len(by_photo) < 2:
        raise SystemExit(f"{actions_dir}: expected demo action videos named <photo>_<class>_<index>.avi")
    videos_root, splits_dir = out / "videos", out / SPLITS_FOLDER
    splits_dir.mkdir(parents=True, exist_ok=True)
    for class_index, (photo, videos) in enumerate(sorted(by_photo.items())):
        (videos_root / photo).mkdir(parents=True, exist_ok=True)
        for video in videos:
            link = videos_root / photo / video.name
            if not link.exists():
                link.symlink_to(video.resolve())
        test_count = max(1, round(test_fraction * len(videos)))
        for split in (1, 2, 3):
            order = np.random.default_rng([seed, class_index, split]).permutation(len(videos))
            test = {videos[index].name for index in order[:test_count]}
            lines = "".join(f"{video.name} {2 if video.name in test else 1} \n" for video in videos)
            (splits_dir / f"{photo}_test_split{split}.txt").write_text(lines)
    return videos_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="data/demo")
    parser.add_argument("--config", default="configs/demo-eval.yaml")
    parser.add_argument("--inits", default="scratch,runs/demo/distill")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--splits", default="1")
    parser.add_argument("--finetune", action="store_true", help="Finetune the trunk instead of a linear probe.")
    parser.add_argument("--out", default="results/demo-appearance")
    parser.add_argument("--json", default="bench/results/appearance_probe.json")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = Path(arguments.out)
    videos_root = build_appearance_tree(Path(arguments.demo_dir) / "actions", out / "labeled")
    config = load_config(EvalConfig, arguments.config, {
        "root": str(videos_root), "splits_dir": str(videos_root.parent / SPLITS_FOLDER),
        "splits": [int(split) for split in arguments.splits.split(",")],
        "seeds": [int(seed) for seed in arguments.seeds.split(",")],
        "linear_probe": not arguments.finetune,
    })
    inits = [init for init in arguments.inits.split(",") if init]
    comparison = compare(config, inits, out / "compare")
    print(comparison.table)
    record = {
        "what": "demo action videos relabeled by their photo (appearance), " +
                ("finetuned" if arguments.finetune else "linear probe on the frozen trunk"),
        "config": {key: value for key, value in dataclasses.asdict(config).items() if key in
                   ("splits", "seeds", "epochs", "lr", "frames", "crop", "linear_probe")},
        "classes": comparison.results[0].class_names,
        # Rows of several distilled runs share a label but for a "#n": say what each was initialised from.
        "inits": dict(zip(comparison.labels, ordered_inits(inits))),
        "rows": {label: result.summary["over_runs"] for label, result in zip(comparison.labels, comparison.results)},
    }
    Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.json).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
