"""What the COCO teachers' test size costs on a CPU: seconds per 340x256 frame at several `min_size` values.

Detectron2 and torchvision test COCO detectors at a short side of 800; a Kinetics frame is ~256 px, so that
upscales it about 3x. This measures coco-keypoints and coco-objects on both backends (random weights, one
thread, batch 1) and writes bench/results/detection_sizes.json. CPU time (process_time), not wall time: one
thread's CPU time does not count waits for other processes on a shared machine.

    python bench/detection_sizes.py                       # every backend that imports, sizes 256,400,512,800
    python bench/detection_sizes.py --sizes 512,800 --frames 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distinit.extract.teachers import create_teacher  # noqa: E402
from distinit.extract.teachers.detections import detectron2_is_installed  # noqa: E402

FRAME_HEIGHT, FRAME_WIDTH = 256, 340


def seconds_per_frame(teacher_name: str, backend: str, min_size: int, frames: np.ndarray) -> dict[str, float]:
    teacher = create_teacher(teacher_name, backend=backend, weights="random", min_size=min_size, batch_size=1)
    teacher(frames[:1])  # warm-up: first-call allocations and kernel choices
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    teacher(frames)
    return {"cpu_seconds_per_frame": (time.process_time() - start_cpu) / len(frames),
            "wall_seconds_per_frame": (time.perf_counter() - start_wall) / len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,400,512,800")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--json", default="bench/results/detection_sizes.json")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    frames = np.random.default_rng(0).integers(0, 256, (arguments.frames, FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    backends = ["torchvision", *(["detectron2"] if detectron2_is_installed() else [])]
    rows = []
    for teacher_name in ("coco-keypoints", "coco-objects"):
        for backend in backends:
            for min_size in (int(size) for size in arguments.sizes.split(",")):
                row = {"teacher": teacher_name, "backend": backend, "min_size": min_size,
                       **seconds_per_frame(teacher_name, backend, min_size, frames)}
                print(f"{teacher_name:15s} {backend:12s} min_size {min_size:4d}: "
                      f"{row['cpu_seconds_per_frame']:.2f} CPU s/frame ({row['wall_seconds_per_frame']:.2f} wall)",
                      flush=True)
                rows.append(row)
    record = {"what": f"CPU seconds per {FRAME_WIDTH}x{FRAME_HEIGHT} frame, one thread, batch 1, random weights",
              "frames": arguments.frames, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "rows": rows}
    Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.json).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
