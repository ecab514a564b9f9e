"""Export a distilled student for code outside distinit's trainer (`distinit export CKPT --out DIR`).

Two formats (`export_trunk(..., export_format=)`, `--format`); docs/export.md shows how to load each:
- "safetensors", the default: a folder laid out as Hugging Face's tools expect a model folder,
      DIR/model.safetensors   the trunk under its reference model's key names (below), contiguous tensors
      DIR/config.json         architecture, clip shape, input normalisation, provenance (`export_config`)
      DIR/heads.safetensors   the distillation heads; with config.json's `student_architecture` they rebuild
                              the whole DistillStudent (`DistillStudent.from_architecture`)
  Nothing in it is a time stamp: exporting one checkpoint again with the same code writes the same bytes.
  `load_export(DIR)` gives the reference model ready to use (hubconf.py serves it through torch.hub);
  `mmaction2_checkpoint(DIR)` the checkpoint MMAction2's `load_from` takes.
- "pt": FILE, the trunk as a torch.save'd state_dict, and FILE's stem + ".heads.pt" beside it (the heads'
  weights, the student's architecture and its `input_normalisation`). With no format given, an --out ending in
  .pt or .pth means this one.

Key names. For torchvision's video students (r2plus1d_18, r3d_18, mc3_18, s3d) the reference model is torchvision's
own, and `model.load_state_dict(trunk, strict=False)` reports exactly its classifier missing (`fc.weight`,
`fc.bias`; S3D: `classifier.1.*`), which distillation does not train, and nothing unexpected: every trunk weight
loads strictly. `resnet18_3d` is not a torchvision video model (r3d_18 has no stem max-pool and pads time with
zeros: the same weights would compute something else), so its trunk is keyed as torchvision's 2D resnet18 minus
`fc.*`, with 5D conv weights, and loads into `distinit.distill.trunk_resnet18_3d.resnet18_3d_classifier()`, again
with only `fc.*` missing; its names do not fit r3d_18, so it cannot be loaded into the wrong network by mistake.
A flow student (2 input channels) exports the same way; its reference model's first convolution is swapped for a
2-channel one of the same kind (padding included) before loading. Tiny-width students have no reference shape and
are refused, and so is efficientnet_lite0_3d (use its checkpoint).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn
import torchvision.models.video

from distinit import pipeline
from distinit.distill.checkpoint import load_checkpoint
from distinit.distill.flow import FLOW_BOUND_PIXELS
from distinit.distill.students import DistillStudent, recorded_normalisation, student_entry
from distinit.distill.trunk_resnet18_3d import resnet18_3d_classifier
from distinit.pipeline.atomic import atomic_path, atomic_write_bytes, atomic_write_text, make_output_folder
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file, sha256_json
from distinit.pipeline.provenance import git_state

logger = logging.getLogger(__name__)

HEADS_FORMAT = "distinit-heads-v1"
EXPORT_FORMAT = "distinit-export-v1"  # config.json's "format"
FORMATS = ("safetensors", "pt")
MODEL_FILE, HEADS_FILE, CONFIG_FILE = "model.safetensors", "heads.safetensors", "config.json"
PT_SUFFIXES = (".pt", ".pth")
CLIP_FIELDS = ("frames", "stride", "short_side", "crop")

TORCHVISION_VIDEO_MODELS = ("r2plus1d_18", "r3d_18", "mc3_18", "s3d")
RESNET18_3D_REFERENCE = "distinit.distill.trunk_resnet18_3d.resnet18_3d_classifier()"  # see the module docstring
EXPORTABLE_STUDENTS = (*TORCHVISION_VIDEO_MODELS, "resnet18_3d")


def heads_path_for(out_path: str | os.PathLike) -> Path:
    """`trunk.pt` -> `trunk.heads.pt` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".heads.pt")


def reference_model_name(name: str) -> str:
    """What an exported `name` trunk loads into, as code: torchvision's video model or resnet18_3d's reference."""
    return RESNET18_3D_REFERENCE if name == "resnet18_3d" else f"torchvision.models.video.{name}()"


def export_trunk(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike,
                 export_format: str | None = None) -> dict[str, Any]:
    """Checkpoint (a dict with "model" and "architecture"; "config" too for safetensors) -> the export in
    `export_format` (None: "pt" for an `out_path` ending in .pt/.pth, else "safetensors"). Returns {"format", "trunk",
    "heads", "config" (None for pt), "name", "in_channels", "input_normalisation", "missing_keys", "loads_into"}."""
    export_format = export_format or ("pt" if Path(out_path).suffix in PT_SUFFIXES else "safetensors")
    if export_format not in FORMATS:
        raise ConfigError(f"export format {export_format!r} is unknown; use one of {', '.join(FORMATS)}")
    if export_format == "safetensors" and Path(out_path).suffix in (*PT_SUFFIXES, ".safetensors"):
        raise ConfigError(f"--out {out_path}: the safetensors format writes a folder (model.safetensors, config.json, "
                          "heads.safetensors); pass a folder name, or --format pt for one .pt file")
    checkpoint = load_checkpoint(checkpoint_path)  # the trainer's reader: one-line errors for bad files
    student = _exportable_student(checkpoint_path, checkpoint)
    # clone(): state_dict tensors share storage with the model; save compact, standalone, contiguous tensors.
    trunk_state = {key: value.detach().clone().contiguous() for key, value in student.trunk_state_dict().items()}
    head_state = {key: value.detach().clone().contiguous() for key, value in student.head_state_dict().items()}
    architecture = student.architecture()
    if export_format == "pt":
        written = _write_pt(out_path, trunk_state, head_state, architecture)
        # Prove the promise before telling anyone: the reference model takes every trunk weight, read from disk.
        model = load_exported_trunk(written["trunk"], student.name)
        written["missing_keys"] = sorted(key for key in model.state_dict() if key not in trunk_state)
    else:
        written = _write_safetensors(checkpoint_path, checkpoint, student, out_path, trunk_state, head_state)
    logger.info("exported %s trunk (%d tensors, %s) to %s, heads to %s; loads into %s, which keeps its own %s; "
                "input normalisation %s", student.name, len(trunk_state), export_format, written["trunk"],
                written["heads"], reference_model_name(student.name), ", ".join(written["missing_keys"]),
                architecture["input_normalisation"])
    return {"format": export_format, "config": None, **written, "name": student.name,
            "in_channels": student.in_channels, "input_normalisation": architecture["input_normalisation"],
            "loads_into": reference_model_name(student.name)}


def _exportable_student(checkpoint_path, checkpoint: dict[str, Any]) -> DistillStudent:
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
    return student


def _write_pt(out_path, trunk_state, head_state, architecture: dict[str, Any]) -> dict[str, str]:
    heads_payload = {
        "format": HEADS_FORMAT,
        "architecture": architecture,
        "input_normalisation": architecture["input_normalisation"],
        "head_state_dict": head_state,
        "trunk_file": Path(out_path).name,
    }
    heads_path = heads_path_for(out_path)
    with atomic_path(out_path) as temporary:
        torch.save(trunk_state, temporary)
    with atomic_path(heads_path) as temporary:
        torch.save(heads_payload, temporary)
    return {"trunk": str(out_path), "heads": str(heads_path)}


def _write_safetensors(checkpoint_path, checkpoint: dict[str, Any], student: DistillStudent, out_dir,
                       trunk_state, head_state) -> dict[str, Any]:
    """The heads, the trunk, then config.json, which lists the others' sha256: a reader that finds it finds them."""
    clip = _clip_shape(checkpoint_path, checkpoint, student)  # refused before anything is written
    out_dir = make_output_folder(out_dir)
    written = {"trunk": str(out_dir / MODEL_FILE), "heads": str(out_dir / HEADS_FILE) if head_state else None}
    for path, state in ((written["heads"], head_state), (written["trunk"], trunk_state)):
        if path is not None:
            # {"format": "pt"}: the metadata Hugging Face's loaders look for in a PyTorch safetensors file.
            atomic_write_bytes(path, safetensors.torch.save(state, metadata={"format": "pt"}))
    # Prove the promise before telling anyone: the reference model takes every trunk weight, read from disk.
    model = reference_model(student.name, safetensors.torch.load_file(written["trunk"]), source=written["trunk"])
    missing = sorted(key for key in model.state_dict() if key not in trunk_state)
    config = export_config(checkpoint_path, checkpoint, student, clip, missing)
    config["files"] = {Path(path).name: sha256_file(path) for path in written.values() if path is not None}
    written["config"] = str(out_dir / CONFIG_FILE)
    atomic_write_text(written["config"], json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return {**written, "missing_keys": missing}


def _clip_shape(checkpoint_path, checkpoint: dict[str, Any], student: DistillStudent) -> dict[str, Any]:
    """The clips the student was distilled on (the checkpoint's config): what its transform should produce."""
    config = checkpoint.get("config")
    if not isinstance(config, dict) or not all(isinstance(config.get(name), int) for name in CLIP_FIELDS):
        raise ConfigError(f"{checkpoint_path}: records no clip shape (a config with {', '.join(CLIP_FIELDS)}); the "
                          "safetensors export needs a checkpoint written by distinit distill (or use --format pt)")
    modality = config.get("modality", "rgb")
    if (modality == "flow") != (student.in_channels == 2):
        raise ConfigError(f"{checkpoint_path}: its config says modality {modality!r} but its student takes "
                          f"{student.in_channels} input channels; pass a checkpoint written by distinit distill")
    return {"modality": modality, **{name: config[name] for name in CLIP_FIELDS}, "layout": "(C, T, H, W)"}


def export_config(checkpoint_path, checkpoint: dict[str, Any], student: DistillStudent, clip: dict[str, Any],
                  missing_keys: list[str]) -> dict[str, Any]:
    """config.json's content but for "files" (docs/export.md describes every field)."""
    normalisation = recorded_normalisation(student.architecture())
    if normalisation is None:  # flow: distill.flow's scaling of clip_flow's (dx, dy) pixels
        described = {"kind": "flow", "channels": ["dx", "dy"], "unit": "pixels at short_side",
                     "method": (checkpoint.get("config") or {}).get("flow_method"), "bound_pixels": FLOW_BOUND_PIXELS,
                     "formula": "clip(flow, -bound_pixels, bound_pixels) / bound_pixels"}
    else:
        described = {"kind": "rgb", "channel_order": "RGB", "value_range": [0, 1], **normalisation.to_dict(),
                     "formula": "(x - mean) / std"}
    provenance = checkpoint.get("provenance") if isinstance(checkpoint.get("provenance"), dict) else {}
    videos = provenance.get("pretraining_videos")
    if isinstance(videos, dict) and "names" in videos:  # older checkpoints kept every name here: megabytes
        provenance = {**provenance, "pretraining_videos": {k: v for k, v in videos.items() if k != "names"}}
    distill_config = checkpoint.get("config")
    return {
        "format": EXPORT_FORMAT,
        "architecture": {
            "student": student.name, "width": student.width, "in_channels": student.in_channels,
            "feature_dim": student.feature_dim, "reference_model": reference_model_name(student.name),
            "weights": MODEL_FILE, "missing_keys": missing_keys,
            "missing_note": "the classifier, which distillation does not train: replace it for your task",
        },
        "clip": clip,
        "normalisation": described,
        "student_architecture": student.architecture(),
        "heads": HEADS_FILE if student.heads else None,
        "provenance": {
            "checkpoint": {"path": str(Path(checkpoint_path).resolve()), "sha256": sha256_file(checkpoint_path),
                           "step": checkpoint.get("step"), "epoch": checkpoint.get("epoch")},
            "distill": {**provenance, "config": distill_config,
                        "config_sha256": sha256_json(distill_config) if distill_config is not None else None},
            "export": {"distinit_version": pipeline.__version__, **git_state()},
        },
    }


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
