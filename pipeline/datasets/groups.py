"""Source groups: the clips of a labeled data set that were cut from one source video.

UCF-101 cuts each of its videos into several clips named `v_{Class}_g{XX}_c{YY}`: the clips of one group
`gXX` of a class come from one long source video. HMDB-51 names clips
`{source}_{action}_{body part}_{camera motion}_{people}_{viewpoint}_{quality}_{N}` (e.g.
`Prelinger_HabitPat1954_brush_hair_h_nm_np1_fr_med_26`): the five meta tags describe each clip and change from
clip to clip of one source, and N counts the clips cut from it, so a group is the name without the tags and the
clip number, `{source}_{action}` (the clips of one film or upload showing one action; HMDB-51's split files are
per action, so a source is not grouped across actions). A name without the tags (the demo's HMDB-layout set,
`{photo}_{motion}_{N}`) loses only its clip number. Kinetics clips are cut from one YouTube video each
(`{youtube_id}_{start}_{end}`). Clips of one group share scene, people and camera, so they are not independent
draws: a bootstrap resamples groups, a train/validation division keeps a group on one side, and a pretraining
video of the same group as a test video is contamination.

    source_group("ucf101", "v_ApplyEyeMakeup_g08_c01")                            # "ApplyEyeMakeup_g08"
    source_group("hmdb51", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0")   # "April_09_brush_hair"
    source_group("kinetics", "abc123DEF45_000010_000020")                        # "abc123DEF45"

The group is computed from the file stem alone (any folder in the id is dropped), so a pretraining video of
another adapter (a folder of copied HMDB-51 clips) falls into the same group as the labeled original. A name
that does not follow its data set's pattern is its own group.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

UCF_CLIP = re.compile(r"^v_(?P<group>.+_g\d+)_c\d+$")
# HMDB-51's meta tags: body part, camera motion, number of people, viewpoint, quality; then the clip number.
HMDB_CLIP = re.compile(r"^(?P<group>.+)_[a-z]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+$")
TRAILING_CLIP_NUMBER = re.compile(r"^(?P<group>.+)_\d+$")
KINETICS_CLIP = re.compile(r"^(?P<group>.+)_\d{6}_\d{6}$")


def stem_of(video_id: str) -> str:
    """The file stem a video id ends in: "class/name" -> "name"; a trailing video extension is dropped."""
    name = PurePosixPath(str(video_id)).name
    return name.rsplit(".", 1)[0] if re.search(r"\.(avi|mp4|mkv|webm|mov)$", name, re.IGNORECASE) else name


# Each data set whose names say their source, and the patterns tried in order (the first match names the group).
GROUP_PATTERNS = {"ucf101": (UCF_CLIP,), "hmdb51": (HMDB_CLIP, TRAILING_CLIP_NUMBER),
                  "demo": (HMDB_CLIP, TRAILING_CLIP_NUMBER), "kinetics": (KINETICS_CLIP,)}
GROUPED_DATASETS = tuple(GROUP_PATTERNS)
VIDEO_GROUPS = "video"  # the grouping in which every video is its own group (its whole id)


def source_group(dataset: str, video_id: str) -> str:
    """The source-group name of one clip of `dataset` (see the module docstring); `dataset` VIDEO_GROUPS: the id."""
    if dataset == VIDEO_GROUPS:
        return str(video_id)
    stem = stem_of(video_id)
    for pattern in GROUP_PATTERNS.get(dataset, ()):
        match = pattern.match(stem)
        if match:
            return match["group"]
    return stem


def group_ids(dataset: str, video_ids: list[str]) -> list[str]:
    """`source_group` of each id, in order."""
    return [source_group(dataset, video_id) for video_id in video_ids]
