"""Optical flow for the flow student (distill.flow): shapes, sign of motion, flip, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from distinit.distill import flow


def moving_texture(shift_per_frame: int, frames: int = 3, size: int = 48) -> np.ndarray:
    """A smooth random texture sliding horizontally by `shift_per_frame` pixels each frame: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(0)
    coarse = rng.random((size // 4, size // 4 + 8))
    texture = np.kron(coarse, np.ones((4, 4)))  # blocky texture, wider than the frame
    texture = (texture * 255).astype(np.uint8)
    clips = []
    for index in range(frames):
        offset = 16 - index * shift_per_frame  # content moves right when the window moves left
        window = texture[:, offset : offset + size]
        clips.append(np.repeat(window[:, :, None], 3, axis=2))
    return np.stack(clips)


@pytest.mark.parametrize("method", ["farneback", "tvl1"])
@pytest.mark.parametrize("shift", [2, -2])
def test_horizontal_motion_gives_x_flow_of_its_sign(method, shift):
    if method == "tvl1" and not flow.tvl1_available():
        pytest.skip("OpenCV without the contrib optflow module")
    fields = flow.optical_flow(moving_texture(shift), method)
    assert fields.shape == (2, 48, 48, 2) and fields.dtype == np.float32
    assert np.isfinite(fields).all()
    centre = fields[:, 12:36, 12:36]  # away from the borders, where content enters and leaves
    assert np.sign(np.median(centre[..., 0])) == np.sign(shift)
    assert abs(np.median(centre[..., 0]) - shift) < 0.5
    assert abs(np.median(centre[..., 1])) < 0.25


def test_static_frames_have_no_flow():
    frames = np.repeat(moving_texture(0, frames=1), 3, axis=0)
    assert np.abs(flow.optical_flow(frames)).max() < 0.1  # Farneback leaves a few hundredths at the borders


def test_flip_mirrors_and_negates_x():
    fields = np.random.default_rng(0).normal(0, 5, (2, 4, 6, 2)).astype(np.float32)
    flipped = flow.flip_flow(fields)
    np.testing.assert_array_equal(flipped[..., 0], -fields[:, :, ::-1, 0])
    np.testing.assert_array_equal(flipped[..., 1], fields[:, :, ::-1, 1])
    np.testing.assert_array_equal(flow.flip_flow(flipped), fields)


def test_flow_flip_matches_flow_of_mirrored_frames_in_sign():
    frames = moving_texture(2)
    mirrored = flow.optical_flow(frames[:, :, ::-1])
    assert np.median(mirrored[:, 12:36, 12:36, 0]) < 0  # the mirrored picture moves left


def test_normalisation_clips_and_scales():
    fields = np.array([-40.0, -10.0, 0.0, 10.0, 25.0], dtype=np.float32).reshape(1, 1, 5, 1).repeat(2, axis=3)
    normalised = flow.normalise_flow(fields)
    np.testing.assert_allclose(normalised[0, 0, :, 0], [-1.0, -0.5, 0.0, 0.5, 1.0])
    tensor = flow.flow_to_tensor(np.zeros((3, 4, 5, 2), dtype=np.float32))
    assert tuple(tensor.shape) == (2, 3, 4, 5)


def test_unknown_method_and_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        flow.optical_flow(moving_texture(1), "lucas-kanade")
    with pytest.raises(ValueError):
        flow.optical_flow(moving_texture(1)[:1])
