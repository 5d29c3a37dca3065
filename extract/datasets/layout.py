"""Where a folder's labels are: wrapper folders, GTZAN's structure, class folders and split folders.

Folder inspection only (names and suffixes, nothing decoded); :mod:`embedstore.extract.datasets`
uses it to tell a dataset's kind and the level at which its classes are.

- A *wrapper* is a folder with no audio file of its own whose audio all sits in ONE sub-folder
  (``mydata/train_audio/<class>/``, or a download that unpacks into one extra folder). Wrappers are
  descended until a level with loose audio or with several audio sub-folders
  (:func:`descend_wrappers`).
- A *GTZAN genre folder* holds audio files named ``<folder>.<digits>.<ext>`` (at least half of its
  audio files, compared case-insensitively), e.g. ``jazz/jazz.00054.wav``; any folder name counts,
  not only GTZAN's ten genres (:func:`gtzan_genre_root`).
- *Split folders*: every audio sub-folder is named after a split (``train``, ``val``, ``test``, ...)
  and the classes are one level below (:func:`split_folders`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from embedstore.extract.audio import is_audio_path

__all__ = [
    "GTZAN_LAYOUTS",
    "audio_files",
    "audio_subdirs",
    "descend_wrappers",
    "gtzan_genre_root",
    "is_gtzan_genre_folder",
    "names_missing_extra",
    "split_folders",
    "subdirs",
]

#: Where GTZAN's genre folders may sit, relative to the dataset folder, in the order tried.
GTZAN_LAYOUTS = ("genres_original", "genres", ".")


def _visible(path: Path, folder: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(folder).parts)


def audio_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Audio files (by suffix, hidden files and folders excluded) in ``folder``, sorted by path."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_audio_path(p) and _visible(p, folder))


def subdirs(folder: Path) -> list[Path]:
    """Non-hidden sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_audio(folder: Path) -> bool:
    """True when an audio file sits anywhere below ``folder`` (stops at the first one)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_audio_path(name) for name in filenames):
            return True
    return False


def audio_subdirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` with audio at any depth, sorted by name."""
    return [d for d in subdirs(folder) if _holds_audio(d)]


def descend_wrappers(root: Path, stop: Callable[[Path], bool]) -> Path:
    """The first folder at or below ``root`` that is not a wrapper (see the module docstring).

    ``stop(folder)`` ends the descent early (e.g. at a folder holding a dataset CSV or GTZAN's
    genre folders). Returns ``root`` itself when it has loose audio or several audio sub-folders.
    """
    level = root
    while not stop(level) and not audio_files(level):
        subs = audio_subdirs(level)
        if len(subs) != 1:
            break
        level = subs[0]
    return level


def _gtzan_named(path: Path, folder_name: str) -> bool:
    """``<folder>.<digits>.<ext>``: ``blues.00012.wav`` in ``blues/``."""
    prefix, _, number = path.stem.rpartition(".")
    return number.isdigit() and prefix.casefold() == folder_name.casefold()


def is_gtzan_genre_folder(folder: Path) -> bool:
    """True when at least half of ``folder``'s own audio files are named ``<folder>.<digits>.<ext>``."""
    files = audio_files(folder)
    return bool(files) and 2 * sum(_gtzan_named(p, folder.name) for p in files) >= len(files)


def gtzan_genre_root(root: Path) -> Path | None:
    """The folder holding GTZAN-structured genre folders (``root/genres_original``, ``root/genres``
    or ``root``), or None. Every audio sub-folder of it must be a genre folder."""
    for layout in GTZAN_LAYOUTS:
        cand = root / layout
        if cand.is_dir():
            subs = audio_subdirs(cand)
            if subs and all(is_gtzan_genre_folder(s) for s in subs):
                return cand
    return None


def split_folders(folder: Path, aliases: Mapping[str, str]) -> dict[str, Path] | None:
    """``{split: folder}`` when every audio sub-folder of ``folder`` is named after a split
    (``aliases`` maps lower-case folder names to ``train``/``valid``/``test``), at least two of them
    and at least one holding class sub-folders; else None."""
    subs = audio_subdirs(folder)
    names = [aliases.get(s.name.lower()) for s in subs]
    if len(subs) < 2 or None in names or len(set(names)) < len(names):
        return None
    if not any(audio_subdirs(s) for s in subs):
        return None
    return dict(zip(names, subs))


def names_missing_extra(found: Iterable[str], standard: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(standard names not found, found names not standard)``, compared case-insensitively, sorted."""
    found, standard = list(found), list(standard)
    have = {f.casefold() for f in found}
    std = {s.casefold() for s in standard}
    return sorted(s for s in standard if s.casefold() not in have), sorted(f for f in found if f.casefold() not in std)
