"""Train/valid/test assignment: seeded stratified splits, k folds, and GTZAN's fault-filtered lists.

Schemes (the ``split=`` argument of :func:`embedstore.extract.datasets.discover_dataset`):

- ``random``: stratified 80/20 train/test (sklearn ``train_test_split(stratify=labels)``), as in the
  layer-wise probing studies on GTZAN; unstratified when the tracks carry no labels.
- ``random-val``: stratified 70/10/20 train/valid/test (a 12.5 % valid slice carved from the 80 %;
  that slice is unstratified when it is too small to hold one clip of every class).
- ``kfold``: ``StratifiedKFold(folds, shuffle=True, random_state=seed)``; each track's split is
  ``"fold{k}"``, the fold in which it is held out.
- ``fault-filtered``: GTZAN's published artist-filtered lists (Kereliuk, Sturm & Larsen 2015):
  ``train_filtered.txt`` (443), ``valid_filtered.txt`` (197), ``test_filtered.txt`` (290).
"""

from __future__ import annotations

import math
import os
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedstore.errors import DatasetError

__all__ = [
    "FAULT_FILTERED_FILES",
    "FAULT_FILTERED_URL",
    "assign_splits",
    "audioset_eval_splits",
    "download_fault_filtered",
    "fault_filtered_cache_dir",
    "find_fault_filtered",
    "read_fault_filtered",
]

#: split name -> list file name, for the GTZAN fault-filtered partition.
FAULT_FILTERED_FILES = {"train": "train_filtered.txt", "valid": "valid_filtered.txt", "test": "test_filtered.txt"}
#: Where the public lists live (``{name}`` is ``train``/``valid``/``test``).
FAULT_FILTERED_URL = "https://raw.githubusercontent.com/coreyker/dnn-mgr/master/gtzan/{name}_filtered.txt"


def fault_filtered_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/embedstore/gtzan-fault-filtered`` (default ``~/.cache/...``), read at call time."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embedstore" / "gtzan-fault-filtered"


def _has_lists(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FAULT_FILTERED_FILES.values())


def find_fault_filtered(split_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding the three list files: ``split_dir`` if given, else the cache, else None.

    Raises :class:`DatasetError` if ``split_dir`` is given but lacks one of the files.
    """
    if split_dir is not None:
        folder = Path(split_dir)
        if not _has_lists(folder):
            missing = [n for n in FAULT_FILTERED_FILES.values() if not (folder / n).is_file()]
            raise DatasetError(f"--split-dir {folder}: lacks {', '.join(missing)}")
        return folder
    cache = fault_filtered_cache_dir()
    return cache if _has_lists(cache) else None


def download_fault_filtered(dest: str | os.PathLike | None = None, *, timeout: float = 30.0) -> Path:
    """Download the three public lists into ``dest`` (default: the cache dir) once; return the folder."""
    folder = Path(dest) if dest is not None else fault_filtered_cache_dir()
    if _has_lists(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in FAULT_FILTERED_FILES.items():
        url = FAULT_FILTERED_URL.format(name=split)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
                text = resp.read().decode("utf-8")
        except Exception as exc:  # network errors come in many types
            raise DatasetError(
                f"{url}: could not download the GTZAN fault-filtered list ({exc}); "
                f"put the three list files (train/valid/test_filtered.txt) in a folder and pass it as --split-dir"
            ) from exc
        tmp = folder / (name + ".part")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(folder / name)  # atomic: a half download never looks complete
    return folder


def read_fault_filtered(split_dir: str | os.PathLike) -> dict[str, str]:
    """Read the three list files into ``{stem: split}``, e.g. ``{"blues.00029": "train", ...}``.

    Lines look like ``blues/blues.00029.wav``; matching by stem makes ``.au`` and ``.wav`` copies
    of GTZAN both work. Raises :class:`DatasetError` for a missing file or a clip in two lists.
    """
    folder = Path(split_dir)
    out: dict[str, str] = {}
    for split, name in FAULT_FILTERED_FILES.items():
        path = folder / name
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read split list ({exc.strerror or exc})") from exc
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            stem = Path(line.replace("\\", "/")).stem
            if out.get(stem, split) != split:
                raise DatasetError(f"{path}: {stem} is listed in both {out[stem]} and {split}")
            out[stem] = split
    return out


def _stratify(labels: Sequence[str | None] | None) -> np.ndarray | None:
    if labels is None or any(lab is None for lab in labels):
        return None
    return np.asarray(labels, dtype=object)


def _split_error(exc: ValueError, labels: Sequence[str | None] | None, what: str) -> DatasetError:
    hint = ""
    if labels is not None:
        counts = Counter(labels)
        rare = sorted(str(k) for k, v in counts.items() if v < 2)
        if rare:
            hint = f"; classes with fewer than 2 clips: {', '.join(rare[:5])}"
    return DatasetError(f"cannot make a {what} split ({exc}){hint}")


def assign_splits(
    n: int,
    scheme: str,
    *,
    labels: Sequence[str | None] | None = None,
    seed: int = 0,
    folds: int = 5,
) -> list[str]:
    """Split names for ``n`` items under ``scheme`` (``random``, ``random-val`` or ``kfold``).

    Stratified by ``labels`` when every item has one, plain random otherwise. Deterministic for a
    given ``seed`` and item order. Returns a list of ``n`` names (``train``/``valid``/``test`` or
    ``fold0``..``fold{folds-1}``).
    """
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split  # slow import: lazy

    if n == 0:
        return []
    idx = np.arange(n)
    strat = _stratify(labels)
    out = np.empty(n, dtype=object)
    if scheme in ("random", "random-val"):
        try:
            if strat is not None and math.ceil(0.2 * n) < len(set(strat)) and min(Counter(strat).values()) >= 2:
                strat = None  # too few test clips for one per class (but every class has 2): plain random split
            rest, test = train_test_split(idx, test_size=0.2, random_state=seed, stratify=strat)
            out[test] = "test"
            if scheme == "random":
                out[rest] = "train"
            else:
                sub = None if strat is None else strat[rest]
                if sub is not None and math.ceil(0.125 * len(rest)) < len(set(sub)):
                    sub = None  # too few clips for one valid clip per class: plain random valid slice
                train, valid = train_test_split(rest, test_size=0.125, random_state=seed, stratify=sub)
                out[train] = "train"
                out[valid] = "valid"
        except ValueError as exc:
            raise _split_error(exc, labels, scheme) from exc
    elif scheme == "kfold":
        if folds < 2:
            raise DatasetError(f"kfold needs at least 2 folds, got {folds}")
        splitter = (
            KFold(folds, shuffle=True, random_state=seed)
            if strat is None
            else StratifiedKFold(folds, shuffle=True, random_state=seed)
        )
        try:
            for k, (_, held_out) in enumerate(splitter.split(idx, strat)):
                out[held_out] = f"fold{k}"
        except ValueError as exc:
            raise _split_error(exc, labels, f"{folds}-fold") from exc
    else:
        raise DatasetError(f"unknown split scheme {scheme!r} (use random, random-val or kfold)")
    return [str(s) for s in out]


def audioset_eval_splits(is_eval: Sequence[bool], *, seed: int = 0, valid_fraction: float = 0.1) -> list[str]:
    """MusicCaps' own partition: AudioSet-eval clips -> ``test``; the rest -> ``train``, with a seeded
    ``valid_fraction`` of them carved out as ``valid``. Returns one split name per item."""
    from sklearn.model_selection import train_test_split

    out = ["test" if e else "train" for e in is_eval]
    train_idx = [i for i, e in enumerate(is_eval) if not e]
    if len(train_idx) >= 2:
        _, valid_idx = train_test_split(train_idx, test_size=valid_fraction, random_state=seed)
        for i in valid_idx:
            out[i] = "valid"
    return out
