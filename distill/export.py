"""Export a distilled student for code outside distinit's trainer (`distinit export CKPT --out FILE`).

`export_trunk` writes two files:
- FILE: the trunk as a plain state_dict under the reference model's key names. For torchvision's video
  students (r2plus1d_18, r3d_18, mc3_18, s3d) the reference is torchvision's own model:
      model = torchvision.models.video.r2plus1d_18()
      result = model.load_state_dict(torch.load(FILE), strict=False)
  `result.missing_keys` is exactly the classifier (`fc.weight`, `fc.bias`; S3D: `classifier.1.*`), which
  DistInit does not train — replace it for your task — and `result.unexpected_keys` is empty. Every trunk
  weight is therefore loaded strictly; `load_exported_trunk` does this and checks it.
  `resnet18_3d` is not a torchvision video model (torchvision's r3d_18 has no stem max-pool and pads time
  with zeros: the same weights would compute something else), so its FILE is keyed as torchvision's 2D
  `resnet18` minus `fc.*`, with 5D conv weights, and loads into torchvision's resnet18 inflated by
  distinit — `distill.trunk_resnet18_3d.resnet18_3d_classifier()`, the same network with a fresh `fc` —
  again with exactly `fc.weight`, `fc.bias` missing (`load_exported_trunk(FILE, "resnet18_3d")`). Its key
  names do not fit r3d_18, so it cannot be loaded into the wrong network by mistake. The result's
  `loads_into` names the reference model.
- FILE's stem + ".heads.pt": the distillation heads' weights and the student's architecture
  (HeadSpecs included), enough to rebuild the whole DistillStudent, and the input normalisation the
  trunk was trained with (`input_normalisation`: mean/std of [0, 1] RGB; the video mean/std for
  distilled RGB students, None for flow). Feed the exported trunk input normalised that way.
A flow student (2 input channels) exports the same way; its first convolution takes 2 channels, so
`load_exported_trunk` swaps the reference model's 3-channel first convolution for a 2-channel one of the
same kind (padding included) before loading. Tiny-width students have no reference shape and are refused;
so is efficientnet_lite0_3d (use its checkpoint).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision.models.video

from distinit.distill.checkpoint import load_checkpoint
from distinit.distill.students import DistillStudent, student_entry
from distinit.distill.trunk_resnet18_3d import resnet18_3d_classifier
from distinit.pipeline.atomic import atomic_path
from distinit.pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

HEADS_FORMAT = "distinit-heads-v1"


def heads_path_for(out_path: str | os.PathLike) -> Path:
    """`trunk.pt` -> `trunk.heads.pt` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".heads.pt")


TORCHVISION_VIDEO_MODELS = ("r2plus1d_18", "r3d_18", "mc3_18", "s3d")
RESNET18_3D_REFERENCE = "distill.trunk_resnet18_3d.resnet18_3d_classifier()"  # see the module docstring
EXPORTABLE_STUDENTS = (*TORCHVISION_VIDEO_MODELS, "resnet18_3d")


def reference_model_name(name: str) -> str:
    """What an exported `name` trunk loads into, as code: torchvision's video model or resnet18_3d's reference."""
    return RESNET18_3D_REFERENCE if name == "resnet18_3d" else f"torchvision.models.video.{name}()"


def export_trunk(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, Any]:
    """Checkpoint (a dict with "model" and "architecture") -> trunk state_dict at `out_path` (the reference
    model's key names) plus heads beside it. Returns {"trunk": path, "heads": path, "name", "in_channels",
    "input_normalisation", "missing_keys", "loads_into"}."""
    checkpoint = load_checkpoint(checkpoint_path)  # the trainer's reader: one-line errors for bad files
    architecture = checkpoint["architecture"]
    if architecture.get("name") not in EXPORTABLE_STUDENTS:
        raise ConfigError(
            f"{checkpoint_path}: student {architecture.get('name')!r} has no reference model to export to; export "
            f"works for {', '.join(EXPORTABLE_STUDENTS)} (use the checkpoint itself, e.g. distinit eval --init CKPT)"
        )
    if architecture.get("width") != "full":
        raise ConfigError(
            f"{checkpoint_path}: a {architecture.get('width')!r}-width student has no reference model's shape; "
            "only full-width students export"
        )
    student = DistillStudent.from_architecture(architecture)
    try:
        student.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        # Line 0 is "Error(s) in loading state_dict for ..."; line 1 names the first offending key.
        lines = str(error).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise ConfigError(f"{checkpoint_path}: its weights do not fit its own architecture ({detail[:200]})") from None

    # clone(): state_dict tensors share storage with the model; save compact, standalone tensors.
    trunk_state = {key: value.detach().clone() for key, value in student.trunk_state_dict().items()}
    architecture = student.architecture()
    heads_payload = {
        "format": HEADS_FORMAT,
        "architecture": architecture,
        "input_normalisation": architecture["input_normalisation"],
        "head_state_dict": {key: value.detach().clone() for key, value in student.head_state_dict().items()},
        "trunk_file": Path(out_path).name,
    }
    heads_path = heads_path_for(out_path)
    with atomic_path(out_path) as temporary:
        torch.save(trunk_state, temporary)
    with atomic_path(heads_path) as temporary:
        torch.save(heads_payload, temporary)

    # Prove the promise before telling anyone: the reference model takes every trunk weight.
    model = load_exported_trunk(out_path, student.name)
    missing = sorted(key for key in model.state_dict() if key not in trunk_state)
    logger.info("exported %s trunk (%d tensors) to %s, heads to %s; loads into %s, which keeps its own %s; "
                "input normalisation %s", student.name, len(trunk_state), out_path, heads_path,
                reference_model_name(student.name), ", ".join(missing), architecture["input_normalisation"])
    return {
        "trunk": str(out_path),
        "heads": str(heads_path),
        "name": student.name,
        "in_channels": student.in_channels,
        "input_normalisation": architecture["input_normalisation"],
        "missing_keys": missing,
        "loads_into": reference_model_name(student.name),
    }


def load_exported_trunk(path: str | os.PathLike, name: str) -> nn.Module:
    """The reference model of `name` (torchvision's "r2plus1d_18", ...; for "resnet18_3d" the inflated resnet18)
    with an exported trunk loaded into it; its classifier keeps its random initialisation. Raises ConfigError
    unless every trunk weight fits."""
    entry = student_entry(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ConfigError(
            f"{path}: cannot read an exported trunk ({type(error).__name__}); pass the FILE written by export"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConfigError(f"{path}: not an exported trunk (expected a dict of tensors); pass the FILE written by export")
    if name not in EXPORTABLE_STUDENTS:
        raise ConfigError(f"student {name!r} has no exported form; pass one of {', '.join(EXPORTABLE_STUDENTS)}")
    model = resnet18_3d_classifier() if name == "resnet18_3d" else getattr(torchvision.models.video, name)(weights=None)
    _match_input_channels(model, state)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape: another architecture's trunk
        detail = str(error).strip().splitlines()[-1].strip()
        raise ConfigError(f"{path}: not a {name} trunk ({detail})") from None
    unexpected = list(result.unexpected_keys)
    not_classifier = [key for key in result.missing_keys if not key.startswith(entry.torchvision_classifier + ".")]
    if unexpected or not_classifier:
        raise ConfigError(
            f"{path}: not a {name} trunk (unexpected keys: {unexpected[:3]}, missing trunk keys: {not_classifier[:3]})"
        )
    return model


def _match_input_channels(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give the model's first convolution as many input channels as the exported one (2 for flow)."""
    module_name, first_conv = next(
        (name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv3d)
    )
    exported = state.get(f"{module_name}.weight")
    if exported is None or exported.dim() != 5 or exported.shape[1] == first_conv.in_channels:
        return
    # A copy keeps the conv's kind and padding (resnet18_3d's stem repeats border frames: a plain Conv3d would not).
    replacement = copy.deepcopy(first_conv)
    replacement.in_channels = int(exported.shape[1])
    replacement.weight = nn.Parameter(first_conv.weight.new_empty(first_conv.out_channels, *exported.shape[1:]))
    parent_name, _, child_name = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, replacement)
