"""Test-time temporal ablations: does the finetuned model use time, or only appearance?

Each test view (3, T, H, W) is scored twice more, with its frames reordered in time:
- "time_shuffled": its frames in a fixed random order, one permutation per clip (shared by the clip's
  crops) from `np.random.default_rng([ABLATION_SEED, video_index, clip_index])`, never the identity
  when T > 1; the same permutations in every run, so inits are ablated alike;
- "frame_repeated": its middle frame (index T // 2) repeated T times: no motion at all.
Both are made from the same decoded frames as the original view, uint8 or normalised (normalisation is per
pixel, so reordering frames commutes with it): one decode per video, and nothing but the order in time changes.
A network whose accuracy holds on them classifies single frames; a spatiotemporal one should drop.
"""

from __future__ import annotations

import numpy as np
import torch

ORIGINAL = "original"
TIME_SHUFFLED = "time_shuffled"
FRAME_REPEATED = "frame_repeated"
ABLATIONS = (TIME_SHUFFLED, FRAME_REPEATED)
ABLATION_SEED = 1901_09244  # fixed: the paper's arXiv number


def time_permutation(frames: int, video_index: int, clip_index: int) -> np.ndarray:
    """(T,) int64: a random order of a clip's frames, fixed by (video, clip); not the identity when T > 1."""
    identity = np.arange(frames)
    rng = np.random.default_rng([ABLATION_SEED, int(video_index), int(clip_index)])
    while True:  # a redraw has probability 1/T! of being needed again
        order = rng.permutation(frames)
        if frames == 1 or not np.array_equal(order, identity):
            return order


def middle_frame_order(frames: int) -> np.ndarray:
    """(T,) int64: the middle frame's index T times."""
    return np.full(frames, frames // 2, dtype=np.int64)


def ablated_views(views: torch.Tensor, video_index: int, crops_per_clip: int) -> dict[str, torch.Tensor]:
    """Views (V, C, T, H, W), ordered clip by clip and crop by crop within a clip (view v is clip
    v // crops_per_clip) -> {ablation name: (V, C, T, H, W)} (see the module docstring)."""
    if views.dim() != 5 or len(views) % crops_per_clip:
        raise ValueError(f"expected (clips x {crops_per_clip}, C, T, H, W) views, got {tuple(views.shape)}")
    if len(views) == 0:  # a test video that did not decode
        return {name: views.clone() for name in ABLATIONS}
    frames = views.shape[2]
    shuffled_orders = [time_permutation(frames, video_index, view // crops_per_clip) for view in range(len(views))]
    repeated = torch.from_numpy(middle_frame_order(frames))
    return {
        TIME_SHUFFLED: torch.stack([view[:, torch.from_numpy(order)] for view, order in zip(views, shuffled_orders)]),
        FRAME_REPEATED: views[:, :, repeated].contiguous(),
    }
