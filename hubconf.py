"""torch.hub entry points for distinit's exported students (docs/export.md).

    model = torch.hub.load("path/to/distinit", "r2plus1d_18", weights="exports/r2plus1d_18/model.safetensors",
                           source="local")
    features = model(model.transform(frames).unsqueeze(0))  # frames: (T, H, W, 3) uint8 RGB -> (1, 512)

`weights` is a `distinit export` folder or the model.safetensors in it (its config.json is read from beside it).
The model is the student's reference model (torchvision's video model; resnet18_3d: torchvision's resnet18 inflated
by distinit) with every trunk weight loaded strictly, in eval mode. Distillation trains no classifier: by default
the classifier is nn.Identity and the model returns pooled features; `num_classes=N` gives a fresh N-way one to
finetune. `model.transform` makes a clip what the weights expect: resized to the export's short
side, centre-cropped to its crop, normalised as config.json says. An export of another student is refused.

distinit must be importable (`pip install -e .` in the checkout): the loading and resnet18_3d's network are its code.
torch.hub puts the checkout itself on sys.path while it loads; nothing here imports the stage folders by their bare
names (`pipeline`, `evaluate`, ...), only as `distinit.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

dependencies = ["torch", "torchvision", "safetensors"]


class _ClipTransform:  # `_`: torch.hub takes every public callable here for an entry point
    """A clip, (T, H, W, C) (numpy or torch; C = 3 RGB, or 2 for a flow export's (dx, dy) in pixels) -> the
    (C, T, crop, crop) float32 tensor the exported model takes. uint8 RGB is scaled to [0, 1], float RGB is taken as
    [0, 1] already. The frames are resized so their short side is the export's `short_side` (the long side rounded
    to an even number, as distinit's decoders do: area averaging to shrink, bicubic to enlarge; close to, not
    bit-identical with, ffmpeg's scale filter), centre-cropped to `crop`, then normalised: (x - mean) / std for RGB;
    flow displacements scale with the resize, then are clipped to +-bound_pixels and divided by it. A clip already at
    the short side is not resampled, so a uint8 clip gets exactly distinit's normalised values. The frame count is
    the caller's: the export was distilled on `frames` frames `stride` apart (config["clip"])."""

    def __init__(self, config: dict):
        self.clip = dict(config["clip"])
        self.normalisation = dict(config["normalisation"])
        self.channels = 2 if self.normalisation["kind"] == "flow" else 3

    def __repr__(self) -> str:
        shape = {key: self.clip[key] for key in ("frames", "stride", "short_side", "crop")}
        return f"ClipTransform({self.normalisation['kind']}, {shape})"

    def __call__(self, clip) -> torch.Tensor:
        from distinit.pipeline.video.decode import output_size

        video = torch.as_tensor(clip)
        if video.dim() != 4 or video.shape[-1] != self.channels:
            raise ValueError(f"expected a clip (T, H, W, {self.channels}); got shape {tuple(video.shape)}")
        if self.channels == 3 and video.dtype == torch.uint8:
            video = video.to(torch.float32).div_(255.0)  # distinit's order: byte / 255, then - mean, then / std
        video = video.to(torch.float32).permute(3, 0, 1, 2)  # (C, T, H, W)
        height, width = video.shape[-2:]
        size = output_size(int(width), int(height), self.clip["short_side"])[::-1]  # (height, width)
        if tuple(size) != (height, width):
            shrink = size[0] * size[1] < height * width
            video = F.interpolate(video, size=size, mode="area" if shrink else "bicubic")
            if self.channels == 3:
                video = video.clamp_(0.0, 1.0)
            else:  # a displacement in pixels grows with the frame
                video = video * torch.tensor([size[1] / width, size[0] / height]).view(2, 1, 1, 1)
        crop = self.clip["crop"]
        top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
        video = video[:, :, top:top + crop, left:left + crop]
        if self.channels == 2:
            bound = float(self.normalisation["bound_pixels"])
            return video.clamp(-bound, bound).div_(bound).contiguous()
        mean = torch.tensor(self.normalisation["mean"], dtype=torch.float32).view(3, 1, 1, 1)
        std = torch.tensor(self.normalisation["std"], dtype=torch.float32).view(3, 1, 1, 1)
        return video.sub(mean).div_(std).contiguous()


def _load(name: str, weights, num_classes: int | None) -> torch.nn.Module:
    try:
        from distinit.distill.export_load import load_export
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("distinit"):
            raise
        raise ModuleNotFoundError("distinit is not installed: run `pip install -e .` in the checkout torch.hub loads "
                                  "from, then load again") from None
    if weights is None:
        raise ValueError(f"{name}: pass weights=<a distinit export folder or its model.safetensors>")
    model, config = load_export(weights, name, num_classes=num_classes)
    model.transform = _ClipTransform(config)
    model.distinit_config = config
    return model


def r2plus1d_18(weights=None, num_classes: int | None = None) -> torch.nn.Module:
    """torchvision's r2plus1d_18 with a distinit export of an r2plus1d_18 student (see the module docstring)."""
    return _load("r2plus1d_18", weights, num_classes)


def r3d_18(weights=None, num_classes: int | None = None) -> torch.nn.Module:
    """torchvision's r3d_18 with a distinit export of an r3d_18 student (see the module docstring)."""
    return _load("r3d_18", weights, num_classes)


def mc3_18(weights=None, num_classes: int | None = None) -> torch.nn.Module:
    """torchvision's mc3_18 with a distinit export of an mc3_18 student (see the module docstring)."""
    return _load("mc3_18", weights, num_classes)


def s3d(weights=None, num_classes: int | None = None) -> torch.nn.Module:
    """torchvision's s3d with a distinit export of an s3d student; its fixed 2x7x7 pool is a global average pool
    here, the same at 16x224x224 and able to take the export's clip shape (see the module docstring)."""
    return _load("s3d", weights, num_classes)


def resnet18_3d(weights=None, num_classes: int | None = None) -> torch.nn.Module:
    """torchvision's resnet18 inflated to 3D by distinit (distinit.distill.trunk_resnet18_3d), the paper's Res3D-18,
    with a distinit export of a resnet18_3d student (see the module docstring)."""
    return _load("resnet18_3d", weights, num_classes)
