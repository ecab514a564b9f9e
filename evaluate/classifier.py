"""The model stage three trains: a trunk from INIT plus a new classifier, and its optimizer."""

from __future__ import annotations

import torch
import torch.nn as nn

from distinit.distill.students import DistillStudent
from distinit.evaluate.config import EvalConfig


class VideoClassifier(nn.Module):
    """A trunk from INIT plus a new classifier: dropout, then Linear(feature_dim, num_classes).

    With `freeze_trunk` (linear probe) the trunk gets no gradients and stays in eval mode, so its batch
    norms keep the statistics they came with and its weights stay bit-identical."""

    def __init__(self, backbone: DistillStudent, num_classes: int, dropout: float, freeze_trunk: bool = False):
        super().__init__()
        self.backbone = backbone
        self.freeze_trunk = freeze_trunk
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
        if freeze_trunk:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> "VideoClassifier":
        super().train(mode)
        if self.freeze_trunk:
            self.backbone.eval()
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, 3, T, H, W) -> logits (B, num_classes)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_trunk):
            features = self.backbone.features(clips)  # (B, feature_dim)
        return self.classifier(self.dropout(features))


def build_optimizer(model: VideoClassifier, config: EvalConfig, trunk_scale: float) -> torch.optim.Optimizer:
    """Trunk and classifier groups (each group's lr is base lr x its "lr_scale"); no decay on biases and norms."""
    groups = []
    for part, scale in ((model.backbone, trunk_scale), (model.classifier, 1.0)):
        parameters = [parameter for parameter in part.parameters() if parameter.requires_grad]
        for decay, chosen in ((config.weight_decay, [p for p in parameters if p.ndim > 1]),
                              (0.0, [p for p in parameters if p.ndim <= 1])):
            if chosen:
                groups.append({"params": chosen, "weight_decay": decay, "lr_scale": scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)
