"""Human-readable summaries of a target cache: what it holds, and what the teachers saw in one video."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distinit.pipeline.shards import format as fmt
from distinit.pipeline.shards.reader import TargetStore

CONFIDENT_KEYPOINT = 0.5  # the confidence every backend's map puts at its own visibility threshold


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 so large logits do not overflow."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


@dataclass
class _OutputSummary:
    """Running sums for one output, accumulated block by block over every shard."""

    rows: int = 0
    total: float = 0.0
    total_squares: float = 0.0
    per_class: np.ndarray | None = None
    present_rows: int = 0
    confidence_total: float = 0.0
    confident_keypoints: int = 0
    confident_inside: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, values: np.ndarray, spec: dict[str, Any]) -> None:
        values = values.astype(np.float64)  # (N, *shape)
        self.rows += len(values)
        self.total += float(values.sum())
        self.total_squares += float(np.square(values).sum())
        if spec.get("class_names") and spec["kind"] in (fmt.KIND_LOGITS, fmt.KIND_MULTILABEL):
            scores = softmax(values) if spec["kind"] == fmt.KIND_LOGITS else values
            block_sum = scores.sum(axis=0)
            self.per_class = block_sum if self.per_class is None else self.per_class + block_sum
        if spec["kind"] == fmt.KIND_FLAG:
            self.present_rows += int((values.reshape(len(values), -1) > 0.5).any(axis=1).sum())
        elif spec["kind"] == fmt.KIND_KEYPOINTS:
            self._add_keypoints(values)

    def _add_keypoints(self, keypoints: np.ndarray) -> None:
        """(N, K, 3) = (x / width, y / height, confidence): who is seen, how surely, and where."""
        confidence = keypoints[..., 2]  # (N, K)
        seen = (confidence > 0).any(axis=1)
        self.present_rows += int(seen.sum())
        self.confidence_total += float(confidence[seen].mean(axis=1).sum()) if seen.any() else 0.0
        confident = confidence >= CONFIDENT_KEYPOINT
        inside = ((keypoints[..., :2] >= 0) & (keypoints[..., :2] <= 1)).all(axis=-1)
        self.confident_keypoints += int(confident.sum())
        self.confident_inside += int((confident & inside).sum())


def _keypoints_line(keypoints: np.ndarray) -> str:
    """One frame's (K, 3) keypoints in a few words."""
    confident = keypoints[:, 2] >= CONFIDENT_KEYPOINT
    if not confident.any():
        return f"0/{len(keypoints)} (nobody, or nobody sure)"
    x, y = keypoints[confident, :2].mean(axis=0)
    return f"{int(confident.sum())}/{len(keypoints)} at x {x:.2f}, y {y:.2f}"


def _top_classes(scores: np.ndarray, class_names: list[str], top_k: int) -> str:
    order = np.argsort(-scores, kind="stable")[:top_k]
    return ", ".join(f"{class_names[index]} {scores[index]:.2f}" for index in order)


def _summary_lines(key: str, spec: dict[str, Any], summary: _OutputSummary, top_k: int) -> list[str]:
    count = max(summary.rows * int(np.prod(spec["shape"], dtype=np.int64)), 1)
    mean = summary.total / count
    std = float(np.sqrt(max(summary.total_squares / count - mean * mean, 0.0)))
    lines = [f"  {key}  shape {tuple(spec['shape'])} {spec['dtype']} ({spec['kind']}): mean {mean:.4g}, std {std:.4g}"]
    if summary.per_class is not None and summary.rows:
        label = "mean softmax" if spec["kind"] == fmt.KIND_LOGITS else "mean score"
        lines.append(f"    top classes ({label}): {_top_classes(summary.per_class / summary.rows, spec['class_names'], top_k)}")
    if spec["kind"] == fmt.KIND_FLAG and summary.rows:
        lines.append(f"    {spec['name']} rate: {summary.present_rows / summary.rows:.1%} of frames")
    elif spec["kind"] == fmt.KIND_KEYPOINTS and summary.rows:
        mean_confidence = summary.confidence_total / max(summary.present_rows, 1)
        inside = summary.confident_inside / max(summary.confident_keypoints, 1)
        grid = (spec.get("attributes") or {}).get("heatmap_grid")
        lines.append(
            f"    a person's keypoints in {summary.present_rows / summary.rows:.1%} of frames, mean confidence "
            f"{mean_confidence:.2f}; {inside:.1%} of confident (>= {CONFIDENT_KEYPOINT}) keypoints inside the frame; "
            f"stage two renders {grid}x{grid} heatmaps over each crop"
        )
    return lines


def _box_text(box: np.ndarray) -> str:
    x0, y0, x1, y1 = (float(value) for value in box)
    return "the whole frame" if (x0, y0, x1, y1) == (0.0, 0.0, 1.0, 1.0) else f"x {x0:.3f}..{x1:.3f}, y {y0:.3f}..{y1:.3f}"


def _view_line(boxes: np.ndarray) -> str:
    """How much of the frame a teacher saw over the cache's rows: its box when every row has one, else the range."""
    if not len(boxes):
        return "    view: no rows"
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    distinct = np.unique(boxes, axis=0)
    where = _box_text(distinct[0]) if len(distinct) == 1 else f"{len(distinct)} boxes (one per frame shape)"
    return f"    view: {where}; {areas.mean():.1%} of the frame on average (stage two crops inside it)"


def _kind_note(teacher: dict[str, Any]) -> str:
    """" (places365)" for an instance named other than its kind; "" otherwise (and for shards without a kind)."""
    kind = teacher.get("kind")
    return f" ({kind})" if kind and kind != teacher["name"] else ""


def _teacher_line(teacher: dict[str, Any]) -> str:
    sha = str(teacher.get("weights_sha256") or "none")[:12]
    return (
        f"teacher {teacher['name']}{_kind_note(teacher)}: backend {teacher.get('backend', '?')}, weights sha256 {sha}, "
        f"input {teacher.get('input_size')}, mean {teacher.get('mean')}, std {teacher.get('std')}"
    )


def _store_lines(store: TargetStore, top_k: int) -> list[str]:
    manifest = store.manifest
    lines = [
        f"{store.targets_dir}: dataset {manifest.get('dataset')}, stage key {manifest['stage_key']}, "
        f"code version {manifest.get('code_version')}",
        f"rows {len(store)}, videos {manifest.get('total_videos')}, shards {manifest['shard_count']}, "
        f"skipped videos {manifest.get('skipped_count', len(manifest.get('skipped', [])))}, "
        f"stored video layouts {(manifest.get('layouts') or {}).get('videos', 0)}",
    ]
    summaries = {key: _OutputSummary() for key in store.output_names}
    specs = {key: store.output_spec(key) for key in store.output_names}
    box_keys = store.view_box_keys
    boxes: dict[str, list[np.ndarray]] = {key: [] for key in box_keys.values()}
    for _, block in store.iter_blocks([*store.output_names, *box_keys.values()]):
        for key, values in block.items():
            if key in boxes:
                boxes[key].append(values.astype(np.float64))
            else:
                summaries[key].add(values, specs[key])
    for teacher in store.teachers:
        lines.append(_teacher_line(teacher))
        lines.append(_view_line(np.concatenate(boxes[box_keys[teacher["name"]]] or [np.zeros((0, 4))])))
        for output in teacher["outputs"]:
            key = fmt.output_key(teacher["name"], output["name"])
            lines.extend(_summary_lines(key, output, summaries[key], top_k))
    return lines


def _video_lines(store: TargetStore, video_id: str, top_k: int) -> list[str]:
    rows = store.rows_for_video(video_id)
    times = rows[fmt.T_SECONDS]
    lines = [f"video {video_id}: {len(times)} teacher frames, t {times.min():.2f}s .. {times.max():.2f}s"]
    for teacher, boxes in store.view_boxes_for_video(video_id).items():
        seen = ", ".join(_box_text(box) for box in np.unique(boxes, axis=0))
        lines.append(f"  {teacher} saw {seen}")
    for key in store.output_names:
        spec = store.output_spec(key)
        values = rows[key]
        if spec.get("class_names") and spec["kind"] in (fmt.KIND_LOGITS, fmt.KIND_MULTILABEL):
            scores = softmax(values) if spec["kind"] == fmt.KIND_LOGITS else values
            lines.append(f"  {key} (top {top_k} per frame):")
            lines.extend(f"    t={t:.2f}s  {_top_classes(frame, spec['class_names'], top_k)}" for t, frame in zip(times, scores))
        elif spec["kind"] == fmt.KIND_FLAG:
            flags = " ".join(f"{value:g}" for value in values.reshape(len(values), -1)[:, 0])
            lines.append(f"  {key} per frame: {flags}")
        elif spec["kind"] == fmt.KIND_KEYPOINTS:
            lines.append(f"  {key} per frame (confident keypoints, their mean x and y as fractions of the frame):")
            lines.extend(f"    t={t:.2f}s  {_keypoints_line(frame)}" for t, frame in zip(times, values))
        else:
            lines.append(f"  {key}: mean {values.mean():.4g}, max {values.max():.4g} over the video")
    return lines


def inspect(targets_dir: str | os.PathLike, video_id: str | None = None, top_k: int = 5) -> list[str]:
    """Lines describing the cache (rows, videos, per-teacher output summaries), and one video's frames if asked."""
    with TargetStore(targets_dir) as store:
        lines = _store_lines(store, top_k)
        if video_id is not None:
            lines.extend(_video_lines(store, video_id, top_k))
    return lines
