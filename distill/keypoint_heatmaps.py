"""Pose targets drawn per sample, over the crop the student sees.

Stage one stores what a pose teacher saw: per teacher frame, each keypoint's (x / frame width,
y / frame height, confidence) and a `person_present` flag (extract.teachers.keypoint_coordinates). A
sample's crop box is chosen first; then each teacher frame of the window has its keypoints mapped to the
crop's pixels (frame-relative -> pixels of the frame resized to the clip's short side -> minus the crop's
top-left corner) and drawn on a G x G grid laid over the crop (cells crop / G pixels wide), with the
grid and sigma the teacher recorded on its output. For keypoint k at continuous grid position (gx, gy)
with confidence c:

    heatmap_k = c * gaussian_k + (1 - c) * uniform   when the keypoint lies inside the crop,
    heatmap_k = 0                                     when it lies outside (the student cannot see it),

gaussian_k a Gaussian of `sigma` cells around (gx, gy) normalised over the grid, uniform = 1 / G^2.
A frame shows a person only if the teacher's flag is set AND at least one keypoint lies inside the crop;
a frame without one has all-zero maps and flag 0. The window's target is then aggregated like any other
output (distill.windows.aggregate_targets: the mean over the frames with a person). A flip mirrors the
aggregated maps and swaps left/right channels (distill.augment.flip_targets): the exact mirror image of
drawing at x' = crop - x with left and right swapped.

The student and the loss see `<teacher>/heatmaps` (K, G, G) and `<teacher>/person_present`, the same
keys and kinds whichever pose teacher wrote the keypoints (`rendered_teachers`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from distinit.distill.windows import KIND_FLAG, KIND_HEATMAPS
from distinit.pipeline.shards import ShardError
from distinit.pipeline.shards.format import KEYPOINT_GRID_ATTRIBUTE as GRID_ATTRIBUTE
from distinit.pipeline.shards.format import KEYPOINT_SIGMA_ATTRIBUTE as SIGMA_ATTRIBUTE

KIND_KEYPOINTS = "keypoints"
RENDERED_OUTPUT = "heatmaps"


@dataclass(frozen=True)
class KeypointTarget:
    """One stored keypoints output and the heatmaps drawn from it."""

    keypoints_key: str  # "<teacher>/keypoints", rows (N, K, 3)
    heatmaps_key: str  # "<teacher>/heatmaps", drawn (N, K, G, G)
    flag_key: str | None  # "<teacher>/person_present"
    grid: int
    sigma: float


def keypoint_targets(teachers: Sequence[Mapping[str, Any]]) -> list[KeypointTarget]:
    """Every keypoints output of the teachers' `describe()` dicts (TargetStore.teachers)."""
    found = []
    for teacher in teachers:
        outputs = teacher["outputs"]
        names = {output["name"] for output in outputs}
        flags = [output["name"] for output in outputs if output.get("kind") == KIND_FLAG]
        for output in outputs:
            if output.get("kind") != KIND_KEYPOINTS:
                continue
            attributes = output.get("attributes") or {}
            grid, sigma = attributes.get(GRID_ATTRIBUTE), attributes.get(SIGMA_ATTRIBUTE)
            where = f"teacher {teacher['name']} output {output['name']}"
            if not isinstance(grid, int) or grid < 1 or not isinstance(sigma, (int, float)) or not sigma > 0:
                raise ShardError(f"{where}: no valid {GRID_ATTRIBUTE}/{SIGMA_ATTRIBUTE} attributes; re-run extract")
            if RENDERED_OUTPUT in names:
                raise ShardError(f"{where}: the teacher also stores {RENDERED_OUTPUT!r}, the name its drawn maps take")
            found.append(KeypointTarget(
                keypoints_key=f"{teacher['name']}/{output['name']}",
                heatmaps_key=f"{teacher['name']}/{RENDERED_OUTPUT}",
                flag_key=f"{teacher['name']}/{flags[0]}" if len(flags) == 1 else None,
                grid=int(grid), sigma=float(sigma),
            ))
    return found


def rendered_teachers(teachers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The teachers' `describe()` dicts as stage two's targets look: each keypoints output replaced by the
    (K, G, G) "heatmaps" output drawn from it (what heads, masks and the flip plan are built from)."""
    rendered = []
    for teacher in teachers:
        teacher = copy.deepcopy(dict(teacher))
        by_key = {target.keypoints_key: target for target in keypoint_targets([teacher])}
        outputs = []
        for output in teacher["outputs"]:
            target = by_key.get(f"{teacher['name']}/{output['name']}")
            if target is None:
                outputs.append(output)
                continue
            outputs.append({
                "name": RENDERED_OUTPUT, "shape": [int(output["shape"][0]), target.grid, target.grid],
                "dtype": "float32", "kind": KIND_HEATMAPS, "class_names": output.get("class_names"),
                "attributes": dict(output.get("attributes") or {}),
                "meaning": f"drawn per sample over the crop from {target.keypoints_key} (distill.keypoint_heatmaps)",
            })
        teacher["outputs"] = outputs
        rendered.append(teacher)
    return rendered


def crop_pixels(keypoints: np.ndarray, frame_height: int, frame_width: int, top: int, left: int) -> np.ndarray:
    """(..., K, 3) frame-relative keypoints -> (..., K, 2) continuous (x, y) in the crop's pixels, for a
    frame resized to frame_height x frame_width and a crop whose top-left corner is (top, left)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    x = keypoints[..., 0] * frame_width - left
    y = keypoints[..., 1] * frame_height - top
    return np.stack([x, y], axis=-1)


def draw_heatmaps(
    points: np.ndarray, confidence: np.ndarray, crop: int, grid: int, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """points (..., K, 2) in crop pixels, confidence (..., K) -> (maps (..., K, G, G) float32, inside (..., K)).

    Inside keypoints get c * Gaussian + (1 - c) * uniform (each map sums to 1), outside ones zero."""
    points = np.asarray(points, dtype=np.float64)
    leading = points.shape[:-1]  # (..., K)
    grid_xy = points.reshape(-1, 2) / crop * grid  # (M, 2), cell j spans [j, j + 1)
    confidence = np.clip(np.nan_to_num(np.asarray(confidence, dtype=np.float64).reshape(-1)), 0.0, 1.0)  # (M,)
    inside = np.isfinite(grid_xy).all(axis=1) & (grid_xy >= 0).all(axis=1) & (grid_xy < grid).all(axis=1)
    safe = np.where(inside[:, None], grid_xy, grid / 2)
    centres = np.arange(grid) + 0.5
    along_x = np.exp(-((centres[None, :] - safe[:, :1]) ** 2) / (2 * sigma**2))  # (M, G)
    along_y = np.exp(-((centres[None, :] - safe[:, 1:]) ** 2) / (2 * sigma**2))  # (M, G)
    gaussian = along_y[:, :, None] * along_x[:, None, :]  # (M, G, G): rows are y, columns x
    gaussian /= gaussian.sum(axis=(1, 2), keepdims=True)
    maps = confidence[:, None, None] * gaussian + (1.0 - confidence[:, None, None]) / (grid * grid)
    maps[~inside] = 0.0
    return maps.reshape(*leading, grid, grid).astype(np.float32), inside.reshape(leading)


def render_window(
    rows: Mapping[str, np.ndarray], targets: Sequence[KeypointTarget], frame_height: int, frame_width: int,
    top: int, left: int, crop: int,
) -> dict[str, np.ndarray]:
    """A window's rows (N frames each) with every keypoints output replaced by its heatmaps drawn over the crop,
    and its flag set only where a person was seen with at least one confident (> 0) keypoint inside the crop."""
    rendered = dict(rows)
    for target in targets:
        keypoints = np.asarray(rendered.pop(target.keypoints_key), dtype=np.float64)  # (N, K, 3)
        points = crop_pixels(keypoints, frame_height, frame_width, top, left)  # (N, K, 2)
        maps, inside = draw_heatmaps(points, keypoints[..., 2], crop, target.grid, target.sigma)
        # Keypoints of confidence 0 inside the crop keep their uniform maps, but do not show a person on their own.
        present = (inside & (keypoints[..., 2] > 0)).any(axis=1)  # (N,)
        if target.flag_key is not None and target.flag_key in rendered:
            flags = np.asarray(rendered[target.flag_key])
            present &= flags.reshape(len(flags)) > 0
            rendered[target.flag_key] = present.astype(flags.dtype)
        maps[~present] = 0.0
        rendered[target.heatmaps_key] = maps
    return rendered


def heatmap_peak_cells(heatmaps: np.ndarray) -> np.ndarray:
    """(K, G, G) -> (K, 2) integer (row, column) of each map's maximum; handy for tests and `inspect`."""
    num_keypoints, grid_height, grid_width = heatmaps.shape
    flat_index = heatmaps.reshape(num_keypoints, -1).argmax(axis=1)
    return np.stack([flat_index // grid_width, flat_index % grid_width], axis=1)
