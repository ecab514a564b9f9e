"""One place that seeds everything (STYLE item 8): random, numpy, torch, plus per-worker seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed this process; ranks get different streams. `deterministic` also asks torch for
    deterministic kernels (slower on GPU; CPU kernels are already deterministic here)."""
    process_seed = seed + 1000 * rank
    random.seed(process_seed)
    np.random.seed(process_seed % 2**32)
    torch.manual_seed(process_seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive numpy/random seeds from torch's per-worker seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def own_rng_state(saved: dict | list, rank: int) -> dict | None:
    """This rank's entry of a checkpoint's RNG states: a list indexed by rank; checkpoints before
    distill-2 held rank 0's only (a dict), which no other rank should take as its own (None: keep the seed)."""
    if isinstance(saved, dict):
        return saved if rank == 0 else None
    return saved[rank] if rank < len(saved) else None  # a run resumed on more processes: the new ranks keep the seed
