"""Video I/O: probe a file, decode only the frames or clips asked for (TorchCodec, PyAV or ffmpeg; same frames)."""

from distinit.pipeline.errors import VideoError
from distinit.pipeline.video.backends import DECODERS, available_decoders
from distinit.pipeline.video.binary import ffmpeg_binary
from distinit.pipeline.video.decode import output_size, read_clip, read_frames
from distinit.pipeline.video.probe import VideoInfo, probe

__all__ = [
    "DECODERS", "VideoError", "VideoInfo", "available_decoders", "ffmpeg_binary", "output_size", "probe", "read_clip",
    "read_frames",
]
