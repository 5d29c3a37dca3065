"""Class folders: one sub-folder per class (label = folder name), task ``label`` (or the request's
``label_name``). Wrapper folders above the classes are descended (``mydata/train_audio/<class>/``), and
split folders (``train/<class>/``, ``test/<class>/``) give the splits. Fewer than two classes is an
error; a folder of loose files with no class folders at all is an unlabelled collection.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from embedstore.errors import DatasetError

from .base import Dataset, Track
from .common import SPLIT_ALIASES, apply_labelled_split, dedupe, probe_file, rel_path, split_key, stem_id
from .layout import audio_files, audio_subdirs, split_folders

if TYPE_CHECKING:
    from .registry import DatasetRequest


def marker(folder: Path) -> bool:
    """Class folders carry no marker of their own: wrapper descent never stops for them."""
    return False


def detect(root: Path) -> bool:
    """True when ``root`` holds audio files or sub-folders with audio (the fallback kind)."""
    return bool(audio_subdirs(root) or audio_files(root))


def _one_class_error(given: Path, level: Path, classes: list[Path], loose: list[Path]) -> DatasetError:
    """The error for a folder that holds fewer than two classes: what was found and where to point."""
    if not classes:  # wrappers descended down to one folder of loose files
        found = f"all {len(loose)} audio files sit in one folder, {rel_path(level, given)}/"
        hint = f", or at {level} to extract its files unlabelled"
    else:
        n = sum(len(audio_files(c, recursive=True)) for c in classes)
        found = f"{classes[0].name!r} ({', '.join(rel_path(c, given) + '/' for c in classes)}: {n} audio files)"
        if loose:
            found += f", and {len(loose)} loose audio files in {rel_path(level, given)}/"
        hint = (", or move the loose files into class folders" if loose
                else f", or at {classes[0]} to extract its files unlabelled" if len(classes) == 1 else "")
    return DatasetError(f"{given}: only one class: {found}; a folder dataset needs one sub-folder per class "
                        f"(at least 2): point at the folder that holds all the class folders{hint}")


def _class_groups(given: Path, level: Path) -> tuple[list[tuple[str | None, Path]], list[Path], dict]:
    """``([(split or None, class folder)], loose files outside every class folder, layout)`` of a
    folder dataset whose wrappers are already descended to ``level``."""
    by_split = split_folders(level, SPLIT_ALIASES)
    bases = [(None, level)] if by_split is None else sorted(by_split.items(), key=lambda kv: split_key(kv[0]))
    groups = [(s, c) for s, base in bases for c in audio_subdirs(base)]
    loose = [p for _, base in bases for p in audio_files(base)]
    classes = sorted({c.name for _, c in groups})
    if len(classes) < 2 and (groups or level != given):
        raise _one_class_error(given, level, [c for _, c in groups], loose)
    layout = {"class_root": rel_path(level, given), "classes": classes}
    if by_split is not None:
        layout["split_folders"] = {s: rel_path(d, level) for s, d in bases}
    return groups, loose, layout


def _tracks(groups: list[tuple[str | None, Path]], loose: list[Path], level: Path,
            skipped: list[tuple[str, str]]) -> list[Track]:
    """The readable tracks of the class folders (unlabelled loose files when there are none)."""
    tracks = []
    for split_name, class_dir in groups:
        for path in audio_files(class_dir, recursive=True):
            if probe_file(path, level, skipped) is not None:
                rel = rel_path(path, level)
                tracks.append(Track(stem_id(rel), rel, class_dir.name, split_name, None))
    for path in loose:
        if groups:
            skipped.append((rel_path(path, level), "not in a class folder"))
        elif probe_file(path, level, skipped) is not None:  # no class folders at all: an unlabelled collection
            rel = rel_path(path, level)
            tracks.append(Track(stem_id(rel), rel, None, None, None))
    return dedupe(tracks, skipped)


def discover(request: DatasetRequest, given: Path, level: Path) -> Dataset:
    """Class folders at ``level`` (``given`` with its wrapper folders descended)."""
    split, label_name = request.split_scheme, request.label_name
    groups, loose, layout = _class_groups(given, level)
    skipped: list[tuple[str, str]] = []
    tracks = _tracks(groups, loose, level, skipped)
    if not tracks and not skipped:
        raise DatasetError(f"{given}: no audio files found (expected one sub-folder of audio files per class)")
    if label_name and not groups:
        raise DatasetError(f"--label-name {label_name}: {given} has no class folders, so no labels to name")
    tasks = {label_name or "label": "label"} if groups else {}
    if "split_folders" in layout and split in ("auto", "folders"):
        scheme, opts = "folders", {}
        why = f"auto: the clips sit in split folders ({', '.join(layout['split_folders'].values())})"
    elif split == "folders":
        raise DatasetError(f"--split-scheme folders: {level} has no split folders (train/, valid/, test/)")
    else:
        tracks, scheme, opts, why = apply_labelled_split(
            tracks, split, request.split_dir, request.seed, request.folds,
            allow_fault_filtered=request.split_dir is not None, why_random="auto: the class folders name no split")
    return Dataset(given.name, "folder", level, tracks, skipped, tasks, scheme, opts, why, layout)
