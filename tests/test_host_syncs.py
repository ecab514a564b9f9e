"""The training steps of distill and eval never wait for the device, except every NONFINITE_CHECK_EVERY steps
and at the end of an epoch; eval's loop still reports the same figures and stops on a non-finite loss; cuDNN
benchmarks its kernels on CUDA only, never with --deterministic.

There is no GPU here, so a host sync is counted where it would happen: a call of Tensor.item / tolist / cpu /
numpy / __bool__ / __int__ / __float__ made by distill's or eval's own code (the optimizers' calls on their
CPU step counters are no sync on a GPU either).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tqdm import tqdm

from distinit.distill.config import DistillConfig
from distinit.pipeline.training.device_step import use_fast_kernels
from distinit.pipeline.training.distributed import DistributedContext
from distinit.distill.heads import HeadSpec
from distinit.pipeline.training.loss_tracking import NONFINITE_CHECK_EVERY
from distinit.distill.losses import DistillationLoss
from distinit.distill import train as distill_train
from distinit.evaluate import finetune
from distinit.evaluate.config import EvalConfig
from distinit.pipeline.clips.normalisation import VIDEO_NORMALISATION, normalise_video

REPOSITORY = Path(__file__).resolve().parents[1]
OWN_CODE = (str(REPOSITORY / "distill"), str(REPOSITORY / "evaluate"))
SYNCING_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")
CLASSES = 5
STEPS = 2 * NONFINITE_CHECK_EVERY + 5  # two checks inside the epoch, one at its end
CHECK_STEPS = {NONFINITE_CHECK_EVERY, 2 * NONFINITE_CHECK_EVERY, STEPS}


class TinyVideoNet(torch.nn.Module):
    """(B, 3, T, H, W) float -> (B, CLASSES) logits, as {key: logits} when `key` is given (a distill student);
    NaN from forward call `nan_from_call` on; keeps every call's logits."""

    input_normalisation = VIDEO_NORMALISATION

    def __init__(self, key: str | None = None, nan_from_call: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, CLASSES)
        self.key, self.nan_from_call, self.outputs = key, nan_from_call, []

    def forward(self, video: torch.Tensor):
        assert video.dtype == torch.float32  # normalised on the device, never fed bytes
        logits = self.linear(video.mean(dim=(2, 3, 4)))
        if self.nan_from_call is not None and len(self.outputs) + 1 >= self.nan_from_call:
            logits = logits * float("nan")
        self.outputs.append(logits.detach().clone())
        return logits if self.key is None else {self.key: logits}


def uint8_batches(steps: int, targets) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"video": torch.randint(0, 256, (3, 3, 2, 4, 4), dtype=torch.uint8, generator=generator), **targets(generator)}
            for _ in range(steps)]


class SyncLog:
    """The step (`state["step"]`, of the state dict the loop under test is given) of every syncing call."""

    def __init__(self):
        self.steps: list[int] = []
        self.state: dict = {"step": 0}


@pytest.fixture
def host_syncs(monkeypatch) -> SyncLog:
    """Counts the syncing calls made from distill/ or evaluate/."""
    log = SyncLog()

    def counting(original):
        def wrapper(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(OWN_CODE):
                log.steps.append(log.state["step"])
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNCING_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    return log


def test_eval_training_steps_wait_for_the_device_only_at_the_checks(host_syncs):
    model = TinyVideoNet()
    optimizer = torch.optim.SGD([{"params": model.parameters(), "lr_scale": 1.0}], lr=0.1)
    config = EvalConfig(lr=0.1, warmup_steps=0)
    batches = uint8_batches(STEPS, lambda generator: {"label": torch.randint(0, CLASSES, (3,), generator=generator)})
    host_syncs.state = {"step": 0}
    with tqdm(disable=True) as progress:
        stats = finetune.train_one_epoch(model, batches, optimizer, torch.autocast("cpu", enabled=False), None,
                                         host_syncs.state, config, STEPS, torch.device("cpu"), progress,
                                         VIDEO_NORMALISATION)
    assert host_syncs.state["step"] == STEPS
    assert set(host_syncs.steps) <= CHECK_STEPS and len(host_syncs.steps) <= 2 * len(CHECK_STEPS) + 1, host_syncs.steps
    # The figures summed on the device are the ones a sync per step gave.
    labels = torch.cat([batch["label"] for batch in batches])
    logits = torch.cat(model.outputs)
    assert stats["train_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert stats["train_clip_top1"] == pytest.approx((logits.argmax(dim=1) == labels).float().mean().item())


def test_eval_stops_on_a_non_finite_loss_at_the_next_check_with_one_line():
    model = TinyVideoNet(nan_from_call=3)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "lr_scale": 1.0}], lr=0.1)
    batches = uint8_batches(STEPS, lambda generator: {"label": torch.randint(0, CLASSES, (3,), generator=generator)})
    state = {"step": 0}
    with tqdm(disable=True) as progress, pytest.raises(finetune.FinetuneError) as raised:
        finetune.train_one_epoch(model, batches, optimizer, torch.autocast("cpu", enabled=False), None, state,
                                 EvalConfig(lr=0.1, warmup_steps=0), STEPS, torch.device("cpu"), progress,
                                 VIDEO_NORMALISATION)
    message = str(raised.value)
    assert state["step"] == NONFINITE_CHECK_EVERY and "\n" not in message
    assert f"steps 1-{NONFINITE_CHECK_EVERY}" in message and "non-finite (NaN or inf) at step 3" in message
    assert message.endswith("lower --lr") and "distinit verify" not in message


def test_distill_training_steps_wait_for_the_device_only_at_the_checks(host_syncs):
    head = HeadSpec("teacher/logits", "logits", (CLASSES,))
    model = TinyVideoNet(key=head.key)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    context = DistributedContext(0, 1, 0, torch.device("cpu"))
    config = DistillConfig(lr=0.01, warmup_steps=0, epochs=1, save_every_steps=1000)
    batches = uint8_batches(STEPS, lambda generator: {"targets": {head.key: torch.randn(3, CLASSES, generator=generator)}})
    host_syncs.state = {"step": 0, "epoch": 0, "stopped": False}
    with tqdm(disable=True) as progress:
        stats = distill_train.train_one_epoch(model, batches, DistillationLoss([head]), optimizer, None,
                                              torch.autocast("cpu", enabled=False), host_syncs.state, config, context,
                                              STEPS, progress, lambda epoch_progress: None)
    assert host_syncs.state["step"] == STEPS and stats["clips"] == 3 * STEPS and math.isfinite(stats["figures"]["loss"])
    assert set(host_syncs.steps) <= CHECK_STEPS and len(host_syncs.steps) <= 2 * len(CHECK_STEPS) + 1, host_syncs.steps
    # What the student saw: the bytes, normalised on the device with its normalisation.
    first = TinyVideoNet(key=head.key)(normalise_video(batches[0]["video"]))[head.key]
    assert torch.equal(model.outputs[0], first.detach())


def test_cudnn_benchmarks_kernels_on_cuda_only_and_never_when_deterministic():
    before = torch.backends.cudnn.benchmark
    try:
        use_fast_kernels(torch.device("cuda"), deterministic=False)
        assert torch.backends.cudnn.benchmark
        use_fast_kernels(torch.device("cuda"), deterministic=True)
        assert not torch.backends.cudnn.benchmark
        use_fast_kernels(torch.device("cpu"), deterministic=False)
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
