"""Shared test setup: every test is seeded and offline (a test that downloads from its own local server says so by
clearing DISTINIT_OFFLINE); `gpu` tests skip without CUDA; the device comes from DISTINIT_TEST_DEVICE."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test reaches the network by accident: a missing weights file fails at once instead of downloading."""
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    yield


@pytest.fixture
def device() -> torch.device:
    """The device tests run on: DISTINIT_TEST_DEVICE (e.g. cuda:0), else CPU."""
    return torch.device(os.environ.get("DISTINIT_TEST_DEVICE", "cpu"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
