"""Manifests: a CSV with header ``path,label[,split][,caption]``, paths relative to the CSV. A path
outside the CSV's folder (``../x.wav`` or absolute) gets the id ``ext/<8 hex digits of the SHA-1 of its
folder as written>/<stem>``: stable for the same manifest text, and never holding ``..`` or a leading
``/``. Splits: the CSV's split column when it is filled on every row, else seeded random.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from embedstore.errors import DatasetError

from .base import Dataset, Track
from .common import SPLIT_ALIASES, apply_labelled_split, csv_header, dedupe, find_csv, probe_file, read_csv, stem_id

if TYPE_CHECKING:
    from .registry import DatasetRequest

MANIFEST_CSV = "manifest.csv"


def _has_path_column(path: Path) -> bool:
    return "path" in csv_header(path)


def marker(folder: Path) -> bool:
    """True when ``folder`` holds a CSV with a ``path`` column (wrapper descent stops there)."""
    return any(_has_path_column(p) for p in folder.glob("*.csv"))


def detect(root: Path) -> bool:
    """True when ``root`` is a CSV file, or a folder holding ``manifest.csv`` or one CSV with a ``path`` column."""
    return find_csv(root, MANIFEST_CSV, _has_path_column, "manifest") is not None


def _normalize_split(value: str, where: str) -> str | None:
    v = value.strip().lower()
    if not v:
        return None
    if v in SPLIT_ALIASES:
        return SPLIT_ALIASES[v]
    if re.fullmatch(r"fold\d+", v):
        return v
    raise DatasetError(f"{where}: unknown split {value!r} (use train, valid, test or foldN)")


def _manifest_location(raw: str, root: Path) -> tuple[Path, str, str]:
    """``(file, path as stored, track id)`` of a manifest's ``path`` value, read relative to ``root``
    (the manifest's folder). Inside ``root``: the relative path and its id. Outside (``../``, or
    absolute): the path as written (normalised) and the id ``ext/<sha1 of its folder, 8 hex>/<stem>``."""
    written = os.path.normpath(raw)
    full = Path(written) if Path(written).is_absolute() else Path(os.path.normpath(root / written))
    try:
        rel = full.relative_to(root).as_posix()
    except ValueError:
        posix = PurePosixPath(Path(written).as_posix())
        digest = hashlib.sha1(str(posix.parent).encode("utf-8")).hexdigest()[:8]
        return full, posix.as_posix(), f"ext/{digest}/{posix.stem}"
    return full, rel, stem_id(rel)


def _manifest_tasks(tracks: list[Track], label_task: str) -> dict[str, str]:
    tasks = {}
    if any(t.label is not None for t in tracks):
        tasks[label_task] = "label"
    if any(t.caption is not None for t in tracks):
        tasks["caption"] = "caption"
    return tasks


def _tracks(csv_path: Path, label_name: str | None) -> tuple[list[Track], list[tuple[str, str]], list[str]]:
    """``(readable tracks, skipped files, header)`` of a manifest."""
    root = csv_path.parent
    header, rows = read_csv(csv_path)
    if "path" not in header:
        raise DatasetError(f"{csv_path}: manifest needs a 'path' column (header: {','.join(header) or 'empty'})")
    label_col = label_name if label_name in header else "label"
    if label_name and label_col not in header:
        raise DatasetError(f"--label-name {label_name}: {csv_path} has neither a {label_name!r} nor a 'label' column")
    skipped: list[tuple[str, str]] = []
    tracks = []
    for lineno, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise DatasetError(f"{csv_path}:{lineno}: empty path")
        path, rel, track_id = _manifest_location(row["path"], root)
        if not path.exists():
            skipped.append((rel, "missing on disk"))
            continue
        if probe_file(path, root, skipped) is None:
            continue
        tracks.append(Track(
            id=track_id,
            path=rel,
            label=row.get(label_col) or None,
            split=_normalize_split(row.get("split", ""), f"{csv_path}:{lineno}"),
            caption=row.get("caption") or None,
        ))
    return dedupe(tracks, skipped), skipped, header


def discover(request: DatasetRequest, given: Path, level: Path) -> Dataset:
    """The manifest dataset of the CSV at (or in) ``level``."""
    csv_path = find_csv(level, MANIFEST_CSV, _has_path_column, "manifest")
    if csv_path is None:
        raise DatasetError(f"{level}: no manifest CSV with a 'path' column found")
    split = request.split_scheme
    tracks, skipped, header = _tracks(csv_path, request.label_name)
    tasks = _manifest_tasks(tracks, request.label_name or "label")
    unsplit = sum(t.split is None for t in tracks)
    has_splits = "split" in header and tracks and not unsplit
    if split == "manifest" or (split == "auto" and has_splits):
        if not has_splits:
            raise DatasetError(f"{csv_path}: --split-scheme manifest needs a 'split' value on every row")
        scheme, opts = "manifest", {}
        why = ("asked for (--split-scheme manifest)" if split == "manifest"
               else f"auto: {csv_path.name}'s split column is filled on every row")
    else:
        why_random = (f"auto: {csv_path.name}'s split column is empty on {unsplit} of {len(tracks)} clips"
                      if "split" in header else f"auto: {csv_path.name} has no split column")
        tracks, scheme, opts, why = apply_labelled_split(
            tracks, split, request.split_dir, request.seed, request.folds,
            allow_fault_filtered=request.split_dir is not None, why_random=why_random)
    return Dataset(csv_path.parent.name, "manifest", csv_path.parent, tracks, skipped, tasks, scheme, opts, why)
