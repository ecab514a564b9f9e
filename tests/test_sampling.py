"""Teacher frame sampling: fixed rate of video time, capped, deterministic."""

import pytest

from distinit.extract.sampling import SampledFrame, SamplingConfig, sample_frames
from distinit.pipeline.errors import ConfigError


def test_two_frames_per_second_at_interval_centres():
    frames = sample_frames(duration=3.0, fps=25.0, frame_count=75, config=SamplingConfig(frames_per_second=2.0))
    assert [f.t_seconds for f in frames] == [0.25, 0.75, 1.25, 1.75, 2.25, 2.75]
    assert [f.frame_index for f in frames] == [6, 18, 31, 43, 56, 68]


def test_cap_spreads_frames_over_the_whole_video():
    frames = sample_frames(duration=100.0, fps=30.0, frame_count=3000, config=SamplingConfig(2.0, max_frames_per_video=5))
    assert len(frames) == 5
    assert frames[0].t_seconds == 0.25 and frames[-1].t_seconds == 99.75


def test_slow_video_gives_each_frame_once_and_short_video_one_frame():
    frames = sample_frames(duration=2.0, fps=1.0, frame_count=2, config=SamplingConfig(frames_per_second=4.0))
    assert [f.frame_index for f in frames] == [0, 1]
    assert sample_frames(0.3, 25.0, 8, SamplingConfig()) == [SampledFrame(0.25, 6)]
    assert sample_frames(0.0, 25.0, 0, SamplingConfig()) == []


def test_deterministic_and_validated():
    config = SamplingConfig(frames_per_second=1.5, max_frames_per_video=7)
    assert sample_frames(9.7, 29.97, 290, config) == sample_frames(9.7, 29.97, 290, config)
    with pytest.raises(ConfigError):
        SamplingConfig(frames_per_second=0)
    with pytest.raises(ConfigError):
        SamplingConfig(max_frames_per_video=0)
