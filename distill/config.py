"""The stage-two config: which targets, which student, how clips are cut, how it is trained."""

from __future__ import annotations

import dataclasses
from typing import Any

from distinit.pipeline.errors import ConfigError
from distinit.pipeline.video.backends import check_decoder, decoder_key

# Bump when a change to stage two's code changes what a run produces (part of the run key).
# distill-3: crops drawn inside the teachers' view; checkpoints record pretraining videos' content hashes.
# distill-4: an epoch is cut into steps of the global batch (pipeline.clips.sampler.GlobalBatchSampler: every step
# full, the same micro-batches for any number of processes), with gradient accumulation; runs are keyed by global batch.
CODE_VERSION = "distill-4"

# Options that change speed or where things are, never the trained weights: left out of the run key. The targets
# enter it by their content (distill.targets_folder.targets_fingerprint), the videos through the targets (their
# manifest lists each video's relative path and size): not by the folders they are in.
# The decoder gives the same frames whichever it is (but see pipeline.video.backends.decoder_key). Prepared copies (`prepared`) are the same frames with other
# pixels (re-encoded): their folder's key enters the run key instead of its path (distill.train.run_key).
# How often per-step scalars are logged changes no weight either. `global_batch` enters resolved (key_fields).
NOT_IN_KEY = ("out", "targets", "videos_root", "prepared", "decoder", "decode_device", "workers", "device",
              "cache_clips", "stop_after_steps", "tensorboard", "log_every_steps")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    targets: str = ""  # a targets folder (targets/<data>/<key>) or targets/<data> (its `latest`)
    videos_root: str | None = None  # where the videos are now, if they moved since extraction
    # `distinit prepare`'s copies of the same videos (prepared/<data> or one of its key folders): read instead of
    # the originals, with the layouts prepare stored. None: the originals, with the layouts stage one stored.
    prepared: str | None = None
    decoder: str = "auto"  # "auto" | "torchcodec" | "pyav" | "ffmpeg" (pipeline.video.backends)
    decode_device: str = "cpu"  # "cuda": TorchCodec decodes on the GPU (NVDEC)
    student: str = "r2plus1d_18"  # configs/distill.yaml (make distill) picks resnet18_3d, the paper's Res3D-18
    width: str = "full"  # "full" | "tiny"
    modality: str = "rgb"  # "rgb" | "flow"
    flow_method: str = "farneback"  # "farneback" | "tvl1"
    frames: int = 8
    stride: int = 2
    short_side: int = 128
    crop: int = 112
    # At least this fraction of the crop's area lies inside the part of the frame the teachers feeding the loss saw
    # (their view boxes, e.g. a classifier's centre square; where the box is narrower than the crop, as much as fits,
    # centred on it); 0.0 draws the crop anywhere in the frame, as before. pipeline.clips.views.crop_box. Not 1.0 by
    # default: with the usual geometry (crop 112 of short side 128, teachers' 224 of 256) the one crop wholly inside
    # a classifier's view is its centre, so 1.0 leaves no spatial jitter; 0.8 keeps jitter and at most a fifth of
    # the crop outside what produced the target.
    crop_in_teacher_view: float = 0.8
    target_agg: str = "mean"  # "mean" | "random"
    clips_per_video: int = 1
    temperature: float = 1.0
    loss_weights: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_fraction: float = 0.01
    epochs: int = 10
    batch_size: int = 16  # clips per process per forward pass (the micro-batch BatchNorm sees)
    # Clips per optimizer step over all processes: batch_size x processes x accumulation steps, the accumulation
    # made up to it. A run is its global batch: 8 processes x 1, 4 x 2 and 2 x 4 accumulation steps of the same
    # batch_size are one run (one folder, one key), which resumes on any of them. None: batch_size x processes, no
    # accumulation (the number of processes then decides the global batch, and so the run).
    global_batch: int | None = None
    # `lr` is the learning rate of this global batch; a run of another global batch scales it linearly
    # (lr x global_batch / lr_reference_batch: Goyal et al. 2017, MMAction2's --auto-scale-lr). None: `lr` as given,
    # whatever the global batch.
    lr_reference_batch: int | None = None
    val_fraction: float = 0.1
    dropout: float = 0.0
    # The control: train (and measure the held-out loss) on targets dealt out to the wrong videos by a fixed
    # seeded derangement (distill.shuffled_targets); a gain that survives it did not come from the teachers.
    shuffle_targets: bool = False
    seed: int = 0
    deterministic: bool = False
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU) | "bf16" | "fp16" | "off"
    save_every_steps: int = 500
    max_decode_failures: int = 50
    out: str = "runs/distill"
    # Loader processes per rank: "auto" is its share of the node's cores (cores / ranks on the node) less one for the
    # training process; a number is capped at that share (pipeline.devices.capped_workers).
    workers: int | str = "auto"
    device: str = "auto"
    cache_clips: str | None = None
    stop_after_steps: int | None = None  # stop (as if killed) after this many steps; for resume tests
    tensorboard: bool = True  # TensorBoard event files beside log.jsonl, when the tensorboard package is installed
    log_every_steps: int = 50  # the running training loss and lr, every this many steps, to log.jsonl and TensorBoard

    def __post_init__(self):
        choices = {
            "width": ("full", "tiny"), "modality": ("rgb", "flow"), "flow_method": ("farneback", "tvl1"),
            "target_agg": ("mean", "random"), "optimizer": ("sgd", "adamw"), "amp": ("auto", "bf16", "fp16", "off"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"option {name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        positive = ("frames", "stride", "short_side", "crop", "clips_per_video", "temperature", "lr", "epochs",
                    "batch_size", "save_every_steps", "log_every_steps")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"option {name} must be > 0, got {getattr(self, name)}")
        if self.crop > self.short_side:
            raise ConfigError(f"option crop={self.crop} is larger than short_side={self.short_side}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"option val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.crop_in_teacher_view <= 1.0:
            raise ConfigError(f"option crop_in_teacher_view must be in [0, 1] (0: the crop anywhere), got "
                              f"{self.crop_in_teacher_view}")
        for name in ("global_batch", "lr_reference_batch"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"option {name} must be > 0 (or null), got {getattr(self, name)}")
        if self.global_batch is not None and self.global_batch % self.batch_size:
            raise ConfigError(f"option global_batch={self.global_batch} is not a multiple of batch_size="
                              f"{self.batch_size}; choose a batch_size that divides it")
        if self.workers != "auto" and not (isinstance(self.workers, int) and self.workers >= 0):
            raise ConfigError(f"option workers must be auto or a number >= 0, got {self.workers!r}")
        if self.warmup_steps < 0:
            raise ConfigError("option warmup_steps must be >= 0")
        check_decoder(self.decoder, self.decode_device)
        if self.decode_device != "cpu":
            # Decoding runs in the CPU loader workers, which crop and flip numpy frames; CUDA there is not wired.
            raise ConfigError(f"decode_device {self.decode_device!r}: decoding on the GPU is not wired into the loader "
                              "yet (it runs in CPU worker processes); use decode_device=cpu")

    def key_fields(self, processes: int | str = 1) -> dict[str, Any]:
        """The options that decide the trained weights, `global_batch` resolved for `processes` processes (a word
        such as "gpu x 2 nodes" when make cannot know the number ahead): 1x2 and 2x1 give the same fields."""
        values = dataclasses.asdict(self)
        fields = {name: value for name, value in values.items() if name not in NOT_IN_KEY}
        fields["global_batch"] = self.global_batch_for(processes)
        return {**fields, **decoder_key(self.decoder)}

    def global_batch_for(self, processes: int | str) -> int | str:
        if self.global_batch is not None:
            return self.global_batch
        return self.batch_size * processes if isinstance(processes, int) else f"{self.batch_size} x {processes}"

    def accum_steps(self, processes: int) -> int:
        """Micro-batches per optimizer step on each of `processes` processes; a global batch they cannot make up
        exactly is a one-line ConfigError."""
        if self.global_batch is None:
            return 1
        per_pass = self.batch_size * processes
        if self.global_batch % per_pass:
            raise ConfigError(
                f"global_batch={self.global_batch} is not a multiple of batch_size={self.batch_size} x {processes} "
                f"processes; run on a number of processes that divides {self.global_batch // self.batch_size}, or "
                f"set a batch_size that makes it up")
        return self.global_batch // per_pass

    def scaled_lr(self, processes: int) -> float:
        """The base learning rate of this run: `lr`, scaled linearly from lr_reference_batch to the global batch."""
        if self.lr_reference_batch is None:
            return self.lr
        return self.lr * int(self.global_batch_for(processes)) / self.lr_reference_batch
