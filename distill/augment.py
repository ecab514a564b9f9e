"""What stage two adds to a clip's crop and flip (pipeline.clips.views): the teachers' view boxes and targets.

Given the part of the frame the teachers saw (their view box, stored by stage one) and a fraction f, the crop keeps
at least f of its area inside that box (pipeline.clips.views.crop_box): a classifier teacher saw only the centre
square of a wide frame, and the student should not be asked for its label from pixels it never saw. The box a clip
keeps is the part every teacher saw (`intersect_view_boxes`). A flip mirrors the cropped pixels themselves, so the
student still sees only pixels from inside the box (mirrored, as a teacher shown the mirrored frame would).

Heatmap targets are drawn over the crop itself, from the keypoint coordinates stage one stored
(distill.keypoint_heatmaps), so they follow the crop. A flip mirrors the drawn maps along the width
axis and swaps left/right keypoint channels (`flip_targets`), exactly as the frames are mirrored.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from distinit.distill.windows import KIND_HEATMAPS
from distinit.pipeline.shards import ShardError
from distinit.pipeline.shards.format import KEYPOINT_FLIP_INDEX_ATTRIBUTE as FLIP_INDEX_ATTRIBUTE

logger = logging.getLogger(__name__)

ViewBox = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the frame's width and height
WHOLE_FRAME: ViewBox = (0.0, 0.0, 1.0, 1.0)


def intersect_view_boxes(boxes: Sequence[np.ndarray]) -> ViewBox:
    """The part of the frame every one of `boxes` ((N, 4) arrays, one per teacher and row) covers: the whole frame
    for none; an empty intersection (teachers that saw disjoint parts) shrinks to a line, inside none of it."""
    if not boxes:
        return WHOLE_FRAME
    stacked = np.concatenate([np.asarray(box, dtype=np.float64).reshape(-1, 4) for box in boxes])  # (M, 4)
    x0, y0, x1, y1 = (float(value) for value in box_intersection(stacked, axis=0))
    return x0, y0, x1, y1


def box_intersection(boxes: np.ndarray, axis: int) -> np.ndarray:
    """The intersection of (..., 4) float64 boxes along `axis`; an empty one shrinks to a line (x1 >= x0, y1 >= y0)."""
    low = boxes[..., :2].max(axis=axis)
    return np.concatenate([low, np.maximum(boxes[..., 2:].min(axis=axis), low)], axis=-1)


def keypoint_flip_permutation(
    class_names: Sequence[str] | None, channels: int, flip_index: Sequence[int] | None = None
) -> np.ndarray:
    """Channel order of the mirrored image's heatmaps: mirrored[k] = heatmaps[permutation[k]].

    The teacher's own `flip_index` (stored with its keypoints output) wins; without one, named channels swap
    `left_X` with `right_X`; anything else keeps its order (with a warning).
    """
    if flip_index is not None:
        permutation = np.asarray(flip_index, dtype=np.int64)
        if permutation.shape != (channels,) or sorted(permutation.tolist()) != list(range(channels)):
            raise ShardError(f"flip_index {list(flip_index)} stored with the keypoints is not a permutation of "
                             f"{channels} keypoint channels; re-run extract")
        return permutation
    if class_names is None:
        logger.warning("%d unnamed heatmap channels: a flip mirrors them but cannot swap left and right", channels)
        return np.arange(channels, dtype=np.int64)
    names = list(class_names)
    position = {name: index for index, name in enumerate(names)}
    permutation = np.arange(len(names), dtype=np.int64)
    for index, name in enumerate(names):
        for side, other in (("left", "right"), ("right", "left")):
            if name.startswith(side):
                partner = other + name[len(side):]
                if partner in position:
                    permutation[index] = position[partner]
    if (permutation == np.arange(len(names))).all():
        logger.warning("heatmap channels %s have no left/right pairs: a flip mirrors them without swapping", names[:3])
    return permutation


def heatmap_flip_plan(teachers: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """`<teacher>/<output>` -> channel permutation, for every output of kind "heatmaps"."""
    plan = {}
    for teacher in teachers:
        for output in teacher["outputs"]:
            if output.get("kind") == KIND_HEATMAPS:
                shape = tuple(output["shape"])
                flip_index = (output.get("attributes") or {}).get(FLIP_INDEX_ATTRIBUTE)
                key = f"{teacher['name']}/{output['name']}"
                try:
                    plan[key] = keypoint_flip_permutation(output.get("class_names"), shape[0], flip_index)
                except ShardError as error:
                    raise ShardError(f"teacher output {key}: {error}") from None
    return plan


def flip_targets(targets: Mapping[str, np.ndarray], plan: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Targets of the mirrored clip: heatmaps (K, G, G) swap left/right channels and mirror the width
    axis; every other output (class scores, flags, counts) does not change under a mirror."""
    flipped = dict(targets)
    for key, permutation in plan.items():
        if key in flipped:
            flipped[key] = np.ascontiguousarray(np.asarray(flipped[key])[permutation][..., ::-1])
    return flipped
