"""What the student predicts: one head per soft teacher output found in the shards' metadata.

A `HeadSpec` names a teacher output (`<teacher>/<output>`, the shards' row key) and how to learn it:
- "logits" (an ImageNet-style classifier): pooled trunk features -> dropout -> Linear -> C logits;
- "multilabel_scores" (COCO objects): the same shape of head, its logits go through a sigmoid in the loss;
- "heatmaps" (COCO keypoints): a spatial head on the trunk's last feature map — averaged over time, a
  1x1 convolution to K channels, bilinearly resized to the teacher's G x G grid. It returns LOGITS; the
  loss applies the spatial softmax. Its `mask_key` names the same teacher's flag output
  (`person_present`), so frames with nobody in them are left out of the keypoint loss. Pose teachers
  store keypoint coordinates ("keypoints", (K, 3)); stage two draws them as `<teacher>/heatmaps`
  (K, G, G) over each sample's crop (distill.keypoint_heatmaps), and that is what the head predicts.
- "embedding" (CLIP, DINOv2, a classifier's pooled features): pooled trunk features -> Linear -> GELU ->
  Linear -> D, compared by direction only (cosine loss). An MLP rather than one Linear: the target lives in
  another network's feature space, and a non-linear projection head lets the trunk keep features that
  serve other tasks while the head does the mapping (SimCLR found the features below a non-linear
  projection head transfer better than those below a linear one); it costs F x F + F x D weights.
"count" and "flag" outputs get no head: they are bookkeeping (a flag becomes a heatmap head's mask).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as functional

from distinit.distill.keypoint_heatmaps import rendered_teachers
from distinit.pipeline.errors import ConfigError

HEAD_KINDS = ("logits", "multilabel_scores", "heatmaps", "embedding")
_PREFERRED_MASK_OUTPUT = "person_present"


@dataclass(frozen=True)
class HeadSpec:
    key: str  # "<teacher>/<output>", e.g. "imagenet-efficientnet-lite0/logits"
    kind: str  # one of HEAD_KINDS
    shape: tuple[int, ...]  # per-sample output shape: (1000,), (80,), (17, 14, 14), (512,)
    class_names: tuple[str, ...] | None = None
    mask_key: str | None = None  # heatmaps only: "<teacher>/person_present", else None

    def __post_init__(self) -> None:
        # Accept lists (from JSON or a checkpoint's architecture dict) and keep the spec hashable.
        object.__setattr__(self, "shape", tuple(int(size) for size in self.shape))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"head {self.key!r} has kind {self.kind!r}; expected one of {', '.join(HEAD_KINDS)}")
        expected_rank = 3 if self.kind == "heatmaps" else 1
        if len(self.shape) != expected_rank or min(self.shape) < 1:
            raise ConfigError(
                f"head {self.key!r} ({self.kind}) has shape {self.shape}; expected {expected_rank} positive sizes"
            )
        if "/" not in self.key:
            raise ConfigError(f"head key {self.key!r} is not of the form <teacher>/<output>")

    @property
    def teacher(self) -> str:
        return self.key.split("/", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples); `HeadSpec(**spec.to_dict())` gives the spec back."""
        described = asdict(self)
        described["shape"] = list(self.shape)
        described["class_names"] = None if self.class_names is None else list(self.class_names)
        return described


def head_specs_from_teachers(teachers: list[dict[str, Any]]) -> list[HeadSpec]:
    """Teachers' `describe()` dicts (TargetStore.teachers) -> one HeadSpec per soft output, in stored order;
    a keypoints output becomes the "heatmaps" head of the maps drawn from it."""
    specs = []
    for teacher in rendered_teachers(teachers):
        outputs = teacher.get("outputs", [])
        flags = [output["name"] for output in outputs if output["kind"] == "flag"]
        mask_output = _PREFERRED_MASK_OUTPUT if _PREFERRED_MASK_OUTPUT in flags else (flags[0] if flags else None)
        for output in outputs:
            if output["kind"] not in HEAD_KINDS:
                continue
            mask_key = None
            if output["kind"] == "heatmaps" and mask_output is not None:
                mask_key = f"{teacher['name']}/{mask_output}"
            specs.append(
                HeadSpec(
                    key=f"{teacher['name']}/{output['name']}",
                    kind=output["kind"],
                    shape=tuple(output["shape"]),
                    class_names=output.get("class_names"),
                    mask_key=mask_key,
                )
            )
    return specs


def head_module_name(key: str) -> str:
    """A head key as a submodule name: only [A-Za-z0-9_], so state_dict keys, DDP and torch.compile stay simple."""
    return re.sub(r"[^0-9A-Za-z_]", "_", key)


class ClassifierHead(nn.Module):
    """Pooled features (B, D) -> (B, C) logits; used for both "logits" and "multilabel_scores"."""

    def __init__(self, feature_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(feature_dim, num_classes)
        # torchvision's initialisation of video classifiers: near-zero logits, so early KL terms are tame.
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, pooled_features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(pooled_features))


class SpatialHead(nn.Module):
    """Last feature map (B, D, T, h, w) -> (B, K, G_h, G_w) heatmap logits on the teacher's grid."""

    def __init__(self, feature_dim: int, num_maps: int, grid_size: tuple[int, int]):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.conv = nn.Conv2d(feature_dim, num_maps, kernel_size=1)
        nn.init.normal_(self.conv.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        # Teachers saw single frames; the clip's targets are a mean over frames, so average over time too.
        per_location = self.conv(feature_map.mean(dim=2))  # (B, K, h, w)
        return functional.interpolate(per_location, size=self.grid_size, mode="bilinear", align_corners=False)


class EmbeddingHead(nn.Module):
    """Pooled features (B, F) -> (B, D) embedding: Linear(F, F) -> GELU -> Linear(F, D) (see the module docstring).
    Dropout applies to its input, as in the classifier head."""

    def __init__(self, feature_dim: int, embedding_dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.hidden = nn.Linear(feature_dim, feature_dim)
        self.activation = nn.GELU()
        self.out = nn.Linear(feature_dim, embedding_dim)

    def forward(self, pooled_features: torch.Tensor) -> torch.Tensor:
        return self.out(self.activation(self.hidden(self.dropout(pooled_features))))


def build_head(spec: HeadSpec, feature_dim: int, dropout: float) -> nn.Module:
    if spec.kind == "heatmaps":
        return SpatialHead(feature_dim, spec.shape[0], (spec.shape[1], spec.shape[2]))
    if spec.kind == "embedding":
        return EmbeddingHead(feature_dim, spec.shape[0], dropout)
    return ClassifierHead(feature_dim, spec.shape[0], dropout)
