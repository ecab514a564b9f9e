"""Which library decodes: the `decoder` option of read_clip / read_frames.

    torchcodec  TorchCodec's decoder, in process; CPU, or CUDA (NVDEC) with decode_device="cuda".
                Optional (requirements.txt pins it: `make setup`); needs FFmpeg's shared libraries from the
                system. Seeks from the stored layout, without scanning the file (torchcodec_decode.py).
    pyav        PyAV, in process, with the FFmpeg its wheel bundles (pinned: `make setup` installs it).
    ffmpeg      one ffmpeg process per call, frames over a pipe: needs only the ffmpeg binary.
    auto        the fastest of them that is installed and returns the ffmpeg backend's exact pixels: PyAV
                (measured faster than TorchCodec on CPU), else TorchCodec when no resize is needed (its Resize
                is bilinear, not ffmpeg's area filter), else ffmpeg; TorchCodec whenever decode_device is CUDA.

Every backend decodes the same plan (pipeline/video/segments.py) and returns the same frames, so the
choice belongs in no stage key. Layouts whose seeks are not exact (MPEG-TS, AVI without timestamps) go
from TorchCodec, which cannot be told not to seek, to PyAV (else ffmpeg); so does a file TorchCodec fails on
(TorchCodec 0.17 cannot seek to the last frames of some open-GOP H.264 files). Such a clip is decoded by a
second library (after a failed first try), so each kind of hand-off warns once per process
(pipeline/video/slow_path.py) and goes to debug after that.
"""

from __future__ import annotations

import functools

from distinit.pipeline.errors import ConfigError, DistinitError, VideoError
from distinit.pipeline.video.segments import DecodePlan
from distinit.pipeline.video.slow_path import warn_slow_fallback

DECODERS = ("auto", "torchcodec", "pyav", "ffmpeg")
DECODE_DEVICES = ("cpu", "cuda")
INSTALL_HINTS = {
    "pyav": "pip install av==18.1.0 (requirements.txt pins it: make setup)",
    "torchcodec": (
        "pip install torchcodec==0.17.0 (requirements.txt pins it: make setup), and FFmpeg's shared libraries "
        "(e.g. apt-get install libavcodec59 libavformat59 "
        "libavutil57 libswscale6 libavfilter8 libswresample4 libavdevice59)"
    ),
}


@functools.lru_cache(maxsize=None)
def unavailable_reason(decoder: str) -> str | None:
    """None when `decoder` can run here, else why not (one line)."""
    if decoder == "pyav":
        try:
            import av  # noqa: F401
        except ImportError as error:
            return f"PyAV is not installed ({error})"
        return None
    if decoder == "torchcodec":
        from distinit.pipeline.video.torchcodec_decode import unavailable_reason as torchcodec_reason

        return torchcodec_reason()
    return None


def available_decoders() -> list[str]:
    """The backends that can run here, fastest first (without "auto")."""
    return [name for name in DECODERS[1:] if unavailable_reason(name) is None]


def check_decoder(decoder: str, decode_device: str = "cpu") -> None:
    """A ConfigError (one line, naming the choices) for an unknown decoder or decode device."""
    if decoder not in DECODERS:
        raise ConfigError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    if not (decode_device in DECODE_DEVICES or decode_device.startswith("cuda:")):
        raise ConfigError(f"decode_device {decode_device!r} is not one of {', '.join(DECODE_DEVICES)} (or cuda:N)")


def decoder_key(decoder: str) -> dict[str, str]:
    """What a stage key records of `decoder`: nothing where every backend it may pick gives the ffmpeg path's pixels
    (auto resizes only with PyAV or ffmpeg, both through swscale's `scale`), {"decoder": "torchcodec"} where it may
    not (TorchCodec's own resize is bilinear on RGB: a few levels apart)."""
    return {"decoder": decoder} if decoder == "torchcodec" else {}


def resolve_decoder(decoder: str, decode_device: str = "cpu", resizing: bool = False) -> str:
    """The backend to run for `decoder` ('auto' resolved): a one-line error for an unknown name, a backend that
    is not installed (with how to install it), or a CUDA decode_device without TorchCodec."""
    check_decoder(decoder, decode_device)
    on_cuda = decode_device != "cpu"
    if decoder == "auto":
        if on_cuda:
            wanted = ["torchcodec"]
        else:
            # PyAV first, resizing or not: measured faster than TorchCodec on CPU here (bench/kinetics_like.py:
            # 3.9 against 4.6 ms per prepared clip, 24.1 against 28.9 on originals) and bit-exact everywhere.
            wanted = ["pyav", "ffmpeg"] if resizing else ["pyav", "torchcodec", "ffmpeg"]
        found = [name for name in wanted if unavailable_reason(name) is None]
        if found:
            return found[0]
        decoder = wanted[0]
    reason = unavailable_reason(decoder)
    if reason is not None:
        raise DistinitError(f"decoder {decoder!r} cannot run here: {reason}; {INSTALL_HINTS[decoder]}")
    if on_cuda and decoder != "torchcodec":
        raise ConfigError(f"decode_device {decode_device!r} needs decoder 'torchcodec' (or 'auto'), not {decoder!r}")
    return decoder


def decode_segments(decoder: str, plan: DecodePlan, decode_device: str = "cpu"):
    """The frames of `plan` from backend `decoder` (resolved): (N, H, W, 3) uint8, numpy on the CPU, a torch
    tensor on decode_device otherwise."""
    if decoder == "torchcodec":
        return _decode_with_torchcodec(plan, decode_device)
    if decoder == "pyav":
        from distinit.pipeline.video import pyav_decode

        return pyav_decode.decode_segments(plan)
    from distinit.pipeline.video import ffmpeg_decode

    return ffmpeg_decode.decode_segments(plan)


def _decode_with_torchcodec(plan: DecodePlan, decode_device: str):
    fallback = "pyav" if unavailable_reason("pyav") is None else "ffmpeg"
    if plan.layout.seekable:
        from distinit.pipeline.video import torchcodec_decode

        try:
            return torchcodec_decode.decode_segments(plan, decode_device)
        except VideoError as error:
            if plan.deadline.remaining() <= 0:
                raise
            warn_slow_fallback("torchcodec failed", plan.path, f"torchcodec failed ({error.reason}); {fallback} "
                               "decodes it instead", f"decoder={fallback} (or auto) decodes such files once")
    else:
        warn_slow_fallback("torchcodec cannot seek", plan.path, f"seeks are not exact in this file; {fallback} decodes "
                           "it instead of torchcodec", f"decoder={fallback} (or auto) reads such files directly")
    frames = decode_segments(fallback, plan)
    if decode_device == "cpu":
        return frames
    import torch

    return torch.from_numpy(frames).to(decode_device)
