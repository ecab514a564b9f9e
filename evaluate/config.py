"""The stage-three config: which labeled data and splits, which initialisation, how it is finetuned and tested.

Defaults follow common practice for HMDB-51 / UCF-101 finetuning of 18-layer 3D ResNets (SGD with
Nesterov momentum, dropout 0.5 before a new linear classifier, warmup then cosine by step), with the
clip shape of stage two (8 frames every 2nd, short side 128, 112 crop) so the trunk sees at test time
what it was distilled on. `lr_trunk_scale` multiplies the learning rate of the trunk only: left unset it
is 0.1 for a pretrained trunk (a distilled checkpoint or an inflated 2D network: keep most of what it
learned, let the new classifier move fast) and 1.0 for `scratch` (nothing to keep). A linear probe
trains only the classifier, so the scale does not apply there.

Training batches drop the last, partial batch of an epoch (a batch norm on 2 clips is noisy), so a split
needs at least `batch_size` training videos. With `temporal_ablations` the trained model is also scored on
the test views shuffled in time and with one frame repeated (evaluate.ablations): 3x the test forward
passes, nothing more. Clips are normalised as the init expects (evaluate.initialization).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.video.backends import check_decoder, decoder_key

# Bump when a change to stage three's code changes what a run produces (part of the results key).
# eval-2: per-init input normalisation, failed test videos counted wrong, drop_last, temporal ablations.
# eval-3: a validation part held out of each train list (by source group), tuned lr/epoch, one architecture per row.
CODE_VERSION = "eval-3"

# Options that change speed or where things are, never the results: left out of the results key. The
# dataset enters the key through its manifest hash (ids, sizes, labels, split roles), not its path.
NOT_IN_KEY = ("root", "splits_dir", "out", "workers", "device", "threads", "save_weights", "max_decode_failures",
              "allow_test_overlap", "prepared", "decoder", "decode_device")
# Which runs to make, not what a run gives: each (split, seed) run is stored under its own name in the results
# folder, so asking for seeds 0-9 after 0-2 reuses the first three. Stage keys (pipeline/stages/graph.py) add them back.
RUN_SELECTION = ("splits", "seeds")

# What a run scored on test does not depend on (they only chose its lr and stop_epoch), and what a tuning curve on
# validation does not depend on (test-time options; it always runs the whole schedule).
RUN_ONLY_LEFT_OUT = ("tune_lrs", "val_clips")
TUNING_LEFT_OUT = ("tune_lrs", "stop_epoch", "test_clips", "three_crop", "temporal_ablations")

DATASETS = ("hmdb51", "ucf101")
PRETRAINED_TRUNK_SCALE = 0.1
SCRATCH_TRUNK_SCALE = 1.0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    data: str = "hmdb51"  # "hmdb51" | "ucf101"
    root: str = ""  # the dataset's video root ({root}/{class}/*.avi)
    splits_dir: str | None = None  # split files; default: the adapter's usual places beside/inside root
    splits: tuple[int, ...] = (1, 2, 3)
    init: str = "scratch"  # a distill checkpoint (.pt, or a run folder) | "scratch" | "inflated:<2d-model>[:random]"
    student: str | None = None  # architecture for scratch (default resnet18_3d); checked against a checkpoint's
    width: str | None = None  # "full" | "tiny"; for scratch (default full); checked against a checkpoint's
    linear_probe: bool = False  # freeze the trunk (no gradients, batch norms in eval mode), train the classifier
    seeds: tuple[int, ...] = (0,)
    frames: int = 8
    stride: int = 2
    short_side: int = 128
    crop: int = 112
    flip: bool = True  # random left-right flips of training clips; off where a mirror changes the class
    test_clips: int = 10  # uniformly spaced clips per test video
    three_crop: bool = False  # x 3 crops along the long side at test time (else the centre crop)
    temporal_ablations: bool = True  # also score the test views shuffled in time and with one frame repeated
    optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) | "adamw"
    lr: float = 0.01  # the classifier's learning rate; the trunk's is lr * lr_trunk_scale
    lr_trunk_scale: float | None = None  # None: 0.1 for a pretrained trunk, 1.0 for scratch (module docstring)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_fraction: float = 0.01
    epochs: int = 30
    # The epoch whose weights are scored (None: the last). Training follows the schedule of `epochs` and stops
    # after this one, so a run with the tuning run's seed repeats its trajectory up to there (evaluate.tuning).
    stop_epoch: int | None = None
    # Validation (evaluate.validation): this share of each split's train list, whole source groups stratified by
    # class and divided once with val_seed, is held out of training in every run; tuning scores it.
    val_fraction: float = 0.2
    # What validation holds out whole: "source" groups (HMDB-51's and UCF-101's official splits keep a source video
    # on one side of train/test, so validation does the same), or single "video"s, for a labeled set whose official
    # split shares sources between train and test (the demo's: validation then mirrors how test was drawn).
    val_groups: str = "source"
    val_seed: int = 0
    val_clips: int = 3  # uniformly spaced clips per validation video
    # Learning rates `compare` and `eval` try for each init on each split's own validation part (first seed), with
    # the epoch to keep; empty: no tuning, `lr` and `stop_epoch` as given. Test chooses nothing (evaluate.tuning).
    tune_lrs: tuple[float, ...] = ()
    batch_size: int = 16
    dropout: float = 0.5  # before the new classifier
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU) | "bf16" | "fp16" | "off"
    deterministic: bool = False
    max_decode_failures: int = 50  # videos that fail to decode before a run gives up
    save_weights: bool = False  # also write each run's finetuned model (runs/split<S>-seed<N>.pt)
    # Evaluate a DistInit checkpoint whose pretraining videos include test videos (or cannot be checked);
    # refused by default, and reported when allowed (evaluate/overlap.py).
    allow_test_overlap: bool = False
    out: str | None = None  # default results/eval/<key>
    # `distinit prepare --data <this dataset>`'s copies, read instead of the originals (their folder's key, not its
    # path, enters the results key: evaluate.run_store.results_key); None: the originals, probed once per worker.
    prepared: str | None = None
    decoder: str = "auto"  # "auto" | "torchcodec" | "pyav" | "ffmpeg": the same frames, speed only
    decode_device: str = "cpu"  # "cuda": TorchCodec on NVDEC
    workers: int = 2
    device: str = "auto"
    # torch's intra-op threads while eval runs (restored after); None keeps torch's default (one per core).
    # 1 suits a small CPU that also decodes in its workers: on a busy 2-core machine the demo's epochs took
    # 3.9 s with one thread against 9-16 s with two (measured).
    threads: int | None = None

    def __post_init__(self):
        choices = {
            "data": DATASETS, "optimizer": ("sgd", "adamw"), "amp": ("auto", "bf16", "fp16", "off"),
            "width": (None, "full", "tiny"), "val_groups": ("source", "video"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(str(value) for value in allowed if value is not None)
                raise ConfigError(f"option {name}={getattr(self, name)!r} is not one of {shown}")
        positive = ("frames", "stride", "short_side", "crop", "test_clips", "lr", "epochs", "batch_size")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"option {name} must be > 0, got {getattr(self, name)}")
        if self.crop > self.short_side:
            raise ConfigError(f"option crop={self.crop} is larger than short_side={self.short_side}")
        if not self.splits or not self.seeds:
            raise ConfigError("options splits and seeds need at least one value each (e.g. splits=1,2,3 seeds=0)")
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.epochs:
            raise ConfigError(f"option stop_epoch must be between 1 and epochs={self.epochs}, got {self.stop_epoch}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"option val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_clips < 1:
            raise ConfigError(f"option val_clips must be >= 1, got {self.val_clips}")
        if any(not lr > 0 for lr in self.tune_lrs) or len(set(self.tune_lrs)) != len(self.tune_lrs):
            raise ConfigError(f"option tune_lrs must hold distinct learning rates > 0, got {list(self.tune_lrs)}")
        if self.tune_lrs and self.val_fraction == 0:
            raise ConfigError("option tune_lrs needs a validation part to tune on; set val_fraction > 0 "
                              "(e.g. 0.2) or tune_lrs=[]")
        if len(set(self.splits)) != len(self.splits) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"options splits {list(self.splits)} and seeds {list(self.seeds)} must not repeat a value")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"option dropout must be in [0, 1), got {self.dropout}")
        if self.lr_trunk_scale is not None and self.lr_trunk_scale < 0:
            raise ConfigError(f"option lr_trunk_scale must be >= 0, got {self.lr_trunk_scale}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"option threads must be >= 1 (or null for torch's default), got {self.threads}")
        if self.workers < 0 or self.warmup_steps < 0 or self.max_decode_failures < 0:
            raise ConfigError("options workers, warmup_steps and max_decode_failures must be >= 0")
        if not self.init:
            raise ConfigError("option init is empty; pass a checkpoint, scratch or inflated:<2d-model>")
        check_decoder(self.decoder, self.decode_device)
        if self.decode_device != "cpu":
            # Decoding runs in the CPU loader workers, which crop and flip numpy frames; CUDA there is not wired.
            raise ConfigError(f"decode_device {self.decode_device!r}: decoding on the GPU is not wired into the loader "
                              "yet (it runs in CPU worker processes); use decode_device=cpu")

    def trunk_scale(self, pretrained: bool) -> float:
        """The trunk's learning-rate multiplier (see the module docstring)."""
        if self.lr_trunk_scale is not None:
            return self.lr_trunk_scale
        return PRETRAINED_TRUNK_SCALE if pretrained else SCRATCH_TRUNK_SCALE

    def key_fields(self, purpose: str = "stage") -> dict[str, Any]:
        """Everything that changes what `purpose` produces, except `init` (the caller hashes what it points at) and
        which (split, seed) runs to make. "stage": a whole eval or comparison (tuning included); "run": one
        finetuning run scored on test (its lr and stop_epoch as chosen; the grid and validation clips only chose
        them); "tuning": one tuning curve on validation (the test options do not touch it)."""
        left_out = NOT_IN_KEY + RUN_SELECTION + ("init",) + {"stage": (), "run": RUN_ONLY_LEFT_OUT,
                                                             "tuning": TUNING_LEFT_OUT}[purpose]
        values = dataclasses.asdict(self)
        fields = {name: value for name, value in values.items() if name not in left_out}
        return {**fields, **decoder_key(self.decoder)}
