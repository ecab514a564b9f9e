"""The prepare stage's config, and the key naming its output folder `<out>/<data>/<key>/`.

Which videos are prepared is chosen exactly as stage one chooses what it extracts (`data`, `root`, `split`,
`split_roles`, `limit` mean what they mean in extract/config.py), so a user prepares what they extract. The
encoding options are the only others that change what is written; they and the selected listing's manifest hash
make the key (`prepare_key`). Where things are (`root`, `out`) and how fast it runs (`workers`, timeouts) do not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from distinit.pipeline.datasets.selection import normalise_splits
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.hashing import sha256_json

# Bump when a change to the code changes the files it writes (it is part of the key).
CODE_VERSION = "prepare-1"
# The options that change a prepared file's bytes; the rest choose videos (in the manifest hash) or speed.
KEY_OPTIONS = ("short_side", "gop", "crf", "preset", "tune")
# Keyed only when set: a folder prepared before the option existed was made without it, and `tune: null` finds it.
KEY_OPTIONS_IF_SET = ("tune",)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
X264_TUNES = ("film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode", "zerolatency")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    data: str = "demo"
    root: str = "data/demo"
    splits_dir: str | None = None
    annotations: str | None = None
    # The same video selection as extract's: a labeled dataset's videos whose role is one of split_roles in every
    # split listed (None: every listed video), then the first `limit`.
    split: int | tuple[int, ...] | None = None
    split_roles: tuple[str, ...] = ("train",)
    limit: int | None = None
    out: str = "prepared"
    # Short side of the copies (never upscaled). Stage two reads clips at short side 128 and crops 112.
    short_side: int = 128
    # A keyframe every `gop` frames and nowhere else: a clip then needs at most gop - 1 frames decoded before its
    # first one. 16 = one training clip's span (8 frames x stride 2; distill's frames x stride).
    gop: int = 16
    # x264's constant quality; 20 is a little better than x264's default 23, since this is a second generation
    # of compression seen at the training resolution. Measured: 0.7x the bytes of a 340x256 CRF-23 source.
    crf: int = 20
    preset: str = "medium"  # x264's default: the bytes/encode-time balance; decode speed barely depends on it
    # x264's -tune (None: x264's default tuning). fastdecode (CAVLC, no deblocking, no weighted prediction): measured
    # on Kinetics-like copies (bench/prepare_encoding.py), a PyAV clip costs 0.74x the CPU time for 1.07x the bytes
    # and 0.26 dB less PSNR; a GOP of 8 instead gave 0.92x for 1.22x, so the GOP stays 16.
    tune: str | None = "fastdecode"
    workers: int | None = None  # ffmpeg encoders at once, one thread each (None: every available core)
    timeout_seconds: float = 600.0  # per video (probe, encode, check)
    max_failure_rate: float = 0.05

    def __post_init__(self):
        if self.short_side < 16 or self.short_side % 2:
            raise ConfigError(
                f"option short_side must be an even number >= 16 (H.264 4:2:0 needs even sizes), got {self.short_side}"
            )
        if self.gop < 1:
            raise ConfigError(f"option gop must be >= 1 (frames between keyframes), got {self.gop}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"option crf must be in 0..51 (x264's range; lower is better quality), got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise ConfigError(f"option preset {self.preset!r} is not one of x264's: {', '.join(X264_PRESETS)}")
        if self.tune is not None and self.tune not in X264_TUNES:
            raise ConfigError(f"option tune {self.tune!r} is not one of x264's: {', '.join(X264_TUNES)} (or null)")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"option workers must be >= 1 (or null for every core), got {self.workers}")
        if not self.timeout_seconds > 0:
            raise ConfigError(f"option timeout_seconds must be > 0, got {self.timeout_seconds}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"option max_failure_rate must be in [0, 1], got {self.max_failure_rate}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"option limit must be >= 1, got {self.limit}")
        normalise_splits(self.split)

    def key_fields(self) -> dict[str, Any]:
        """The options that change what is written to a prepared file (one of KEY_OPTIONS_IF_SET only when set)."""
        return {name: getattr(self, name) for name in KEY_OPTIONS
                if name not in KEY_OPTIONS_IF_SET or getattr(self, name) is not None}


def prepare_key(config: PrepareConfig, manifest_hash: str) -> str:
    """16 hex digits naming the output folder: changes exactly when the prepared files can (the selected videos,
    by the dataset listing's manifest hash; the encoding options; the code version). The ffmpeg build is not in
    it (provenance.json records it): a key is computed from configs alone, before anything runs."""
    return sha256_json({"dataset_manifest_hash": manifest_hash, "options": config.key_fields(), "code": CODE_VERSION})[:16]
