"""Generic I3D inflation (Carreira & Zisserman 2017): a 2D CNN becomes a 3D one (`evaluate.inflate` and the
resnet18_3d / efficientnet_lite0_3d students are built with it).

    video_model = inflate_module(image_model, spatial_time_kernel(3))   # any 2D CNN made of known layers
    trunk_state = inflate_state_dict(image_state, video_trunk)           # when the 3D model is built separately

Each k x k Conv2d becomes a t x k x k Conv3d whose weights are the 2D weights repeated t times over time
and divided by t (temporal stride 1 unless asked); BatchNorm2d becomes BatchNorm3d with the same
statistics; pools get a temporal kernel of 1; AdaptiveAvgPool2d(o) becomes AdaptiveAvgPool3d((1, o)).
Parameter-free layers (activations, dropout, flatten) and Linear are kept; containers, custom ones
included, are recursed into and kept — so a custom container must not call 2D-only functions in its
forward (EfficientNet's blocks do; `distill.efficientnet3d` registers rules for them). A layer with
weights and no rule is an error, never silently kept.

Temporal padding repeats the first and last frame ("replicate") rather than adding zeros. That is what
makes I3D's "boring video" property exact: a clip repeating one frame gives every frame the 2D
network's output on that frame, border frames included. With zero padding a border frame of a t=3
conv sees only 2/3 of the weights, and the difference spreads inward layer by layer. Conv3d's own
padding_mode would also change the spatial padding, so the temporal pad is an explicit F.pad in
`InflatedConv3d`. `temporal_padding="zeros"` gives the plain Conv3d of r3d_18 / the I3D paper.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as functional

from distinit.pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

TimeSize = int | Callable[[str, nn.Conv2d], int]  # a number for every conv, or (qualified name, conv) -> number
TEMPORAL_PADDINGS = ("replicate", "zeros")
Padding4 = tuple[int, int, int, int]  # (left, right, top, bottom), F.pad's order for the last two dims


def spatial_time_kernel(time_kernel: int) -> Callable[[str, nn.Conv2d], int]:
    """`time_kernel` frames for convs with a spatial extent, 1 for pointwise (1x1) convs — r3d_18's choice."""

    def choose(name: str, conv: nn.Conv2d) -> int:
        return time_kernel if max(conv.kernel_size) > 1 else 1

    return choose


def inflate_weight(weight_2d: torch.Tensor, time_kernel: int) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, t, kh, kw): repeated over time and divided by t, so a static clip sums back to 2D."""
    per_frame = weight_2d.detach().unsqueeze(2) / time_kernel  # (O, I, 1, kh, kw)
    return per_frame.expand(-1, -1, time_kernel, -1, -1).contiguous()


class InflatedConv3d(nn.Conv3d):
    """A Conv3d that pads time by repeating the border frames (and space by an explicit, possibly
    asymmetric, amount: TensorFlow 'SAME' convs) before convolving. Its state_dict keys are a Conv3d's."""

    def __init__(self, *args: Any, temporal_replicate: int = 0, spatial_padding: Padding4 | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.temporal_replicate = int(temporal_replicate)
        self.spatial_padding = None if spatial_padding is None else tuple(int(value) for value in spatial_padding)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if self.spatial_padding is not None and any(self.spatial_padding):
            clips = functional.pad(clips, (*self.spatial_padding, 0, 0))  # zeros, as the 2D conv padded
        if self.temporal_replicate:
            pad = self.temporal_replicate
            clips = functional.pad(clips, (0, 0, 0, 0, pad, pad), mode="replicate")  # (B, C, T + 2p, H, W)
        return super().forward(clips)

    def extra_repr(self) -> str:
        extra = f"temporal_replicate={self.temporal_replicate}, spatial_padding={self.spatial_padding}"
        return f"{super().extra_repr()}, {extra}"


def _size_for(size: TimeSize, name: str, conv: nn.Conv2d, what: str) -> int:
    value = size(name, conv) if callable(size) else size
    if not isinstance(value, int) or value < 1 or (what == "time kernel" and value % 2 == 0):
        wanted = "an odd integer >= 1" if what == "time kernel" else "an integer >= 1"
        raise ConfigError(f"inflation {what} for conv {name or '<top>'} is {value!r}; use {wanted}")
    return value


def _plain_spatial_padding(conv: nn.Conv2d) -> tuple[tuple[int, int], Padding4 | None]:
    """The 2D conv's padding as (symmetric (ph, pw), extra explicit padding or None); resolves 'same'/'valid'."""
    if not isinstance(conv.padding, str):
        return (int(conv.padding[0]), int(conv.padding[1])), None
    if conv.padding == "valid":
        return (0, 0), None
    total_h, total_w = (dilation * (kernel - 1) for dilation, kernel in zip(conv.dilation, conv.kernel_size))
    if total_h % 2 == 0 and total_w % 2 == 0:
        return (total_h // 2, total_w // 2), None
    # torch's 'same' puts the odd pixel at the end (right / bottom).
    return (0, 0), (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)


@dataclass(frozen=True)
class Inflater:
    """How to inflate: the time kernel and stride per conv, and the temporal padding. Rules get one of these."""

    time_kernel: TimeSize = 3
    time_stride: TimeSize = 1
    temporal_padding: str = "replicate"

    def __post_init__(self) -> None:
        if self.temporal_padding not in TEMPORAL_PADDINGS:
            raise ConfigError(
                f"temporal_padding {self.temporal_padding!r} is unknown; use one of {', '.join(TEMPORAL_PADDINGS)}"
            )

    def conv(self, conv: nn.Conv2d, name: str, spatial_padding: Padding4 | None = None) -> nn.Conv3d:
        """Conv2d -> (Inflated)Conv3d t x kh x kw; `spatial_padding` adds an explicit zero pad (TF 'SAME')."""
        time_kernel = _size_for(self.time_kernel, name, conv, "time kernel")
        time_stride = _size_for(self.time_stride, name, conv, "time stride")
        (pad_h, pad_w), extra_padding = _plain_spatial_padding(conv)
        if spatial_padding is not None and extra_padding is not None:
            raise ConfigError(f"conv {name}: padding='same' with an extra spatial padding is ambiguous; pass one")
        extra_padding = spatial_padding if spatial_padding is not None else extra_padding
        if extra_padding is not None and conv.padding_mode != "zeros":
            raise ConfigError(f"conv {name}: asymmetric padding with padding_mode={conv.padding_mode!r} has no 3D rule")
        replicate = self.temporal_padding == "replicate"
        if not replicate and conv.padding_mode != "zeros":
            raise ConfigError(
                f"conv {name}: temporal_padding='zeros' needs a zero-padded 2D conv, not {conv.padding_mode!r}"
            )
        temporal_pad = time_kernel // 2
        arguments = dict(
            in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=(time_kernel, *conv.kernel_size), stride=(time_stride, *conv.stride),
            padding=(0 if replicate else temporal_pad, pad_h, pad_w), dilation=(1, *conv.dilation),
            groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        if (replicate and temporal_pad) or extra_padding is not None:
            conv_3d: nn.Conv3d = InflatedConv3d(
                **arguments, temporal_replicate=temporal_pad if replicate else 0, spatial_padding=extra_padding
            )
        else:
            conv_3d = nn.Conv3d(**arguments)
        with torch.no_grad():
            conv_3d.weight.copy_(inflate_weight(conv.weight, time_kernel))
            if conv.bias is not None:
                conv_3d.bias.copy_(conv.bias)
        return conv_3d

    def inflate(self, module: nn.Module, name: str = "") -> nn.Module:
        """The 3D counterpart of `module` (already a private copy: containers are changed in place)."""
        rule = INFLATION_RULES.get(type(module))
        if rule is not None:
            inflated = rule(module, name, self)
            inflated.training = module.training  # not .train(): children keep their own (already copied) flags
            return inflated
        where = name or "the top level"
        module_type = f"{type(module).__module__}.{type(module).__qualname__}"
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise ConfigError(
                f"cannot inflate {module_type} at {where}: it has weights and no inflation rule; "
                "register one with distinit.pipeline.weights.inflation.register_inflation"
            )
        children = list(module.named_children())
        if not children and type(module).__name__.lower().endswith("2d"):
            raise ConfigError(f"cannot inflate {module_type} at {where}: a 2D-only layer without an inflation rule")
        for child_name, child in children:
            setattr(module, child_name, self.inflate(child, f"{name}.{child_name}" if name else child_name))
        return module


InflationRule = Callable[[nn.Module, str, Inflater], nn.Module]
INFLATION_RULES: dict[type, InflationRule] = {}


def register_inflation(module_type: type) -> Callable[[InflationRule], InflationRule]:
    """Decorator: `rule(module_2d, qualified_name, inflater) -> module_3d` for exactly `module_type`."""

    def register(rule: InflationRule) -> InflationRule:
        INFLATION_RULES[module_type] = rule
        return rule

    return register


def inflate_module(
    module_2d: nn.Module, time_kernel: TimeSize = 3, *, time_stride: TimeSize = 1, temporal_padding: str = "replicate"
) -> nn.Module:
    """A 3D copy of `module_2d` (left untouched); see the module docstring for what each layer becomes."""
    return Inflater(time_kernel, time_stride, temporal_padding).inflate(copy.deepcopy(module_2d))


def _pair(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@register_inflation(nn.Conv2d)
def _inflate_conv2d(conv: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    return inflater.conv(conv, name)


@register_inflation(nn.BatchNorm2d)
def _inflate_batch_norm(norm: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    weight = norm.weight if norm.weight is not None else norm.running_mean
    placement = {} if weight is None else {"device": weight.device, "dtype": weight.dtype}
    norm_3d = nn.BatchNorm3d(
        norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
        track_running_stats=norm.track_running_stats, **placement,
    )
    norm_3d.load_state_dict(norm.state_dict())  # weight, bias, running mean/var, num_batches_tracked
    return norm_3d


@register_inflation(nn.MaxPool2d)
def _inflate_max_pool(pool: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    return nn.MaxPool3d(
        (1, *_pair(pool.kernel_size)), (1, *_pair(pool.stride)), (0, *_pair(pool.padding)),
        (1, *_pair(pool.dilation)), return_indices=pool.return_indices, ceil_mode=pool.ceil_mode,
    )


@register_inflation(nn.AvgPool2d)
def _inflate_average_pool(pool: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    return nn.AvgPool3d(
        (1, *_pair(pool.kernel_size)), (1, *_pair(pool.stride)), (0, *_pair(pool.padding)), ceil_mode=pool.ceil_mode,
        count_include_pad=pool.count_include_pad, divisor_override=pool.divisor_override,
    )


@register_inflation(nn.AdaptiveAvgPool2d)
def _inflate_adaptive_average_pool(pool: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    return nn.AdaptiveAvgPool3d((1, *_pair(pool.output_size)))  # averages time away, as a global pool should


@register_inflation(nn.AdaptiveMaxPool2d)
def _inflate_adaptive_max_pool(pool: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    return nn.AdaptiveMaxPool3d((1, *_pair(pool.output_size)), return_indices=pool.return_indices)


@register_inflation(nn.ZeroPad2d)
def _inflate_zero_pad(pad: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    return nn.ZeroPad3d((*pad.padding, 0, 0))


@register_inflation(nn.Dropout2d)
def _inflate_channel_dropout(dropout: nn.Module, name: str, inflater: Inflater) -> nn.Module:
    return nn.Dropout3d(dropout.p, dropout.inplace)


# Layers with weights that act the same on (B, C, T, H, W) as on (B, C, H, W) or on pooled features.
for _kept_type in (nn.Linear, nn.PReLU, nn.GroupNorm):
    register_inflation(_kept_type)(lambda module, name, inflater: module)


def _inflatable(source: torch.Tensor, target: torch.Tensor) -> bool:
    """A (O, I, kh, kw) conv weight whose target is (O, I, t, kh, kw)."""
    if source.dim() != 4 or target.dim() != 5:
        return False
    return source.shape[:2] == target.shape[:2] and source.shape[2:] == target.shape[3:]


def inflate_state_dict(
    state_dict_2d: Mapping[str, torch.Tensor], template_3d: nn.Module | Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """2D weights under the 3D model's key names -> a full 3D state_dict shaped like `template_3d`.

    A 4D conv weight whose 5D target has t frames is inflated with `inflate_weight`; every other tensor
    must have the target's shape and is copied. A missing `num_batches_tracked` (older torchvision files)
    starts at 0. The template may live on the meta device: only its shapes and dtypes are read.
    Keys the template lacks (a classifier) are left out and logged."""
    template = template_3d.state_dict() if isinstance(template_3d, nn.Module) else template_3d
    missing = [key for key in template if key not in state_dict_2d and not key.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"the 2D weights lack {len(missing)} of the 3D model's {len(template)} tensors (first: {missing[0]!r}); "
            "pass weights of the matching 2D architecture"
        )
    inflated = {}
    for key, target in template.items():
        if key not in state_dict_2d:
            inflated[key] = torch.zeros(target.shape, dtype=target.dtype)  # a batch-norm count: start at 0
            continue
        source = state_dict_2d[key].detach()
        if tuple(source.shape) == tuple(target.shape):
            inflated[key] = source.clone().to(target.dtype)
        elif _inflatable(source, target):
            inflated[key] = inflate_weight(source, target.shape[2]).to(target.dtype)
        else:
            raise ConfigError(
                f"cannot inflate {key!r}: 2D shape {tuple(source.shape)} does not fit 3D shape {tuple(target.shape)}"
            )
    unused = sorted(set(state_dict_2d) - set(template))
    if unused:
        logger.info(
            "inflation left out %d 2D tensors the 3D model has no place for: %s",
            len(unused), ", ".join(unused[:6]),
        )
    return inflated
