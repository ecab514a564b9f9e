"""INIT -> the trunk a run finetunes: a distilled checkpoint, `scratch`, or `inflated:<2d-model>`.

    initialization = resolve_init("runs/distill/<key>/checkpoint-last.pt", student=None, width=None)
    backbone = initialization.build_backbone()  # a fresh DistillStudent without heads, every call
    features = backbone.features(clips)          # (B, feature_dim)

A checkpoint's architecture comes from the checkpoint (STYLE item 7); `student` / `width`, when given,
must agree with it. Its heads (the teachers' outputs) are dropped: only `trunk.*` weights are loaded.
A run folder (or a runs root with a `latest` file, as distill writes) stands for its checkpoint-last.pt.

Each init carries the input normalisation its weights expect (`Initialization.normalisation`), which eval
applies to every clip: a checkpoint's recorded value (the video mean/std for checkpoints written before
students recorded one: they were all trained on it), the video mean/std for scratch, and the 2D model's
own for `inflated:<model>`. It is also in the description (`input_normalisation`) and the results key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from distinit.distill.checkpoint import load_checkpoint
from distinit.distill.students import DistillStudent, create_student, recorded_normalisation
from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, Normalisation
from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.init_sources import INFLATED_PREFIX, checkpoint_file

logger = logging.getLogger(__name__)

INIT_FORMS = (
    "a distill checkpoint (.pt file or run folder), 'scratch', or 'inflated:<2d-model>' "
    "(resnet18, efficientnet_lite0; add ':random' for random 2D weights)"
)
DEFAULT_STUDENT = "resnet18_3d"  # the paper's Res3D-18, which ImageNet ResNet-18 inflates into exactly
DEFAULT_WIDTH = "full"
TRUNK_PREFIX = "trunk."


@dataclasses.dataclass
class Initialization:
    kind: str  # "checkpoint" | "scratch" | "inflated"
    description: dict[str, Any]  # JSON-ready; goes into results.json as "init"
    pretrained: bool  # whether the trunk starts from learned weights (sets the default trunk lr scale)
    identity: str  # what the results key hashes: the checkpoint's sha256, the architecture, the weights' hash
    build_backbone: Callable[[], DistillStudent]  # a fresh backbone; scratch draws from torch's RNG
    normalisation: Normalisation = VIDEO_NORMALISATION  # the input normalisation the weights expect (docstring)


def resolve_init(init: str, *, student: str | None = None, width: str | None = None) -> Initialization:
    """Parse INIT and check it once (file, architecture, weights); see the module docstring."""
    if init == "scratch":
        return scratch_init(student or DEFAULT_STUDENT, width or DEFAULT_WIDTH)
    if init.startswith(INFLATED_PREFIX):
        return inflated_init(init[len(INFLATED_PREFIX):], student, width)
    path = checkpoint_path(init)
    if path is None:
        raise DistinitError(f"--init {init!r} is not a known form; pass {INIT_FORMS}")
    return checkpoint_init(path, student, width)


def checkpoint_path(init: str) -> Path | None:
    """The checkpoint file INIT names, or None when INIT does not look like a path at all (pipeline.init_sources)."""
    return checkpoint_file(init)


def scratch_init(student: str, width: str) -> Initialization:
    create_student(student, (), width=width)  # refuses an unknown student or width now, not after loading data
    return Initialization(
        kind="scratch",
        description={"kind": "scratch", "spec": "scratch", "architecture": {"name": student, "width": width},
                     "input_normalisation": VIDEO_NORMALISATION.to_dict()},
        pretrained=False,
        identity=f"scratch:{student}:{width}",
        build_backbone=lambda: create_student(student, (), width=width),
        normalisation=VIDEO_NORMALISATION,
    )


def _check_requested(source: str, name: str, width: str, student: str | None, requested_width: str | None) -> None:
    if student is not None and student != name:
        raise DistinitError(
            f"{source}: holds a {name} ({width}) network but --student {student} was asked; drop --student or pass a "
            f"{student} checkpoint"
        )
    if requested_width is not None and requested_width != width:
        raise DistinitError(
            f"{source}: holds a {name} of width {width} but --width {requested_width} was asked; drop --width or "
            f"pass a {requested_width} checkpoint"
        )


def checkpoint_init(path: Path, student: str | None, width: str | None) -> Initialization:
    state = load_checkpoint(path)
    architecture, weights = state["architecture"], state["model"]
    if not isinstance(architecture, dict) or not {"name", "width", "in_channels"} <= set(architecture) or not isinstance(
        weights, dict
    ):
        raise DistinitError(f"{path}: not a distinit checkpoint (no student architecture); pass one written by distill")
    name, checkpoint_width = str(architecture["name"]), str(architecture["width"])
    _check_requested(str(path), name, checkpoint_width, student, width)
    if int(architecture["in_channels"]) != 3:
        raise DistinitError(
            f"{path}: a {architecture['in_channels']}-channel (optical-flow) student; eval finetunes RGB students only"
        )
    trunk_weights = {key[len(TRUNK_PREFIX):]: value for key, value in weights.items() if key.startswith(TRUNK_PREFIX)}
    if not trunk_weights:
        raise DistinitError(f"{path}: the checkpoint's model has no trunk.* weights; pass one written by distill")
    normalisation = _checkpoint_normalisation(path, architecture)

    def build_backbone() -> DistillStudent:
        backbone = create_student(name, (), width=checkpoint_width, in_channels=3, input_normalisation=normalisation)
        try:
            backbone.trunk.load_state_dict(trunk_weights)
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            raise DistinitError(f"{path}: trunk weights do not fit {name} ({checkpoint_width}): {first_line}") from None
        return backbone

    build_backbone()  # refuse weights that do not fit before any data is read
    description = {
        "kind": "checkpoint",
        "spec": str(path),
        "path": str(path.resolve()),
        "sha256": sha256_file(path),
        "architecture": {"name": name, "width": checkpoint_width, "in_channels": 3},
        "input_normalisation": normalisation.to_dict(),
        "dropped_heads": [head.get("key") for head in architecture.get("heads") or [] if isinstance(head, dict)],
        "distill_step": state.get("step"),
        "distill_epoch": state.get("epoch"),
        "distill_clip": _clip_of(state.get("config")),
        "distill_provenance": _without_video_names(state.get("provenance")),
        "distill_config": state.get("config"),  # e.g. shuffle_targets marks the control row in compare
    }
    logger.info("init from %s: %s (%s), %d trunk tensors, heads dropped", path, name, checkpoint_width, len(trunk_weights))
    return Initialization("checkpoint", description, True, description["sha256"], build_backbone, normalisation)


def _checkpoint_normalisation(path: Path, architecture: dict[str, Any]) -> Normalisation:
    if "input_normalisation" not in architecture:
        logger.info("%s records no input normalisation (an older checkpoint): using the video mean/std it was "
                    "trained with", path)
    try:
        normalisation = recorded_normalisation(architecture)
    except DistinitError as error:
        raise DistinitError(f"{path}: {error}") from None
    if normalisation is None:
        raise DistinitError(f"{path}: the checkpoint records no RGB input normalisation; pass one written by distill")
    return normalisation


def _without_video_names(provenance: Any) -> Any:
    """The provenance for the description (and so every result) without a list of pretraining video names, which
    checkpoints written before the names moved to their own key keep there (megabytes for Kinetics);
    evaluate.overlap reads the names from the checkpoint file."""
    videos = provenance.get("pretraining_videos") if isinstance(provenance, dict) else None
    if not isinstance(videos, dict) or "names" not in videos:
        return provenance
    return {**provenance, "pretraining_videos": {key: value for key, value in videos.items() if key != "names"}}


def _clip_of(config: Any) -> dict[str, Any] | None:
    """The clip shape the student was distilled on, to compare with the one it is finetuned on."""
    if not isinstance(config, dict):
        return None
    return {name: config.get(name) for name in ("frames", "stride", "short_side", "crop", "modality")}


def inflated_init(spec: str, student: str | None, width: str | None) -> Initialization:
    if not spec:
        raise DistinitError(f"--init inflated: names no 2D model; pass {INIT_FORMS}")
    try:
        from distinit.evaluate.inflate import build_inflated_backbone
    except ModuleNotFoundError as error:
        if error.name != "distinit.evaluate.inflate":
            raise
        raise DistinitError(f"--init inflated:{spec}: this checkout has no evaluate/inflate.py; use another init") from None
    prototype = build_inflated_backbone(spec)
    _check_requested(f"inflated:{spec}", prototype.name, prototype.width, student, width)
    description = {
        "kind": "inflated",
        "spec": f"{INFLATED_PREFIX}{spec}",
        "source": spec,
        "architecture": {"name": prototype.name, "width": prototype.width, "in_channels": prototype.in_channels},
        "weights_sha256": state_dict_sha256(prototype),
        "input_normalisation": prototype.input_normalisation.to_dict(),
    }
    details = getattr(prototype, "inflation", None)  # what evaluate.inflate may record about its source weights
    if isinstance(details, dict):
        description["inflation"] = details
    return Initialization("inflated", description, not spec.endswith(":random"), description["weights_sha256"],
                          lambda: copy.deepcopy(prototype), prototype.input_normalisation)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names, shapes, bytes), so equal weights give an equal key."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
