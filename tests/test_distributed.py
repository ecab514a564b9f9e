"""Stage two under DDP, two gloo processes on the CPU: a non-finite loss on one rank stops every rank, an epoch
resumed mid-way from each rank's own running figures reports the whole epoch's, the keypoint term's global
normalisation over real all-reduces, and the reported keypoint figure is that of one process over all the clips.

Each test forks two processes (a spawn re-imports torch in each: seconds instead of a fraction of one; the
children use one CPU thread and no CUDA, which keeps forking safe) and waits at most PROCESS_TIMEOUT_S for
them: a rank left hanging in an all-reduce fails the test instead of hanging it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as multiprocessing
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from distinit.distill.config import DistillConfig
from distinit.distill.checkpoint import own_epoch_progress
from distinit.pipeline.training.distributed import all_gather_objects, init_distributed, shutdown, sum_over_ranks
from distinit.distill.heads import HeadSpec
from distinit.pipeline.training.loss_tracking import NONFINITE_CHECK_EVERY
from distinit.distill.losses import DistillationLoss
from distinit.distill.train import TrainingError, evaluate, train_one_epoch

PROCESS_TIMEOUT_S = 60
WORLD_SIZE = 2
CLASSIFIER = HeadSpec("teacher/logits", "logits", (5,))
KEYPOINTS = HeadSpec("coco-keypoints/heatmaps", "heatmaps", (3, 4, 4), mask_key="coco-keypoints/person_present")


class TinyStudent(torch.nn.Module):
    """(B, 3, T, H, W) video -> {"teacher/logits": (B, 5)}."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 5)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return {CLASSIFIER.key: self.linear(video.mean(dim=(2, 3, 4)))}


class LossTurningNaN(DistillationLoss):
    """The real loss, made NaN from call `nan_from_call` on (counted from 1); never when it is None."""

    def __init__(self, heads, nan_from_call: int | None):
        super().__init__(heads)
        self.nan_from_call = nan_from_call
        self.calls = 0

    def __call__(self, predictions, targets):
        terms = super().__call__(predictions, targets)
        self.calls += 1
        if self.nan_from_call is not None and self.calls >= self.nan_from_call:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def _train_with_nan_on_rank_1(context) -> dict:
    torch.manual_seed(context.rank)
    steps = NONFINITE_CHECK_EVERY + 5
    loader = [{"video": torch.randn(2, 3, 2, 4, 4), "targets": {CLASSIFIER.key: torch.randn(2, 5)}} for _ in range(steps)]
    model = DistributedDataParallel(TinyStudent())
    loss_fn = LossTurningNaN([CLASSIFIER], nan_from_call=3 if context.rank == 1 else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = DistillConfig(lr=0.01, warmup_steps=0, epochs=1, save_every_steps=1000)
    state = {"step": 0, "epoch": 0, "stopped": False}
    checkpoints = []
    with tqdm(disable=True) as progress:
        try:
            train_one_epoch(model, loader, loss_fn, optimizer, None, torch.autocast("cpu", enabled=False), state,
                            config, context, steps, progress, lambda epoch_progress: checkpoints.append(state["step"]))
        except TrainingError as error:
            return {"error": str(error), "step": state["step"], "checkpoints": checkpoints}
    return {"error": None, "step": state["step"], "checkpoints": checkpoints}


def _epoch_resumed_mid_way(context) -> dict:
    """The same epoch run straight, and stopped after 2 of its 4 steps then resumed, with each rank's running
    figures gathered as a checkpoint keeps them and the rank's own entry taken back."""
    torch.manual_seed(context.rank)  # each rank its own clips, so each rank's running sums differ
    loader = [{"video": torch.randn(2, 3, 2, 4, 4), "targets": {CLASSIFIER.key: torch.randn(2, 5)}} for _ in range(4)]
    outcome = {}
    for stop in (None, 2):
        torch.manual_seed(100)
        model = DistributedDataParallel(TinyStudent())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        state, saved = {"step": 0, "epoch": 0, "stopped": False}, []
        config = DistillConfig(lr=0.01, warmup_steps=0, epochs=1, save_every_steps=1000, stop_after_steps=stop)

        def run(batches, config, resumed):
            with tqdm(disable=True) as progress:
                return train_one_epoch(model, batches, DistillationLoss([CLASSIFIER]), optimizer, None,
                                       torch.autocast("cpu", enabled=False), state, config, context, len(loader),
                                       progress, saved.append, resumed)

        stats = run(loader, config, None)
        if stop is not None:
            checkpoint = {"epoch_progress": all_gather_objects(saved[-1], context)}
            outcome["own_clips"] = saved[-1]["totals"]["clips"]
            state["stopped"] = False
            stats = run(loader[stop:], dataclasses.replace(config, stop_after_steps=None),
                        own_epoch_progress(checkpoint, context.rank))
        outcome["straight" if stop is None else "resumed"] = {"figures": stats["figures"], "clips": stats["clips"]}
    return outcome


def _keypoint_loss_on_half_a_batch(context) -> dict:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 3, 4, 4, dtype=torch.float64, generator=generator)
    heatmaps = torch.rand(6, 3, 4, 4, dtype=torch.float64, generator=generator)
    flags = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    half = slice(0, 2) if context.rank == 0 else slice(2, 6)  # 1 person on rank 0, 3 on rank 1
    mine = logits[half].clone().requires_grad_(True)
    loss = DistillationLoss([KEYPOINTS], sum_over_ranks=sum_over_ranks(context), world_size=context.world_size)
    terms = loss({KEYPOINTS.key: mine}, {KEYPOINTS.key: heatmaps[half], KEYPOINTS.mask_key: flags[half]})
    terms["loss"].backward()
    whole = logits.clone().requires_grad_(True)
    single = DistillationLoss([KEYPOINTS])({KEYPOINTS.key: whole}, {KEYPOINTS.key: heatmaps, KEYPOINTS.mask_key: flags})
    single["loss"].backward()
    return {"loss": terms["loss"].item(), "gradient": mine.grad.tolist(), "single_loss": single["loss"].item(),
            "single_gradient": whole.grad[half].tolist()}


class KeypointLookUp(torch.nn.Module):
    """(B,) sample indices -> those samples' fixed keypoint logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {KEYPOINTS.key: self.logits[indices]}


def _keypoint_report_over_uneven_ranks(context) -> dict:
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(7, 3, 4, 4, generator=generator)
    heatmaps = torch.rand(7, 3, 4, 4, generator=generator)
    flags = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    # As many steps on each rank (the loss all-reduces each step), of other sizes and person counts.
    batches = [[0], [1, 2]] if context.rank == 0 else [[3, 4], [5, 6]]
    loader = [{"video": torch.tensor(indices), "targets": {KEYPOINTS.key: heatmaps[indices],
                                                           KEYPOINTS.mask_key: flags[indices]}} for indices in batches]
    loss = DistillationLoss([KEYPOINTS], sum_over_ranks=sum_over_ranks(context), world_size=context.world_size)
    reported = evaluate(KeypointLookUp(logits), loader, loss, torch.autocast("cpu", enabled=False), context, None)
    whole = DistillationLoss([KEYPOINTS])({KEYPOINTS.key: logits}, {KEYPOINTS.key: heatmaps, KEYPOINTS.mask_key: flags})
    return {"reported": reported[f"val_kd/{KEYPOINTS.key}"], "val_loss": reported["val_loss"],
            "whole": whole["loss"].item()}


SCENARIOS = {"nan_on_rank_1": _train_with_nan_on_rank_1, "resumed_epoch": _epoch_resumed_mid_way,
             "keypoint_loss": _keypoint_loss_on_half_a_batch,
             "keypoint_report": _keypoint_report_over_uneven_ranks}


def _worker(rank: int, port: int, scenario: str, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    outcome = SCENARIOS[scenario](context)
    shutdown(context)
    (Path(results) / f"rank{rank}.json").write_text(json.dumps(outcome))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_two_ranks(scenario: str, results: Path) -> list[dict]:
    processes = multiprocessing.start_processes(_worker, args=(_free_port(), scenario, str(results)), nprocs=WORLD_SIZE,
                                                join=False, start_method="fork")
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    try:
        while not processes.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{scenario}: the two ranks did not finish within {PROCESS_TIMEOUT_S} s (a rank hangs)")
    finally:
        for process in processes.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((results / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def test_nonfinite_loss_stops_every_rank(tmp_path):
    outcomes = _run_two_ranks("nan_on_rank_1", tmp_path)
    for rank, outcome in enumerate(outcomes):
        error = outcome["error"]
        assert error is not None, f"rank {rank} trained on"
        assert "\n" not in error and "non-finite" in error, error
        assert f"steps 1-{NONFINITE_CHECK_EVERY}" in error and "at step 3 on rank 1" in error, error
        # Stopped together at the first check, before the epoch's end and before any checkpoint.
        assert outcome["step"] == NONFINITE_CHECK_EVERY and outcome["checkpoints"] == []
    assert outcomes[0]["error"] == outcomes[1]["error"]


def test_epoch_resumed_mid_way_reports_the_figures_of_the_whole_epoch(tmp_path):
    outcomes = _run_two_ranks("resumed_epoch", tmp_path)
    for outcome in outcomes:
        assert outcome["own_clips"] == 4  # 2 steps of 2 clips on this rank
        assert outcome["resumed"]["clips"] == outcome["straight"]["clips"] == 16  # 4 steps x 2 clips x 2 ranks
        assert outcome["resumed"]["figures"] == pytest.approx(outcome["straight"]["figures"], rel=1e-9)
    assert outcomes[0]["resumed"] == outcomes[1]["resumed"]


def test_keypoint_loss_over_two_ranks_equals_one_process_over_the_whole_batch(tmp_path):
    outcomes = _run_two_ranks("keypoint_loss", tmp_path)
    single_loss = outcomes[0]["single_loss"]
    assert math.isclose(sum(outcome["loss"] for outcome in outcomes) / WORLD_SIZE, single_loss, rel_tol=1e-12)
    for outcome in outcomes:
        # DDP averages the gradients over the ranks.
        averaged = torch.tensor(outcome["gradient"], dtype=torch.float64) / WORLD_SIZE
        torch.testing.assert_close(averaged, torch.tensor(outcome["single_gradient"], dtype=torch.float64))


def test_reported_keypoint_loss_over_two_ranks_equals_one_process_over_all_clips(tmp_path):
    outcomes = _run_two_ranks("keypoint_report", tmp_path)
    for outcome in outcomes:
        assert math.isclose(outcome["reported"], outcome["whole"], rel_tol=1e-6), outcome
        assert math.isclose(outcome["val_loss"], outcome["whole"], rel_tol=1e-6), outcome
