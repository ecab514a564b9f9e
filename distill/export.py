"""Export a distilled student for code outside distinit's trainer (`distinit export CKPT --out DIR`).

Two formats (`export_trunk(..., export_format=)`, `--format`); docs/export.md shows how to load each:
- "safetensors", the default: a folder laid out as Hugging Face's tools expect a model folder,
      DIR/model.safetensors   the trunk under its reference model's key names (below), contiguous tensors
      DIR/config.json         architecture, clip shape, input normalisation, provenance (`export_config`)
      DIR/heads.safetensors   the distillation heads; with config.json's `student_architecture` they rebuild
                              the whole DistillStudent (`DistillStudent.from_architecture`)
  Nothing in it is a time stamp: exporting one checkpoint again with the same code writes the same bytes;
  exporting into an older export's folder replaces its files (a student without heads removes heads.safetensors).
  distill/export_load.py reads it back: `load_export(DIR)` gives the reference model ready to use (hubconf.py
  serves it through torch.hub); `mmaction2_checkpoint(DIR)` the checkpoint MMAction2's `load_from` takes.
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

import json
import logging
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from distinit import pipeline
from distinit.distill.checkpoint import load_checkpoint
from distinit.distill.export_load import (CONFIG_FILE, EXPORT_FORMAT, EXPORTABLE_STUDENTS, HEADS_FILE, MODEL_FILE,
                                          PT_SUFFIXES, load_exported_trunk, reference_model)
from distinit.distill.flow import FLOW_BOUND_PIXELS
from distinit.distill.students import DistillStudent, recorded_normalisation
from distinit.pipeline.atomic import atomic_path, atomic_write_bytes, atomic_write_text, make_output_folder
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_file, sha256_json
from distinit.pipeline.provenance import git_state

logger = logging.getLogger(__name__)

HEADS_FORMAT = "distinit-heads-v1"
FORMATS = ("safetensors", "pt")
CLIP_FIELDS = ("frames", "stride", "short_side", "crop")
RESNET18_3D_REFERENCE = "distinit.distill.trunk_resnet18_3d.resnet18_3d_classifier()"  # see the module docstring


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
    if export_format == "pt" and Path(out_path).suffix == ".safetensors":  # loaders would take it for the folder's file
        raise ConfigError(f"--out {out_path}: --format pt writes a torch.save file; name it .pt or .pth")
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
    """The heads, the trunk, then config.json, which lists the others' sha256: a reader that finds it finds them.
    A student without heads removes an older export's heads.safetensors first, so config.json's null is the truth."""
    clip = _clip_shape(checkpoint_path, checkpoint, student)  # refused before anything is written
    out_dir = make_output_folder(out_dir)
    written = {"trunk": str(out_dir / MODEL_FILE), "heads": str(out_dir / HEADS_FILE) if head_state else None}
    for path, state in ((written["heads"], head_state), (written["trunk"], trunk_state)):
        if path is not None:
            # {"format": "pt"}: the metadata Hugging Face's loaders look for in a PyTorch safetensors file.
            atomic_write_bytes(path, safetensors.torch.save(state, metadata={"format": "pt"}))
    if written["heads"] is None:
        (out_dir / HEADS_FILE).unlink(missing_ok=True)
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
