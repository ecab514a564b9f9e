"""Shared test setup: every test is seeded and offline (a test that downloads from its own local server says so by
clearing DISTINIT_OFFLINE) with the hub's offline variables and the download timeout cleared whatever the shell
exported; `gpu` tests skip without CUDA; the device comes from DISTINIT_TEST_DEVICE; `slurm` tests share one real
one-node SLURM cluster (tests/slurm_cluster.py) and skip with a NOTE where it cannot start."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch
from slurm_cluster import ClusterUnavailable, SlurmCluster


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# Set by the CLI's --offline (straight into os.environ) or exported by a cluster's shell: cleared for every test so
# no result depends on the test order or on the user's shell.
CLEARED_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DISTINIT_DOWNLOAD_TIMEOUT")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test reaches the network by accident: a missing weights file fails at once instead of downloading."""
    for variable in CLEARED_VARIABLES:
        # setenv first: delenv of an unset variable records nothing, so one a test sets would outlive it.
        monkeypatch.setenv(variable, "x")
        monkeypatch.delenv(variable)
    monkeypatch.setenv("DISTINIT_OFFLINE", "1")
    for variable in ("NO_PROXY", "no_proxy"):  # tests' own servers listen on this machine: never through a proxy
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:  # the hub read HF_HUB_OFFLINE once, when imported (maybe under --offline)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    yield


@pytest.fixture
def device() -> torch.device:
    """The device tests run on: DISTINIT_TEST_DEVICE (e.g. cuda:0), else CPU."""
    return torch.device(os.environ.get("DISTINIT_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def slurm():
    """A real one-node SLURM cluster for the whole session: pass `slurm.env` to every sbatch/srun/scontrol and to the
    code under test; `slurm.run`, `slurm.submit`, `slurm.wait_for`, `slurm.start_now`; logs in `slurm.logs`."""
    cluster = SlurmCluster()
    try:
        cluster.start()
    except ClusterUnavailable as error:
        pytest.skip(f"NOTE: no SLURM cluster can start here, the slurm tests skip: {error}")
    yield cluster
    cluster.remove()


def pytest_collection_modifyitems(config, items):
    for item in items:
        # a test using the cluster is a `slurm` test even if its marker was forgotten, so -m "not slurm" leaves none
        if "slurm" in getattr(item, "fixturenames", ()) and "slurm" not in item.keywords:
            item.add_marker(pytest.mark.slurm)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
