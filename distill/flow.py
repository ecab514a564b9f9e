"""Optical flow for the flow student (`--modality flow`): T flow fields from T + 1 RGB frames, with OpenCV.

As in the paper's flow student, the input is 2-channel flow (x, y displacement in pixels) between
consecutive clip frames (frames at the clip's stride), taught by the same RGB teachers' targets.
Methods: Farneback (`cv2.calcOpticalFlowFarneback`, always there) or TV-L1
(`cv2.optflow.DualTVL1OpticalFlow_create`, in opencv-contrib; about 20x slower, the classic choice of
two-stream networks). Flow is computed on the whole resized frames (grayscale), in DataLoader workers
or once per video by the clip cache, stored as float16 (rounding under 0.01 pixel up to 16 pixels, and a
cached video then gives exactly the decoded path's values), then cropped and flipped like
the RGB clip, clipped to +-FLOW_BOUND_PIXELS and divided by it, the usual two-stream normalisation.
Costs measured on one core of a busy 2-core machine, 112 x 112: Farneback ~4 ms a pair, TV-L1 ~280 ms.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distinit.pipeline.errors import DistinitError

logger = logging.getLogger(__name__)

FLOW_BOUND_PIXELS = 20.0
FLOW_STORAGE_DTYPE = np.float16
# OpenCV's documented example parameters: pyramid scale 0.5, 3 levels, 15-pixel window, 3 iterations,
# 5-pixel polynomial neighbourhood with sigma 1.2.
FARNEBACK_PARAMETERS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)

_threads_limited = False


def _cv2():
    """OpenCV, limited to one thread inside DataLoader workers (the workers already use every core)."""
    global _threads_limited
    try:
        import cv2
    except ImportError:
        raise DistinitError(
            "optical flow needs OpenCV: pip install opencv-contrib-python (or opencv-python-headless for Farneback only)"
        ) from None
    if not _threads_limited and torch.utils.data.get_worker_info() is not None:
        cv2.setNumThreads(1)
        _threads_limited = True
    return cv2


def tvl1_available() -> bool:
    """Whether this OpenCV build has TV-L1 (the contrib `optflow` module)."""
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


def _grayscale(cv2, frames: np.ndarray) -> list[np.ndarray]:
    return [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames]


def optical_flow(frames: np.ndarray, method: str = "farneback") -> np.ndarray:
    """(T + 1, H, W, 3) uint8 RGB -> (T, H, W, 2) float32 flow in pixels, channel 0 = x (rightwards)."""
    if frames.ndim != 4 or frames.shape[0] < 2 or frames.shape[-1] != 3:
        raise ValueError(f"optical flow needs (T + 1 >= 2, H, W, 3) frames, got {frames.shape}")
    cv2 = _cv2()
    gray = _grayscale(cv2, frames)
    if method == "farneback":
        fields = [cv2.calcOpticalFlowFarneback(previous, following, None, **FARNEBACK_PARAMETERS)
                  for previous, following in zip(gray[:-1], gray[1:])]
    elif method == "tvl1":
        if not tvl1_available():
            raise DistinitError(
                "flow method tvl1 needs OpenCV's contrib module (pip install opencv-contrib-python); or use --flow-method farneback"
            )
        solver = cv2.optflow.DualTVL1OpticalFlow_create()
        fields = [solver.calc(previous, following, None) for previous, following in zip(gray[:-1], gray[1:])]
    else:
        raise ValueError(f"unknown flow method {method!r}; use farneback or tvl1")
    return np.stack(fields).astype(np.float32, copy=False)


def clip_flow(frames: np.ndarray, method: str = "farneback") -> np.ndarray:
    """The flow a sample uses: (T + 1, H, W, 3) uint8 -> (T, H, W, 2) float16."""
    return optical_flow(frames, method).astype(FLOW_STORAGE_DTYPE)


def flip_flow(flow: np.ndarray) -> np.ndarray:
    """Flow of the mirrored clip: mirror the width axis and negate the x displacement. (T, H, W, 2)."""
    flipped = flow[:, :, ::-1].copy()
    flipped[..., 0] *= -1.0
    return flipped


def normalise_flow(flow: np.ndarray, bound: float = FLOW_BOUND_PIXELS) -> np.ndarray:
    """Clip to +-bound pixels and scale to [-1, 1]."""
    return np.clip(flow, -bound, bound) / bound


def flow_to_tensor(flow: np.ndarray) -> torch.Tensor:
    """(T, H, W, 2) -> (2, T, H, W) float32, normalised."""
    normalised = normalise_flow(np.asarray(flow, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(normalised)).permute(3, 0, 1, 2).contiguous()
