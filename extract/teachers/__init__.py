"""Frozen 2D teachers behind one registry: `create_teacher(kind, name=instance, device=..., weights=..., **options)`.

Registered teachers (see each module for its options; `distinit teachers` lists them with their weights):
- imagenet-efficientnet-lite0: the default; real ImageNet weights shipped in a pip package; 1000 logits
  and/or its pooled 1280-d features (`outputs`).
- imagenet-torchvision: any torchvision ImageNet classifier, weights from torch hub (downloaded on first use) or a file.
- places365: the Places365 scene CNNs of Zhou et al. from their authors' checkpoints; 365 logits.
- clip, dinov2: image embeddings (open_clip, timm) from the Hugging Face hub.
- coco-objects: per COCO class the best detection score, plus the count of confident detections.
- coco-keypoints: the most confident person's 17 COCO keypoints as frame-relative (x, y, confidence), plus a person flag.
- mediapipe-pose: BlazePose (optional extra `distinit[pose]`), same outputs as coco-keypoints.
"""

import importlib
import pkgutil

from distinit.extract.teachers.base import OutputSpec, Teacher
from distinit.extract.teachers.registry import TEACHERS, create_teacher, list_teachers, register_teacher, teacher_options
from distinit.pipeline.weights.files import MissingWeightsError

# Importing every module of this package registers its teachers (a new teacher module needs no line here);
# none imports an optional dependency at import time.
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    importlib.import_module(f"{__name__}.{_module.name}")

DEFAULT_TEACHER = "imagenet-efficientnet-lite0"

__all__ = [
    "DEFAULT_TEACHER",
    "MissingWeightsError",
    "OutputSpec",
    "TEACHERS",
    "Teacher",
    "create_teacher",
    "list_teachers",
    "register_teacher",
    "teacher_options",
]
