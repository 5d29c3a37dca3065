"""Helpers shared by the dataset adapters: header checks, track ids, split assignment, CSV reading."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from embedstore.errors import AudioError, DatasetError, not_one_of
from embedstore.extract.audio import AudioInfo, audio_info
from embedstore.extract.splits import (
    assign_splits,
    download_fault_filtered,
    fault_filtered_cache_dir,
    find_fault_filtered,
    read_fault_filtered,
)

from .base import Track

#: folder names and split-column values -> the split they mean
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "dev": "valid", "test": "test", "eval": "test"}
SPLIT_ORDER = ("train", "valid", "test")
#: the schemes every labelled kind (GTZAN, class folders, manifests) accepts
LABELLED_SCHEMES = ("auto", "fault-filtered", "random", "random-val", "kfold")
OptPath = str | os.PathLike | None


def rel_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as POSIX text (``path`` as it is when outside ``root``)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def probe_file(path: Path, root: Path, skipped: list[tuple[str, str]]) -> AudioInfo | None:
    """Header-check ``path``; on failure record ``(relative path, reason)`` in ``skipped``."""
    try:
        return audio_info(path)
    except AudioError as exc:
        skipped.append((rel_path(path, root), exc.reason))
        return None


def stem_id(rel: str) -> str:
    """Track id of a file at ``rel`` (POSIX, relative): the path without its suffix."""
    return PurePosixPath(rel).with_suffix("").as_posix()


def dedupe(tracks: list[Track], skipped: list[tuple[str, str]]) -> list[Track]:
    """``tracks`` without repeated ids; each repeat is recorded in ``skipped``."""
    seen: dict[str, str] = {}
    out = []
    for t in tracks:
        if t.id in seen:
            skipped.append((t.path, f"duplicate track id {t.id!r} (same clip as {seen[t.id]})"))
            continue
        seen[t.id] = t.path
        out.append(t)
    return out


def with_splits(tracks: list[Track], splits: list[str | None]) -> list[Track]:
    """``tracks`` with ``splits[i]`` as the split of track ``i``."""
    return [Track(t.id, t.path, t.label, s, t.caption, t.offset, t.duration) for t, s in zip(tracks, splits)]


def _labels_if_complete(tracks: list[Track]) -> list[str | None] | None:
    labels = [t.label for t in tracks]
    return None if any(lab is None for lab in labels) else labels


def _seeded_splits(tracks: list[Track], scheme: str, seed: int, folds: int) -> list[str]:
    return assign_splits(len(tracks), scheme, labels=_labels_if_complete(tracks), seed=seed, folds=folds)


def _fault_filtered_splits(tracks: list[Track], split_dir: OptPath) -> tuple[list, str]:
    folder = find_fault_filtered(split_dir) or download_fault_filtered()
    by_stem = read_fault_filtered(folder)
    return [by_stem.get(Path(t.path).stem) for t in tracks], str(folder)


def _auto_scheme(split_dir: OptPath, allow_fault_filtered: bool, why_random: str) -> tuple[str, str]:
    """``auto`` resolved: ``(scheme, why)``; fault-filtered when its lists are found."""
    if not allow_fault_filtered:
        return "random", why_random
    lists = find_fault_filtered(split_dir)
    if lists is not None:
        return "fault-filtered", f"auto: GTZAN's fault-filtered lists found in {lists}"
    return "random", (f"auto: GTZAN's fault-filtered lists not found (looked in {fault_filtered_cache_dir()}); "
                      "pass --split-dir with train/valid/test_filtered.txt for the published split")


def apply_labelled_split(
    tracks: list[Track], split: str, split_dir: OptPath, seed: int, folds: int, *, allow_fault_filtered: bool,
    why_random: str = "",
) -> tuple[list[Track], str, dict, str]:
    """Assign splits to labelled tracks; returns (tracks, resolved scheme, options, why that scheme).
    ``why_random``: the reason given when ``auto`` falls back to ``random`` without looking for lists."""
    why = f"asked for (--split-scheme {split})"
    if split == "auto":
        split, why = _auto_scheme(split_dir, allow_fault_filtered, why_random)
    if split == "fault-filtered":
        splits, folder = _fault_filtered_splits(tracks, split_dir)
        unlisted = sum(s is None for s in splits)
        if unlisted:
            why += f"; {unlisted} of {len(splits)} clips are in no list (no split)"
        return with_splits(tracks, splits), split, {"split_dir": folder}, why
    if split in ("random", "random-val", "kfold"):
        opts = {"seed": seed, **({"folds": folds} if split == "kfold" else {})}
        return with_splits(tracks, _seeded_splits(tracks, split, seed, folds)), split, opts, why
    raise unknown_scheme(split, LABELLED_SCHEMES)


_SCHEME_HOME = {"fault-filtered": "GTZAN's published lists", "audioset-eval": "MusicCaps", "manifest": "a manifest CSV with a split column",
                "folders": "class folders inside train/, valid/, test/"}


def unknown_scheme(split: str, accepted: tuple[str, ...]) -> DatasetError:
    """The one-line error for a ``--split-scheme`` this kind of dataset does not take."""
    if split in _SCHEME_HOME:
        return DatasetError(f"--split-scheme {split} is for {_SCHEME_HOME[split]}, not this dataset "
                            f"(use {', '.join(accepted)})")
    return DatasetError(not_one_of("--split-scheme", split, accepted, "split scheme"))


def split_key(split: str | None) -> tuple:
    """Sort key of split names: train, valid, test, then fold0, fold1, ..., then others, then None."""
    if split is None:
        return (3, 0, "")
    if split in SPLIT_ORDER:
        return (0, SPLIT_ORDER.index(split), "")
    m = re.fullmatch(r"fold(\d+)", split)
    return (1, int(m.group(1)), "") if m else (2, 0, split)


# ---- CSV files (MusicCaps, manifests) ---------------------------------------------------------------


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a CSV file, names and values stripped; :class:`DatasetError` naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from exc
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()} for r in rows]
    return header, rows


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file (empty when it cannot be read)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def find_csv(root: Path, default_name: str, matches: Callable[[Path], bool], kind: str) -> Path | None:
    """The CSV of a ``kind`` dataset in ``root``: ``root`` itself if it is a file, else ``default_name``
    in it, else its one CSV that ``matches`` (several: :class:`DatasetError`), else None."""
    if root.is_file():
        return root
    if (root / default_name).is_file():
        return root / default_name
    cands = [p for p in sorted(root.glob("*.csv")) if matches(p)]
    if len(cands) > 1:
        raise DatasetError(f"{root}: several {kind} CSV files ({', '.join(p.name for p in cands)}); pass one")
    return cands[0] if cands else None
