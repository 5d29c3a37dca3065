"""Manifests: a CSV with header ``path,label[,split][,caption]``, paths relative to the CSV. A path
outside the CSV's folder (``../x.wav`` or absolute) gets the id ``ext/<8 hex digits of the SHA-1 of its
folder as written>/<stem>``: stable for the same manifest text, and never holding ``..`` or a leading
``/``. Splits: the CSV's split column when it is filled on every row, else seeded random.

Other columns can be targets: a column whose filled values are all numbers is a regression task, one
whose values hold the tag separator (``;`` by default, ``--tag-separator``) a tagging task; ``--task-kind
COLUMN=tag|regress|classify`` states it instead. Their raw values go into the dataset's ``targets``.
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


#: columns a manifest gives a meaning of their own (never tagging/regression targets)
_RESERVED = {"path", "split", "caption", "label"}
TARGET_COLUMN_KINDS = {"tag": "tags", "regress": "number"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_kind(column: str, values: list[str], separator: str, stated: dict[str, str], where: Path) -> str | None:
    """``tag``, ``regress`` or None (not a target) for a manifest column: stated with ``--task-kind``,
    else ``regress`` when every filled value is a number, ``tag`` when some value holds ``separator``."""
    filled = [v for v in values if v]
    if column in stated:
        kind = stated[column]
        if kind == "regress" and not all(_is_number(v) for v in filled):
            bad = next(v for v in filled if not _is_number(v))
            raise DatasetError(f"--task-kind {column}=regress: {where} column {column!r} holds {bad!r}, not a number")
        return kind
    if not filled:
        return None
    if all(_is_number(v) for v in filled):
        return "regress"
    return "tag" if any(separator in v for v in filled) else None


def _manifest_targets(csv_path: Path, header: list[str], values: dict[str, dict[str, str]], request: DatasetRequest,
                      label_col: str) -> dict[str, dict]:
    """The tagging/regression targets of a manifest's other columns: ``{column: {"kind", "separator",
    "values": {track id: raw text}}}`` (see :class:`~embedstore.extract.datasets.base.Dataset`)."""
    stated = dict(request.task_kinds)
    unknown = sorted(set(stated) - set(header))
    if unknown:
        raise DatasetError(f"--task-kind {unknown[0]}=...: {csv_path} has no column {unknown[0]!r}")
    targets = {}
    for column in header:
        if column in _RESERVED | {label_col} or stated.get(column) == "classify":
            continue
        col_values = {tid: row.get(column, "") for tid, row in values.items()}
        kind = _column_kind(column, list(col_values.values()), request.tag_separator, stated, csv_path)
        if kind is not None:
            targets[column] = {"kind": kind, "separator": request.tag_separator,
                               "values": {tid: v for tid, v in col_values.items() if v}}
    return targets


def _tracks(csv_path: Path, label_name: str | None
            ) -> tuple[list[Track], list[tuple[str, str]], list[str], dict[str, dict[str, str]]]:
    """``(readable tracks, skipped files, header, CSV row of each track id)`` of a manifest."""
    root = csv_path.parent
    header, rows = read_csv(csv_path)
    if "path" not in header:
        raise DatasetError(f"{csv_path}: manifest needs a 'path' column (header: {','.join(header) or 'empty'})")
    label_col = label_name if label_name in header else "label"
    if label_name and label_col not in header:
        raise DatasetError(f"--label-name {label_name}: {csv_path} has neither a {label_name!r} nor a 'label' column")
    skipped: list[tuple[str, str]] = []
    tracks = []
    rows_of: dict[str, dict[str, str]] = {}
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
        rows_of[track_id] = row
    return dedupe(tracks, skipped), skipped, header, rows_of


def discover(request: DatasetRequest, given: Path, level: Path) -> Dataset:
    """The manifest dataset of the CSV at (or in) ``level``."""
    csv_path = find_csv(level, MANIFEST_CSV, _has_path_column, "manifest")
    if csv_path is None:
        raise DatasetError(f"{level}: no manifest CSV with a 'path' column found")
    split = request.split_scheme
    tracks, skipped, header, rows_of = _tracks(csv_path, request.label_name)
    tasks = _manifest_tasks(tracks, request.label_name or "label")
    label_col = request.label_name if request.label_name in header else "label"
    targets = _manifest_targets(csv_path, header, {t.id: rows_of[t.id] for t in tracks}, request, label_col)
    tasks.update({column: TARGET_COLUMN_KINDS[t["kind"]] for column, t in targets.items()})
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
    return Dataset(csv_path.parent.name, "manifest", csv_path.parent, tracks, skipped, tasks, scheme, opts, why,
                   targets=targets)
