"""Small pieces the dataset adapters share: option checks, split-file lines, folder search, video scans."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

from distinit.pipeline.errors import DatasetError

logger = logging.getLogger(__name__)

# Extensions (lower case) that `folder`-style scans treat as video files.
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"})

# How each adapter option is spelled on the command line, for error messages.
_OPTION_FLAGS = {"splits_dir": "--splits", "annotations": "--annotations"}


def reject_options(dataset: str, **options: object) -> None:
    """Raise if an option this adapter does not read was given (silently ignoring it would hide a typo)."""
    for name, value in options.items():
        if value is not None:
            flag = _OPTION_FLAGS.get(name, name)
            raise DatasetError(f"dataset {dataset!r} does not take {flag} (got {value}); drop that option")


def split_file_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line. Handles CRLF endings and a UTF-8 BOM,
    both of which occur in the official UCF-101 / HMDB-51 split files."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except UnicodeDecodeError:
        # Some mirrors re-encode the lists as Latin-1; names are ASCII in the official files anyway.
        text = path.read_text(encoding="latin-1")
    except OSError as error:
        raise DatasetError(f"{path}: cannot read split file ({error.strerror}); check the file") from None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


def resolve_folder(given: str | Path | None, candidates: Iterable[Path], what: str, flag: str) -> Path:
    """`given` if it is a folder, else the first existing candidate; a one-line error otherwise."""
    if given is not None:
        given = Path(given)
        if not given.is_dir():
            raise DatasetError(f"{given}: {what} folder not found; pass {flag} DIR with the {what} files")
        return given
    candidates = list(candidates)
    for candidate in candidates:
        if candidate.is_dir():
            logger.info("using %s folder %s", what, candidate)
            return candidate
    searched = ", ".join(str(candidate) for candidate in candidates)
    raise DatasetError(f"no {what} folder found (looked in {searched}); pass {flag} DIR")


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_video_name(name: str) -> bool:
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def scan_videos(root: Path) -> list[Path]:
    """Every video file under `root`, recursively, sorted. Hidden files and folders are skipped;
    symbolic links to folders are followed once (a link back up the tree is not entered again)."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    broken = 0
    for folder, subfolders, files in os.walk(root, followlinks=True):
        status = os.stat(folder)
        key = (status.st_dev, status.st_ino)
        if key in visited:
            subfolders[:] = []
            logger.info("%s: already visited through another link; not entering it again", folder)
            continue
        visited.add(key)
        subfolders[:] = sorted(name for name in subfolders if not is_hidden(name))
        for name in files:
            if not is_video_name(name):
                continue
            path = Path(folder) / name
            if not path.exists():
                broken += 1
                continue
            found.append(path)
    if broken:
        logger.warning("%s: skipped %d broken symbolic links to videos", root, broken)
    return sorted(found)


def video_names(folder: Path) -> list[str]:
    """Names of the video files directly in `folder`, sorted; [] if it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and is_video_name(entry.name))


class NameLookup:
    """Finds a listed file name among names on disk: exactly, else ignoring case (split lists and
    archives disagree on case in a few real files, and case-insensitive file systems hide it)."""

    def __init__(self, names: Iterable[str]):
        self.exact = set(names)
        self.folded = {}
        for name in sorted(self.exact, reverse=True):
            self.folded[name.casefold()] = name

    def find(self, name: str) -> str | None:
        return name if name in self.exact else self.folded.get(name.casefold())


def require_unique_ids(records: Iterable, dataset: str) -> None:
    """Ids key every later stage's rows, so two videos may not share one."""
    seen: dict[str, Path] = {}
    for record in records:
        if record.id in seen:
            raise DatasetError(
                f"{dataset}: {seen[record.id]} and {record.path} share the id {record.id!r}; rename or remove one"
            )
        seen[record.id] = record.path
