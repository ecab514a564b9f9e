"""The shuffled-targets control (`shuffle_targets`): a student trained on targets that belong to other videos.

If DistInit's gain comes from what the teachers say about each clip, a student trained on the same
targets dealt out to the wrong clips should lose it. The control keeps everything else: the same target
values with the same marginal distribution, the same clips, the same schedule.

- Donors: a fixed derangement of the dataset's videos, drawn from the seed alone (`target_donors`): no
  video keeps its own targets, and every video gives its targets to exactly one other, so each teacher row
  is used as often as without shuffling. It never changes between epochs, workers or resumes.
- Rows: a sample of video v still takes its window on v's own timeline (the student sees v's pixels) but
  its targets from the donor's teacher rows whose times fall in the same window (judged on v's clock by
  the rule distill.windows uses for v's own rows); when the donor has none there (shorter, or sampled
  elsewhere), the one donor row nearest the window's relative position: the window's centre placed
  between v's first and last teacher times, carried over to the donor's (`donor_rows_in_window`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from distinit.pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

# Mixed into the seed so the derangement's random stream is not any sample's (see TargetClipDataset._rng).
DONOR_STREAM = 0xD0E0


def target_donors(video_ids: Sequence[str], seed: int, every_video: Sequence[str]) -> dict[str, str]:
    """video -> the video whose targets it takes: a random permutation of the sorted ids, each taking the
    next one's targets (one cycle through all, so a derangement). A lone video (a held-out side of one)
    takes a seeded pick among `every_video`'s others."""
    ids = sorted(set(video_ids))
    rng = np.random.default_rng([int(seed), DONOR_STREAM])
    if len(ids) >= 2:
        order = [ids[position] for position in rng.permutation(len(ids))]
        return {video_id: order[(position + 1) % len(order)] for position, video_id in enumerate(order)}
    others = sorted(set(every_video) - set(ids))
    if not ids or not others:
        raise ConfigError("shuffle_targets needs at least two videos with targets; extract more videos or turn it off")
    donor = others[int(rng.integers(len(others)))]
    logger.info("shuffle_targets: the only video %s takes the targets of %s", ids[0], donor)
    return {ids[0]: donor}


def donor_rows_in_window(
    donor_times: np.ndarray, own_times: np.ndarray, fps: float, start: int, span_frames: int
) -> np.ndarray:
    """Boolean mask of the donor's rows standing in for the window [start, start + span_frames] of a video
    shown at `fps` whose own teacher rows are at `own_times` (see the module docstring); never empty."""
    donor_times = np.asarray(donor_times, dtype=np.float64)
    if len(donor_times) == 0:
        raise ValueError("a donor video without teacher rows")
    # The same floor rule as teacher_frame_indices, without its clamp to the own video's last frame.
    donor_frames = np.floor(donor_times * fps + 1e-6)
    inside = (donor_frames >= start) & (donor_frames <= start + span_frames)
    if inside.any():
        return inside
    own_first, own_last = float(np.min(own_times)), float(np.max(own_times))
    centre = (start + span_frames / 2) / fps
    relative = 0.5 if own_last <= own_first else float(np.clip((centre - own_first) / (own_last - own_first), 0, 1))
    wanted = donor_times.min() + relative * (donor_times.max() - donor_times.min())
    nearest = np.zeros(len(donor_times), dtype=bool)
    nearest[int(np.argmin(np.abs(donor_times - wanted)))] = True
    return nearest
