"""Prepared videos: every video of a dataset re-encoded once, small and with short GOPs, for stage two.

Stage two reads random short clips; from a 250-frame-GOP original each one means decoding up to a GOP of
full-size frames first. `distinit prepare` writes `<out>/<data>/<key>/videos/...mp4` (short side 128, a keyframe
every 16 frames, x264's fastdecode tuning, the same frames and timestamps) plus each copy's layout record, so a
clip costs at most a GOP of small, cheaply decoded frames and no probe. Stage two reads them through
`prepared_videos(folder)`.

    config.py    PrepareConfig, prepare_key (the folder's key)
    encoding.py  one video's ffmpeg command, its checks, deterministic bytes
    runner.py    list, resume, encode in parallel, finalize
    manifest.py  per-video rows, the seal (videos.jsonl, manifest.json, latest), the reader
"""

from distinit.pipeline.prepared.config import CODE_VERSION, KEY_OPTIONS, PrepareConfig, prepare_key
from distinit.pipeline.prepared.manifest import prepared_videos
from distinit.pipeline.prepared.runner import PrepareError, finalize, plan_prepare, run_prepare

__all__ = [
    "CODE_VERSION", "KEY_OPTIONS", "PrepareConfig", "PrepareError", "finalize", "plan_prepare", "prepare_key",
    "prepared_videos", "run_prepare",
]
