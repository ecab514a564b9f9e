"""Worker counts never oversubscribe the machine: min(asked, this process's share of the cores), so torch does not
warn and 8 ranks of a node do not each claim every core; "auto" is that share less one."""

from __future__ import annotations

import warnings

import pytest
import torch

from distinit.pipeline import devices
from distinit.pipeline.devices import available_cores, capped_workers


def test_workers_are_capped_at_the_available_cores(monkeypatch):
    assert available_cores() >= 1
    monkeypatch.setattr(devices, "available_cores", lambda: 2)
    assert [capped_workers(asked) for asked in (0, 1, 2, 4, 16)] == [0, 1, 2, 2, 2]


def test_a_capped_loader_does_not_warn_about_too_many_workers():
    dataset = torch.utils.data.TensorDataset(torch.arange(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "suggested max number of worker" is a UserWarning
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=capped_workers(available_cores() + 3))
        assert sum(len(batch[0]) for batch in loader) == 4


def test_ranks_on_a_node_share_its_cores(monkeypatch):
    monkeypatch.setattr(devices, "available_cores", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert capped_workers("auto") == 63 and capped_workers(100) == 64
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun's, for 8 ranks on this node
    assert devices.cores_per_rank() == 8
    assert [capped_workers(asked) for asked in (0, 4, 8, 16, "auto")] == [0, 4, 8, 8, 7]
    monkeypatch.setattr(devices, "available_cores", lambda: 4)
    assert capped_workers("auto") == 1 and capped_workers(2) == 1  # fewer cores than ranks: one each


def test_the_loader_holding_training_back_is_named():
    from distinit.distill.config import DistillConfig
    from distinit.distill.train import data_wait_message
    from distinit.pipeline.errors import ConfigError

    assert data_wait_message(0.05, 2) is None
    message = data_wait_message(0.4, 2)
    assert "40% of the epoch waited for batches with 2 loader workers per rank" in message and "\n" not in message
    assert DistillConfig().workers == "auto" and DistillConfig(workers=3).workers == 3
    for bad in ("many", -1):
        with pytest.raises(ConfigError, match="workers must be auto or a number >= 0"):
            DistillConfig(workers=bad)
