"""Build tiny trees laid out exactly like HMDB-51, UCF-101, Kinetics, a raw folder and the demo pool.

Each builder returns where it put things and what an adapter should report (ids, labels, roles).
Video files are placeholders unless `video_source` names a real clip to copy: adapters list files,
they never decode them.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from distinit.pipeline.video.binary import ffmpeg_binary

PLACEHOLDER_BYTES = b"placeholder, not a video\n"

HMDB_CLASSES = ("brush_hair", "cartwheel", "ride_bike")  # already in sorted order: label = index
HMDB_VIDEOS_PER_CLASS = 6
# Split file codes of video i in split k: CODE_CYCLE rotated by k, so every split differs.
HMDB_CODE_CYCLE = ("1", "1", "1", "2", "2", "0")
HMDB_ROLES = {"0": "unused", "1": "train", "2": "test"}

# classInd.txt order on purpose not alphabetical: labels must follow the file, not a sort.
UCF_CLASS_INDEX = ("Basketball", "ApplyEyeMakeup", "HandstandPushups")
UCF_GROUPS = 4  # groups g01..g04; split k tests on group k, trains on the others (as the real lists do)
UCF_CLIPS_PER_GROUP = 2


def make_tiny_video(path: Path) -> Path:
    """A real 0.5 s, 32x24 test-pattern clip (container from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10", "-t", "0.5"]
    subprocess.run([*command, "-pix_fmt", "yuv420p", str(path)], check=True, capture_output=True, timeout=60)
    return path


def write_video(path: Path, video_source: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if video_source is None:
        path.write_bytes(PLACEHOLDER_BYTES)
    else:
        shutil.copyfile(video_source, path)
    return path


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


@dataclasses.dataclass
class Layout:
    root: Path
    splits_dir: Path | None
    # id -> (label, class name, {split: role}) the adapter should report
    expected: dict[str, tuple[int | None, str | None, dict[str, str]]]


def hmdb_video_name(class_name: str, index: int) -> str:
    # Real names look like `April_09_brush_hair_u_nm_np1_ba_goo_0.avi`.
    return f"Clip_{index:02d}_{class_name}_u_nm_np1_fr_med_{index}.avi"


def make_hmdb51(
    base: Path,
    video_source: Path | None = None,
    root_name: str = "hmdb51_org",
    splits_location: str = "beside",
    unlisted_per_class: int = 0,
) -> Layout:
    """`{base}/{root_name}/{class}/*.avi` with split files `beside` the root
    (`{base}/testTrainMulti_7030_splits`) or `inside` it (`{root}/testTrainMulti_7030_splits`)."""
    root = base / root_name
    splits_dir = (root if splits_location == "inside" else base) / "testTrainMulti_7030_splits"
    expected = {}
    for label, class_name in enumerate(HMDB_CLASSES):
        roles_by_video = {}
        for split in ("1", "2", "3"):
            lines = []
            for index in range(HMDB_VIDEOS_PER_CLASS):
                name = hmdb_video_name(class_name, index)
                code = HMDB_CODE_CYCLE[(index + int(split)) % len(HMDB_CODE_CYCLE)]
                lines.append(f"{name} {code} ")  # the official files end each line with a space
                roles_by_video.setdefault(name, {})[split] = HMDB_ROLES[code]
            write_lines(splits_dir / f"{class_name}_test_split{split}.txt", lines)
        for index in range(unlisted_per_class):
            roles_by_video[f"Unlisted_{class_name}_{index}.avi"] = {"1": "unused", "2": "unused", "3": "unused"}
        for name, roles in roles_by_video.items():
            write_video(root / class_name / name, video_source)
            expected[f"{class_name}/{Path(name).stem}"] = (label, class_name, roles)
    return Layout(root, splits_dir, expected)


def ucf_video_stem(class_name: str, group: int, clip: int) -> str:
    # The real release names HandstandPushups' videos v_HandStandPushups_...: keep that quirk.
    file_class = "HandStandPushups" if class_name == "HandstandPushups" else class_name
    return f"v_{file_class}_g{group:02d}_c{clip:02d}"


def make_ucf101(
    base: Path, video_source: Path | None = None, newline: str = "\r\n", splits_location: str = "beside"
) -> Layout:
    """`{base}/UCF-101/{Class}/v_*.avi` and `ucfTrainTestlist` beside (or inside) it, CRLF by default.

    The test lists spell HandstandPushups' videos `v_HandstandPushups_...` while the files on disk
    and the train lists say `v_HandStandPushups_...`: the adapter must match them ignoring case."""
    root = base / "UCF-101"
    splits_dir = (root if splits_location == "inside" else base) / "ucfTrainTestlist"
    write_lines(splits_dir / "classInd.txt", [f"{i + 1} {name}" for i, name in enumerate(UCF_CLASS_INDEX)], newline)
    expected = {}
    for split in ("1", "2", "3"):
        train_lines, test_lines = [], []
        for label, class_name in enumerate(UCF_CLASS_INDEX):
            for group in range(1, UCF_GROUPS + 1):
                for clip in range(1, UCF_CLIPS_PER_GROUP + 1):
                    stem = ucf_video_stem(class_name, group, clip)
                    write_video(root / class_name / f"{stem}.avi", video_source)
                    role = "test" if group == int(split) else "train"
                    expected.setdefault(stem, (label, class_name, {}))[2][split] = role
                    if role == "train":
                        train_lines.append(f"{class_name}/{stem}.avi {label + 1}")
                    else:
                        test_lines.append(f"{class_name}/{stem.replace('HandStand', 'Handstand')}.avi")
        write_lines(splits_dir / f"trainlist0{split}.txt", train_lines, newline)
        write_lines(splits_dir / f"testlist0{split}.txt", test_lines, newline)
    return Layout(root, splits_dir, expected)


KINETICS_TRAIN_ROWS = [
    # label, youtube_id, time_start, time_end, split  (times as the CSVs write them; some as floats)
    ("abseiling", "--07WQ2iBlw", "1", "11", "train"),
    ("abseiling", "-0Y1Xt0gQmE", "10.0", "20.0", "train"),
    ("playing guitar", "a1B2c3D4e5F", "123", "133", "train"),
    ("playing guitar", "Zz9_yY8-xX7", "0", "10", "train"),
    ("playing guitar", "missingClip1", "5", "15", "train"),
]
KINETICS_VALIDATE_ROWS = [
    ("abseiling", "valClipAAAA", "30", "40", "validate"),
    ("playing guitar", "valClipBBBB", "7", "17", "validate"),
    ("zumba", "missingClip2", "0", "10", "validate"),
]
KINETICS_TEST_ROWS = [("testClipAAA", "2", "12", "test"), ("testClipBBB", "44", "54", "test")]
KINETICS_EXTENSIONS = {"Zz9_yY8-xX7": ".webm", "valClipBBBB": ".mkv"}  # the rest are .mp4
KINETICS_MISSING = {"missingClip1_000005_000015", "missingClip2_000000_000010"}


def kinetics_clip_id(youtube_id: str, start: str, end: str) -> str:
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def make_kinetics(base: Path, layout: str = "label", video_source: Path | None = None) -> Layout:
    """`{base}/kinetics400` with `annotations/{train,validate,test}.csv` and clips either under
    `{split}/{label}/` (`layout='label'`: train label folders as written, 'playing guitar' with its space;
    validate clips in `val/` with `playing_guitar`) or flat in `{split}/` (`layout='flat'`). The 'zumba'
    label has only a missing clip: it still gets an id."""
    root = base / "kinetics400"
    annotations = root / "annotations"
    header = "label,youtube_id,time_start,time_end,split"
    write_lines(annotations / "train.csv", [header] + [",".join(row) for row in KINETICS_TRAIN_ROWS])
    validate_lines = [",".join(row) + ",0" for row in KINETICS_VALIDATE_ROWS]  # Kinetics-700-2020 adds is_cc
    write_lines(annotations / "validate.csv", [header + ",is_cc"] + validate_lines)
    test_lines = [",".join(row) for row in KINETICS_TEST_ROWS]  # test CSVs have no label column
    write_lines(annotations / "test.csv", ["youtube_id,time_start,time_end,split"] + test_lines)
    folder_by_split = {"train": "train", "validate": "val", "test": "test"}
    expected = {}
    labels = sorted({row[0] for row in KINETICS_TRAIN_ROWS + KINETICS_VALIDATE_ROWS})
    rows = KINETICS_TRAIN_ROWS + KINETICS_VALIDATE_ROWS + [(None, *row) for row in KINETICS_TEST_ROWS]
    for label, youtube_id, start, end, split in rows:
        clip_id = kinetics_clip_id(youtube_id, start, end)
        if clip_id in KINETICS_MISSING:
            continue
        folder = root / folder_by_split[split]
        if layout == "label" and label is not None:
            folder = folder / (label.replace(" ", "_") if split == "validate" else label)
        write_video(folder / f"{clip_id}{KINETICS_EXTENSIONS.get(youtube_id, '.mp4')}", video_source)
        role = {"train": "train", "validate": "val", "test": "test"}[split]
        expected[clip_id] = (labels.index(label) if label else None, label, {"1": role})
    return Layout(root, None, expected)


def make_raw_folder(base: Path, video_source: Path | None = None) -> Layout:
    """An uncurated tree: nested folders, mixed-case extensions, hidden entries and non-video files."""
    root = base / "raw"
    names = ["a.mp4", "b.MKV", "sub/c.avi", "sub/deeper/d.webm", "sub/deeper/e.MOV", "other/f.m4v", "other/g.mpeg"]
    for name in names:
        write_video(root / name, video_source)
    for ignored in [".hidden.mp4", ".cache/h.mp4", "notes.txt", "sub/thumb.jpg", "sub/deeper/README"]:
        write_video(root / ignored)
    expected = {str(Path(name).with_suffix("").as_posix()): (None, None, {}) for name in names}
    return Layout(root, None, expected)


def make_demo_pool(base: Path, video_source: Path | None = None, count: int = 3) -> Layout:
    """`{base}/demo/pool/clip_XXX.mp4` plus the HMDB-51-shaped labeled set under `{base}/demo/actions`."""
    root = base / "demo"
    expected = {}
    for index in range(count):
        write_video(root / "pool" / f"clip_{index:03d}.mp4", video_source)
        expected[f"clip_{index:03d}"] = (None, None, {})
    make_hmdb51(root / "actions", video_source, root_name="videos")
    return Layout(root, None, expected)


def write_test_pattern_videos(folder: Path, seconds: float = 2, gop: int = 5) -> list[Path]:
    """Four 48x32 10 fps H.264 clips of ffmpeg's test patterns (real decodable video, distinct content)."""
    folder.mkdir(parents=True)
    paths = []
    for number, pattern in enumerate(("testsrc", "testsrc2", "smptebars", "rgbtestsrc")):
        paths.append(folder / f"video_{number}.mp4")
        command = [
            ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=48x32:rate=10", "-t", str(seconds),
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(gop), "-threads", "1", str(paths[-1]),
        ]
        subprocess.run(command, check=True, timeout=60)
    return paths


# HMDB-51 cuts several clips from one source video (`{source}_{N}.avi`, N counting its clips) and its split
# files keep a source on one side. Clips per source of each class, and each source's split code, rotated by split.
HMDB_SOURCE_CLIPS = (3, 1, 2, 4, 2, 1, 3)
HMDB_SOURCE_CODE_CYCLE = ("1", "2", "1", "1", "0", "1", "2")


def hmdb_source_clip_name(class_name: str, source: int, clip: int) -> str:
    # The meta tags change from clip to clip of one source, as in the real set: only the source and action group.
    tags = f"{'fhua'[clip % 4]}_{('cm', 'nm')[clip % 2]}_np{1 + clip % 2}_{('le', 'fr', 'ri', 'ba')[clip % 4]}"
    return f"Source{source:02d}_{class_name}_{tags}_{('med', 'goo', 'bad')[clip % 3]}_{clip}.avi"


def make_hmdb51_grouped(base: Path, video_source: Path | None = None) -> Layout:
    """Like `make_hmdb51`, with several clips per source video (source groups of 1-4 clips; per class and split
    4 sources train, 2 test, 1 unused), so a group can be split only by code that ignores it."""
    root = base / "hmdb51_org"
    splits_dir = base / "testTrainMulti_7030_splits"
    expected = {}
    for label, class_name in enumerate(HMDB_CLASSES):
        for split in ("1", "2", "3"):
            lines = []
            for source, clips in enumerate(HMDB_SOURCE_CLIPS):
                code = HMDB_SOURCE_CODE_CYCLE[(source + int(split)) % len(HMDB_SOURCE_CODE_CYCLE)]
                for clip in range(clips):
                    name = hmdb_source_clip_name(class_name, source, clip)
                    lines.append(f"{name} {code} ")
                    roles = expected.setdefault(f"{class_name}/{Path(name).stem}", (label, class_name, {}))[2]
                    roles[split] = HMDB_ROLES[code]
            write_lines(splits_dir / f"{class_name}_test_split{split}.txt", lines)
        for source, clips in enumerate(HMDB_SOURCE_CLIPS):
            for clip in range(clips):
                write_video(root / class_name / hmdb_source_clip_name(class_name, source, clip), video_source)
    return Layout(root, splits_dir, expected)
