"""Where a training clip sits in its video, and what its teacher target is: pure functions of frame indices.

Everything here works in frame indices of the decoded video (frame f is displayed from f / fps seconds,
the rule `pipeline.video` decodes by), so placement is exact and a cached clip equals a decoded one.

A clip of `frames` frames taken every `stride`-th frame from frame `start` covers the frames
start .. start + span_frames, span_frames = (decoded_frames - 1) * stride; in seconds
[start / fps, start / fps + span_frames / fps], a teacher frame "inside" the window is one whose frame
index lies in that interval (for a strided clip it need not be one of the decoded frames). Starts are
multiples of the stride (pipeline.clips.spec.ClipSpec.start_grid): the student loses at most stride - 1 frames of
temporal jitter, and in exchange `--cache-clips` only has to keep every stride-th frame of a video.

Teacher rows of one video are its teacher frames (stage one samples e.g. 2 frames/s), so clip length,
stride and aggregation can change here without re-extracting.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from distinit.pipeline.errors import ConfigError

TARGET_AGGREGATIONS = ("mean", "random")
KIND_HEATMAPS = "heatmaps"
KIND_FLAG = "flag"
KIND_COUNT = "count"
KIND_LOGITS = "logits"
KIND_EMBEDDING = "embedding"


def teacher_frame_indices(t_seconds: np.ndarray, fps: float, frame_count: int) -> np.ndarray:
    """Frame index displayed at each teacher time, as `pipeline.video` decodes: floor(t * fps + 1e-6), clamped."""
    times = np.asarray(t_seconds, dtype=np.float64)
    return np.clip(np.floor(times * fps + 1e-6).astype(np.int64), 0, max(frame_count - 1, 0))


def last_start(frame_count: int, span_frames: int, grid: int) -> int:
    """The latest grid-aligned start: the first multiple of `grid` at or after frame_count - 1 - span_frames.

    Rounding up (not down) lets a window reach a teacher frame on the video's last frames; its last
    decoded frame then lies at most grid - 1 frames past the end, where the decoder repeats the last
    frame. A video shorter than one clip starts at 0 (and is padded the same way).
    """
    latest = frame_count - 1 - span_frames
    return 0 if latest <= 0 else grid * math.ceil(latest / grid)


def start_candidates(teacher_frame: int, frame_count: int, span_frames: int, grid: int) -> np.ndarray:
    """Every grid-aligned start in [0, last_start] whose window contains `teacher_frame` (never empty
    when span_frames >= grid - 1, which ClipSpec's start_grid guarantees)."""
    lowest = max(0, teacher_frame - span_frames)
    highest = min(teacher_frame, last_start(frame_count, span_frames, grid))
    first = grid * math.ceil(lowest / grid)
    candidates = np.arange(first, highest + 1, grid, dtype=np.int64)
    if len(candidates) == 0:
        raise ValueError(f"no start of a {span_frames}-frame window on a {grid}-frame grid holds frame {teacher_frame}")
    return candidates


def train_window_start(
    teacher_frames: np.ndarray, frame_count: int, span_frames: int, grid: int, rng: np.random.Generator
) -> int:
    """A random start: a teacher frame chosen uniformly, then a grid-aligned start uniformly among those
    whose window holds it, so every window contains at least that frame."""
    teacher_frame = int(teacher_frames[rng.integers(len(teacher_frames))])
    candidates = start_candidates(teacher_frame, frame_count, span_frames, grid)
    return int(candidates[rng.integers(len(candidates))])


def eval_window_start(
    teacher_frames: np.ndarray, frame_count: int, span_frames: int, grid: int, clip_number: int = 0, clips_per_video: int = 1
) -> int:
    """A deterministic start centred on a teacher frame: the middle one for a single clip; for several
    clips per video, clip c takes the teacher frame at the middle of the c-th of equal parts."""
    position = ((2 * clip_number + 1) * len(teacher_frames)) // (2 * clips_per_video)
    teacher_frame = int(teacher_frames[min(position, len(teacher_frames) - 1)])
    candidates = start_candidates(teacher_frame, frame_count, span_frames, grid)
    centred = teacher_frame - span_frames / 2
    # Nearest to centred; ties go to the earlier start so the choice never depends on float noise.
    return int(candidates[np.argmin(np.abs(candidates - centred))])


def frames_in_window(teacher_frames: np.ndarray, start: int, span_frames: int) -> np.ndarray:
    """Boolean mask of the teacher frames inside [start, start + span_frames]."""
    teacher_frames = np.asarray(teacher_frames)
    return (teacher_frames >= start) & (teacher_frames <= start + span_frames)


def heatmap_flags(teachers: list[dict]) -> dict[str, str]:
    """`<teacher>/<heatmaps output>` -> `<teacher>/<flag output>` for teachers with exactly one flag beside
    their heatmaps (coco-keypoints' person_present says whether the heatmaps hold a person at all). Pose
    teachers store keypoints; pass `distill.keypoint_heatmaps.rendered_teachers` to see their drawn heatmaps."""
    masks = {}
    for teacher in teachers:
        outputs = teacher["outputs"]
        flags = [output["name"] for output in outputs if output.get("kind") == KIND_FLAG]
        for output in outputs:
            if output.get("kind") == KIND_HEATMAPS and len(flags) == 1:
                masks[f"{teacher['name']}/{output['name']}"] = f"{teacher['name']}/{flags[0]}"
    return masks


def aggregate_targets(
    rows: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    mode: str,
    rng: np.random.Generator | None = None,
    heatmap_masks: Mapping[str, str] | None = None,
    temperature: float = 1.0,
) -> dict[str, np.ndarray]:
    """One target per output from the N >= 1 teacher frames inside a window: rows[key] is (N, *shape).

    mode "random": every output from the same one frame, chosen with `rng`. mode "mean": the window's
    target is the mixture of what its frames' teachers said, each output in its own terms:
    - logits: the mixture of the frames' distributions at `temperature` T, written back as logits
      (`mixture_logits`), so the loss's softmax(target / T) is exactly the mean of softmax(logits_i / T).
      Averaging the logits instead would give a geometric mixture: one frame at p(dog) = 0.96 and one flat
      frame would make 0.13, not 0.48;
    - multilabel scores (objects), counts: the mean (scores are already probabilities);
    - flags: the max over frames (any person seen);
    - embeddings: the mean of the frames' L2-normalised embeddings (`mean_direction`);
    - heatmaps (drawn over the crop beforehand, distill.keypoint_heatmaps) with a flag in `heatmap_masks`:
      the mean over the frames whose flag is set, so a frame without a person (all-zero maps) does not
      dilute the others; all zero when no frame has a person, which the flag's max then says too. A
      keypoint that leaves the crop in some frames sums to less than 1 (the loss renormalises each map).
    """
    if mode not in TARGET_AGGREGATIONS:
        raise ConfigError(f"target aggregation must be one of {TARGET_AGGREGATIONS}, got {mode!r}")
    counts = {len(values) for values in rows.values()}
    if len(counts) != 1 or counts == {0}:
        raise ValueError(f"aggregating needs the same number (>= 1) of frames for every output, got {sorted(counts)}")
    if mode == "random":
        if rng is None:
            raise ValueError("target aggregation 'random' needs an rng")
        chosen = int(rng.integers(counts.pop()))
        return {key: np.asarray(values[chosen], dtype=np.float32) for key, values in rows.items()}
    heatmap_masks = heatmap_masks or {}
    targets = {}
    for key, values in rows.items():
        values = np.asarray(values, dtype=np.float32)
        if kinds.get(key) == KIND_FLAG:
            targets[key] = values.max(axis=0)
        elif kinds.get(key) == KIND_LOGITS:
            targets[key] = mixture_logits(values, temperature)
        elif kinds.get(key) == KIND_EMBEDDING:
            targets[key] = mean_direction(values)
        elif key in heatmap_masks and heatmap_masks[key] in rows:
            present = np.asarray(rows[heatmap_masks[key]]) > 0
            targets[key] = values[present].mean(axis=0) if present.any() else np.zeros_like(values[0])
        else:
            targets[key] = values.mean(axis=0)
    return {key: np.asarray(value, dtype=np.float32) for key, value in targets.items()}


def mixture_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) logits of N frames -> (C,) logits z with softmax(z / T) = mean_i softmax(logits_i / T).

    z = T * log(mean_i softmax(logits_i / T)), computed in log space (float64) so confident frames
    (probabilities ~1e-30) stay finite. One frame gives back its own logits unchanged (the same
    distribution at every temperature).
    """
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0; got {temperature}")
    if len(logits) == 1:
        return np.asarray(logits[0], dtype=np.float32)
    scaled = np.asarray(logits, dtype=np.float64) / temperature  # (N, C)
    log_probabilities = scaled - np.logaddexp.reduce(scaled, axis=1)[:, None]  # (N, C)
    log_mixture = np.logaddexp.reduce(log_probabilities, axis=0) - math.log(len(scaled))  # (C,)
    return (temperature * log_mixture).astype(np.float32)


def mean_direction(embeddings: np.ndarray) -> np.ndarray:
    """(N, D) embeddings of N frames -> (D,) mean of their L2-normalised vectors.

    The loss compares directions only (cosine), so each frame gets an equal vote whatever its norm (a raw mean
    would let the frame with the largest embedding decide). And it is what the per-frame losses agree on: the
    direction u maximising sum_i cos(u, e_i) is that of sum_i e_i / |e_i|, so a student fitting this target
    fits the window's frames together as well as one direction can. Left unnormalised: its length (1 when the
    frames agree, less when they differ) is ignored by the loss and says how much the window's frames agree.
    An all-zero frame counts as zero.
    """
    values = np.asarray(embeddings, dtype=np.float64)  # (N, D)
    norms = np.linalg.norm(values, axis=1, keepdims=True)  # (N, 1)
    unit = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    return unit.mean(axis=0).astype(np.float32)
