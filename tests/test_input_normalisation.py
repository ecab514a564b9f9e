"""The input normalisation a network's weights expect: rgb_to_tensor's tables, the Normalisation record, and
how students, checkpoints and exports carry it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distinit.distill.export import export_trunk
from distinit.distill.students import DistillStudent, create_student
from distinit.pipeline.clips.normalisation import (VIDEO_MEAN, VIDEO_NORMALISATION, VIDEO_STD, Normalisation,
                                                   normalisation_table, normalise_video, rgb_to_tensor)
from distinit.pipeline.clips.views import rgb_clip_tensor, video_to_device
from distinit.pipeline.errors import ConfigError

IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_rgb_to_tensor_applies_the_given_normalisation_exactly():
    frames = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    for normalisation in (VIDEO_NORMALISATION, IMAGENET, Normalisation((0.498,) * 3, (0.502,) * 3)):
        video = rgb_to_tensor(frames, normalisation)  # (3, T, H, W)
        scaled = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0
        mean = torch.tensor(normalisation.mean).view(3, 1, 1, 1)
        std = torch.tensor(normalisation.std).view(3, 1, 1, 1)
        torch.testing.assert_close(video, (scaled - mean) / std, rtol=0, atol=1e-6)
    assert torch.equal(rgb_to_tensor(frames), rgb_to_tensor(frames, VIDEO_NORMALISATION))  # the default
    assert not torch.equal(rgb_to_tensor(frames, IMAGENET), rgb_to_tensor(frames))


def test_uint8_clips_normalised_on_the_device_equal_the_host_path_bit_for_bit():
    # Every byte value in every channel, in clips of odd sizes; a batch of two clips, as the loaders collate them.
    every_byte = np.arange(256, dtype=np.uint8).repeat(3).reshape(4, 8, 8, 3)
    noise = np.random.default_rng(5).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    travelling = torch.stack([rgb_clip_tensor(frames) for frames in (every_byte, noise)])  # (2, T, H, W, 3)
    for normalisation in (VIDEO_NORMALISATION, IMAGENET, Normalisation((0.498,) * 3, (0.502,) * 3)):
        host = torch.stack([rgb_to_tensor(frames, normalisation) for frames in (every_byte, noise)])  # (2, 3, T, H, W)
        assert torch.equal(normalise_video(travelling, normalisation), host)
        channels_first = travelling.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W) bytes are taken too
        assert torch.equal(normalise_video(channels_first, normalisation), host)
        on_device = video_to_device(travelling, torch.device("cpu"), normalisation)
        assert on_device.is_contiguous() and torch.equal(on_device, host)
        channels_last = video_to_device(travelling, torch.device("cpu"), normalisation, channels_last=True)
        assert channels_last.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(channels_last, host)
    # Flow (float) and clips normalised on the host pass through; uint8 without a normalisation is refused.
    flow = torch.rand(2, 2, 4, 8, 8)
    assert video_to_device(flow, torch.device("cpu"), None) is flow
    assert video_to_device(flow, torch.device("cpu"), None, flipped=torch.tensor([True, True])) is flow
    with pytest.raises(ValueError, match="normalisation"):
        video_to_device(travelling, torch.device("cpu"), None)
    with pytest.raises(ValueError, match="uint8 clips"):
        normalise_video(travelling.float())
    with pytest.raises(ValueError, match="uint8 clips"):
        normalise_video(torch.zeros(2, 4, 4, 8, 8, dtype=torch.uint8))  # no axis of 3 channels


def test_tables_are_built_once_per_normalisation_and_read_only():
    same = Normalisation([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # lists become tuples: equal and hashable
    assert same == IMAGENET and normalisation_table(same) is normalisation_table(IMAGENET)
    assert normalisation_table(IMAGENET) is not normalisation_table(VIDEO_NORMALISATION)
    assert not normalisation_table(IMAGENET).flags.writeable
    assert VIDEO_NORMALISATION == Normalisation(VIDEO_MEAN, VIDEO_STD)


def test_normalisation_round_trips_and_refuses_nonsense():
    assert Normalisation.from_dict(IMAGENET.to_dict()) == IMAGENET
    with pytest.raises(ConfigError, match="3 means and 3 positive stds"):
        Normalisation((0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="3 means and 3 positive stds"):
        Normalisation((0.5,) * 3, (0.5, 0.0, 0.5))
    with pytest.raises(ConfigError, match="must be"):
        Normalisation.from_dict({"mean": [0.5] * 3})
    with pytest.raises(ConfigError, match="must hold numbers"):
        Normalisation.from_dict({"mean": ["a", "b", "c"], "std": [1, 1, 1]})


def test_students_record_their_normalisation_and_old_architectures_get_the_video_one():
    student = create_student("r3d_18", width="tiny")
    assert student.input_normalisation == VIDEO_NORMALISATION  # what distill trains every RGB student on
    assert student.architecture()["input_normalisation"] == VIDEO_NORMALISATION.to_dict()
    custom = create_student("r3d_18", width="tiny", input_normalisation=IMAGENET)
    assert DistillStudent.from_architecture(custom.architecture()).input_normalisation == IMAGENET
    old = {key: value for key, value in student.architecture().items() if key != "input_normalisation"}
    assert DistillStudent.from_architecture(old).input_normalisation == VIDEO_NORMALISATION
    assert create_student("r3d_18", width="tiny", in_channels=2).input_normalisation is None
    with pytest.raises(ConfigError, match="for RGB input"):
        create_student("r3d_18", width="tiny", in_channels=2, input_normalisation=IMAGENET)


def test_export_states_the_normalisation_beside_the_trunk(tmp_path):
    student = create_student("r3d_18", input_normalisation=IMAGENET)
    torch.save({"model": student.state_dict(), "architecture": student.architecture()}, tmp_path / "checkpoint.pt")
    written = export_trunk(tmp_path / "checkpoint.pt", tmp_path / "trunk.pt")
    assert written["input_normalisation"] == IMAGENET.to_dict()
    heads = torch.load(written["heads"], weights_only=True)
    assert heads["input_normalisation"] == heads["architecture"]["input_normalisation"] == IMAGENET.to_dict()
