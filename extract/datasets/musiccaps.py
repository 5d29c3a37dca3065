"""MusicCaps: ``musiccaps-public.csv`` plus pre-downloaded clips named ``<ytid>.<ext>`` in the root or in
``audio/`` or ``clips/``. Track id = ytid, task ``caption``. A file longer than its segment is taken as
the full video, and the segment is read from it (``Track.offset``/``duration``). Splits: seeded
70/10/20, or the CSV's ``is_audioset_eval`` as test (``--split-scheme audioset-eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from embedstore.errors import DatasetError
from embedstore.extract.splits import assign_splits, audioset_eval_splits

from .base import Dataset, Track
from .common import csv_header, find_csv, probe_file, read_csv, rel_path, unknown_scheme, with_splits
from .layout import audio_files

if TYPE_CHECKING:
    from .registry import DatasetRequest

MUSICCAPS_CSV = "musiccaps-public.csv"
MUSICCAPS_AUDIO_DIRS = (".", "audio", "clips")
#: A MusicCaps file longer than its segment by more than this (seconds) is taken as the full video.
MUSICCAPS_FULL_VIDEO_TOLERANCE = 1.0
_COLUMNS = ("ytid", "start_s", "end_s", "caption")


def is_musiccaps_csv(path: Path) -> bool:
    """True when the CSV at ``path`` has MusicCaps' columns."""
    return set(_COLUMNS) <= set(csv_header(path))


def marker(folder: Path) -> bool:
    """True when ``folder`` holds a MusicCaps CSV (wrapper descent stops there)."""
    return any(is_musiccaps_csv(p) for p in folder.glob("*.csv"))


def detect(root: Path) -> bool:
    """True when ``root`` is a MusicCaps CSV, or a folder holding one."""
    if root.is_file():
        return is_musiccaps_csv(root)
    return _find(root) is not None


def _find(root: Path) -> Path | None:
    return find_csv(root, MUSICCAPS_CSV, is_musiccaps_csv, "musiccaps")


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "t")


def _clip_index(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for sub in MUSICCAPS_AUDIO_DIRS:
        folder = root / sub
        if folder.is_dir():
            for p in audio_files(folder):
                index.setdefault(p.stem, p)
    return index


def _splits(tracks: list[Track], eval_flags: list[bool], split: str, seed: int, folds: int):
    """``(splits, scheme, options, why)`` for MusicCaps' tracks."""
    why = f"asked for (--split-scheme {split})"
    if split in ("auto", "random", "random-val"):
        if split == "auto":
            why = "auto: seeded 70/10/20 (--split-scheme audioset-eval uses the CSV's is_audioset_eval as test)"
        return assign_splits(len(tracks), "random-val", seed=seed), "random", {"seed": seed}, why
    if split == "kfold":
        splits = assign_splits(len(tracks), "kfold", seed=seed, folds=folds)
        return splits, "kfold", {"seed": seed, "folds": folds}, why
    if split == "audioset-eval":
        return audioset_eval_splits(eval_flags, seed=seed), "audioset-eval", {"seed": seed}, why
    raise unknown_scheme(split, ("auto", "random", "random-val", "kfold", "audioset-eval"))


def _segment(path: Path, root: Path, start: float, end: float, skipped: list[tuple[str, str]]
             ) -> tuple[float, float | None] | None:
    """``(offset, duration)`` to read of the clip file ``path`` for the segment ``[start, end)``:
    the whole file, or the segment of a full video; None (recorded in ``skipped``) when unreadable
    or neither."""
    info = probe_file(path, root, skipped)
    if info is None:
        return None
    segment = end - start
    if info.duration <= segment + MUSICCAPS_FULL_VIDEO_TOLERANCE:
        return 0.0, None
    # the full video: cut the segment out of it, if the video reaches the segment's end
    if info.duration + MUSICCAPS_FULL_VIDEO_TOLERANCE < end:
        skipped.append((rel_path(path, root), f"{info.duration:.1f} s long: neither the {segment:g} s clip "
                                              f"nor a full video reaching end_s={end:g}"))
        return None
    return start, segment


def _tracks(csv_path: Path) -> tuple[list[Track], list[bool], list[tuple[str, str]]]:
    """``(readable tracks, their is_audioset_eval flags, skipped files)`` of a MusicCaps CSV."""
    root = csv_path.parent
    header, rows = read_csv(csv_path)
    missing_cols = [c for c in _COLUMNS if c not in header]
    if missing_cols:
        raise DatasetError(f"{csv_path}: not a MusicCaps CSV (missing columns {', '.join(missing_cols)})")
    clips = _clip_index(root)
    skipped: list[tuple[str, str]] = []
    tracks: list[Track] = []
    eval_flags: list[bool] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows, start=2):
        ytid = row["ytid"]
        if ytid in seen:
            skipped.append((ytid, f"duplicate ytid (CSV line {lineno})"))
            continue
        seen.add(ytid)
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except ValueError as exc:
            raise DatasetError(f"{csv_path}:{lineno}: bad start_s/end_s ({exc})") from exc
        path = clips.get(ytid)
        if path is None:
            skipped.append((ytid, "missing on disk"))
            continue
        window = _segment(path, root, start, end, skipped)
        if window is None:
            continue
        tracks.append(Track(ytid, rel_path(path, root), None, None, row.get("caption") or None, *window))
        eval_flags.append(_truthy(row.get("is_audioset_eval", "")))
    return tracks, eval_flags, skipped


def discover(request: DatasetRequest, given: Path, level: Path) -> Dataset:
    """The MusicCaps dataset of the CSV at (or in) ``level``."""
    csv_path = _find(level)
    if csv_path is None:
        raise DatasetError(f"{level}: no {MUSICCAPS_CSV} found")
    if request.label_name:
        raise DatasetError(f"--label-name {request.label_name}: a MusicCaps dataset has captions, "
                           "no class labels to name")
    tracks, eval_flags, skipped = _tracks(csv_path)
    splits, scheme, opts, why = _splits(tracks, eval_flags, request.split_scheme, request.seed, request.folds)
    return Dataset("musiccaps", "musiccaps", csv_path.parent, with_splits(tracks, splits), skipped,
                   {"caption": "caption"}, scheme, opts, why)
