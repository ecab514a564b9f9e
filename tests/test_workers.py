"""Worker counts never oversubscribe the machine: min(asked, available cores), so torch does not warn."""

from __future__ import annotations

import warnings

import torch

from pipeline import devices
from pipeline.devices import available_cores, capped_workers


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
