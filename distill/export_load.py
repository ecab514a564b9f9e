"""Read back what `distinit export` wrote (distill/export.py): into its reference model, ready to use
(`load_export`, which hubconf.py serves through torch.hub), or as the checkpoint MMAction2's `load_from` takes
(`mmaction2_checkpoint`). docs/export.md shows each.

A safetensors export is checked before use: config.json must be an export's and list the weights' sha256
(`read_export`). Whatever the source, the reference model must take every trunk weight, its classifier and nothing
else left out (`reference_model`); a flow trunk's 2-channel first convolution replaces the reference's 3-channel one.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn
import torchvision.models.video

from distinit.distill.students import student_entry
from distinit.distill.trunk_resnet18_3d import resnet18_3d_classifier
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file

# What an export is called, shared with its writer (distill/export.py).
EXPORT_FORMAT = "distinit-export-v1"  # config.json's "format"
MODEL_FILE, HEADS_FILE, CONFIG_FILE = "model.safetensors", "heads.safetensors", "config.json"
PT_SUFFIXES = (".pt", ".pth")

TORCHVISION_VIDEO_MODELS = ("r2plus1d_18", "r3d_18", "mc3_18", "s3d")
EXPORTABLE_STUDENTS = (*TORCHVISION_VIDEO_MODELS, "resnet18_3d")


def read_export(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors export (its folder, or the model.safetensors in it) -> (trunk state_dict, config.json), checked:
    the config is an export's and lists the weights' sha256."""
    path = Path(path)
    if path.suffix in PT_SUFFIXES:
        raise ConfigError(f"{path}: a --format pt trunk, which has no config.json; this needs the safetensors export "
                          "(distinit export CKPT --out DIR)")
    folder, weights = (path, path / MODEL_FILE) if path.is_dir() else (path.parent, path)
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found; pass the folder `distinit export` wrote, or its {MODEL_FILE}")
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{config_path}: cannot read the export's config ({type(error).__name__}); it sits beside "
                          f"{weights.name} in the folder `distinit export` wrote") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ConfigError(f"{config_path}: not a distinit export config (format {found!r}, expected {EXPORT_FORMAT!r})")
    if (config.get("files") or {}).get(weights.name) != sha256_file(weights):
        raise ConfigError(f"{weights}: not the weights {config_path} describes (sha256 differs, or renamed); "
                          "export the checkpoint again")
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except Exception as error:  # safetensors' own error types for a damaged file
        raise ConfigError(f"{weights}: cannot read safetensors ({type(error).__name__}); export again") from None
    return state, config


def load_exported_trunk(path: str | os.PathLike, name: str, num_classes: int = 1000) -> nn.Module:
    """The reference model of `name` (torchvision's "r2plus1d_18", ...; for "resnet18_3d" the inflated resnet18) with
    an export loaded into it: a safetensors export (folder or .safetensors file) or a pt trunk file. Its classifier
    (`num_classes` outputs) keeps its random initialisation. Raises ConfigError unless every trunk weight fits."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        state, config = read_export(path)
        exported = config["architecture"]["student"]
        if exported != name:
            raise ConfigError(f"{path}: an export of {exported}, not {name}; load it as {exported}")
    else:
        state = _read_pt_trunk(path)
    return reference_model(name, state, source=path, num_classes=num_classes)


def load_export(path: str | os.PathLike, name: str | None = None,
                num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model, config.json) from a safetensors export, ready to use: the reference model in eval mode with every trunk
    weight loaded, and as its classifier nn.Identity (num_classes None: the model returns pooled features (B, D)) or
    a fresh `num_classes`-way one. S3D's fixed 2x7x7 pool becomes a global average (the same at its 16x224x224,
    and it takes the export's clip shape too). `name`, when given, must be the exported student."""
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"num_classes must be a positive whole number (or None for features), got {num_classes!r}")
    state, config = read_export(path)
    exported = config["architecture"]["student"]
    if name is not None and exported != name:
        raise ConfigError(f"{path}: its config.json names {exported}, not {name}; load it with the {exported} entry point")
    model = reference_model(exported, state, source=path, num_classes=num_classes or 1000)
    if num_classes is None:
        setattr(model, student_entry(exported).torchvision_classifier, nn.Identity())
    if exported == "s3d":
        model.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
    return model.eval(), config


def _read_pt_trunk(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ConfigError(
            f"{path}: cannot read an exported trunk ({type(error).__name__}); pass the FILE written by export"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConfigError(f"{path}: not an exported trunk (expected a dict of tensors); pass the FILE written by export")
    return state


def reference_model(name: str, state: dict[str, torch.Tensor], *, source, num_classes: int = 1000) -> nn.Module:
    """`name`'s reference model with the trunk `state` loaded; ConfigError (naming `source`) unless exactly the
    classifier is left out."""
    if name not in EXPORTABLE_STUDENTS:
        raise ConfigError(f"student {name!r} has no exported form; pass one of {', '.join(EXPORTABLE_STUDENTS)}")
    entry = student_entry(name)
    if name == "resnet18_3d":
        model = resnet18_3d_classifier(num_classes)
    else:
        model = getattr(torchvision.models.video, name)(weights=None, num_classes=num_classes)
    _match_input_channels(model, state)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape: another architecture's trunk
        detail = str(error).strip().splitlines()[-1].strip()
        raise ConfigError(f"{source}: not a {name} trunk ({detail})") from None
    unexpected = list(result.unexpected_keys)
    not_classifier = [key for key in result.missing_keys if not key.startswith(entry.torchvision_classifier + ".")]
    if unexpected or not_classifier:
        raise ConfigError(
            f"{source}: not a {name} trunk (unexpected keys: {unexpected[:3]}, missing trunk keys: {not_classifier[:3]})"
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


def mmaction2_checkpoint(export: str | os.PathLike) -> dict[str, Any]:
    """A safetensors export of a torchvision student -> the checkpoint MMAction2 1.x's `load_from` takes:
    {"state_dict": {"backbone.<torchvision key>": tensor}, "meta": {"distinit_export": ...}}.

    MMAction2 builds a torchvision backbone as torchvision's own model with `fc` and `classifier` both set to
    nn.Identity (mmaction/models/recognizers/base.py), so its backbone has exactly the exported keys, under the
    recognizer's `backbone.` prefix; mmengine's loader takes `state_dict` and loads non-strictly, the head
    (`cls_head.*`) keeping its initialisation. Refused: resnet18_3d (not a torchvision model, so MMAction2 cannot
    build it) and flow trunks (MMAction2 builds torchvision's 3-channel stem, and mmengine's non-strict load
    would only warn about the shape and leave it random). docs/export.md has the MMAction2 config."""
    state, config = read_export(export)
    architecture = config["architecture"]
    if architecture["student"] not in TORCHVISION_VIDEO_MODELS:
        raise ConfigError(f"{export}: {architecture['student']} is not a torchvision model, and MMAction2 builds only "
                          f"torchvision's ({', '.join(TORCHVISION_VIDEO_MODELS)}); load it with distinit or torch.hub")
    if architecture["in_channels"] != 3:
        raise ConfigError(f"{export}: a {architecture['in_channels']}-channel (flow) trunk; MMAction2 builds "
                          "torchvision's 3-channel stem, which would stay random; load it with distinit or torch.hub")
    meta = {key: config[key] for key in ("format", "architecture", "clip", "normalisation")}
    meta["checkpoint_sha256"] = config["provenance"]["checkpoint"]["sha256"]
    return {"state_dict": {f"backbone.{key}": state[key] for key in sorted(state)}, "meta": {"distinit_export": meta}}
