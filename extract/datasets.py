"""Dataset adapters: a folder on disk -> a :class:`Dataset` (a list of :class:`Track`).

Four kinds, picked from the folder's contents or named by ``dataset_type``:

- ``gtzan``: genre folders whose files are named ``<folder>.<digits>.<ext>``, under
  ``genres_original/``, ``genres/`` or the root (recognised by this structure, whatever the genre
  names: :mod:`embedstore.extract.layout`). Track id = file stem (``blues.00012``), task ``genre``.
- ``musiccaps``: ``musiccaps-public.csv`` plus pre-downloaded clips named ``<ytid>.<ext>`` in the
  root or in ``audio/`` or ``clips/``. Track id = ytid, task ``caption``.
- ``folder``: one sub-folder per class (label = folder name), task ``label``; wrapper folders above
  the classes are descended (``mydata/train_audio/<class>/``), and split folders
  (``train/<class>/``, ``test/<class>/``) give the splits. Fewer than two classes is an error.
- ``manifest``: a CSV with header ``path,label[,split][,caption]``, paths relative to the CSV.
  A path outside the CSV's folder (``../x.wav`` or absolute) gets the id
  ``ext/<8 hex digits of the SHA-1 of its folder as written>/<stem>``: stable for the same manifest
  text, and never holding ``..`` or a leading ``/``.

``label_name`` names the class-label task (``--label-name genre``: a folder of genres answers to
``--task genre``). Every audio file is checked at discovery (a header read,
:func:`~embedstore.extract.audio.audio_info`); unreadable or missing files go to ``Dataset.skipped`` as
``(path, reason)`` and never into ``tracks``. Split schemes are described in
:mod:`embedstore.extract.splits`; ``Dataset.split_reason`` says why ``auto`` chose the one it did.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from embedstore.errors import AudioError, DatasetError, not_one_of
from embedstore.extract.audio import AudioInfo, audio_info
from embedstore.extract.layout import (
    audio_files,
    audio_subdirs,
    descend_wrappers,
    gtzan_genre_root,
    names_missing_extra,
    split_folders,
)
from embedstore.extract.splits import (
    assign_splits,
    audioset_eval_splits,
    download_fault_filtered,
    fault_filtered_cache_dir,
    find_fault_filtered,
    read_fault_filtered,
)
from embedstore.store.failures import format_reason_groups

__all__ = [
    "DATASET_KINDS",
    "SPLIT_SCHEMES",
    "GTZAN_GENRES",
    "MUSICCAPS_CSV",
    "Dataset",
    "Track",
    "discover_dataset",
    "format_dataset_summary",
    "summarize_dataset",
]

DATASET_KINDS = ("gtzan", "musiccaps", "folder", "manifest")
#: every --split-scheme some dataset kind accepts (see :func:`discover_dataset` for which kind takes which)
SPLIT_SCHEMES = ("auto", "fault-filtered", "random", "random-val", "kfold", "audioset-eval", "manifest", "folders")
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
MUSICCAPS_CSV = "musiccaps-public.csv"
MUSICCAPS_AUDIO_DIRS = (".", "audio", "clips")
#: A MusicCaps file longer than its segment by more than this (seconds) is taken as the full video.
MUSICCAPS_FULL_VIDEO_TOLERANCE = 1.0

_LABEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                  "validation": "valid", "dev": "valid", "test": "test", "eval": "test"}
_SPLIT_ORDER = ("train", "valid", "test")
_OptPath = str | os.PathLike | None


@dataclass(frozen=True)
class Track:
    """One clip: where it is, what it is labelled, which split it belongs to, and which window to read.

    ``path`` is relative to the dataset root (POSIX); ``offset``/``duration`` (seconds) select a
    segment of the file (``duration=None``: to the end), e.g. MusicCaps' 10 s inside a full video.
    """

    id: str
    path: str
    label: str | None
    split: str | None
    caption: str | None
    offset: float = 0.0
    duration: float | None = None


@dataclass
class Dataset:
    """A discovered dataset: its readable tracks, the files skipped (with reasons) and its tasks.

    ``tasks`` maps a task name to the :class:`Track` attribute that holds its target, e.g.
    ``{"genre": "label"}`` for GTZAN or ``{"caption": "caption"}`` for MusicCaps.
    ``split_scheme`` is the scheme actually used (``"auto"`` resolved), ``split_options`` its
    parameters (seed, folds, list folder), ``split_reason`` one line on why that scheme (where
    ``auto`` looked for split lists, ...). ``layout`` is JSON-able facts on how the folder was read:
    ``genre_root``, ``genres``, ``missing_standard_genres``, ``extra_genres`` (GTZAN);
    ``class_root`` (relative to the folder given, after wrapper folders), ``classes``,
    ``split_folders`` (class folders).
    """

    name: str
    kind: str
    root: Path
    tracks: list[Track]
    skipped: list[tuple[str, str]]
    tasks: dict[str, str]
    split_scheme: str
    split_options: dict = field(default_factory=dict)
    split_reason: str = ""
    layout: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tracks)

    def abspath(self, track: Track) -> Path:
        """Absolute path of ``track``'s audio file."""
        return self.root / track.path

    def split_tracks(self, split: str | None) -> list[Track]:
        """Tracks whose split is ``split`` (``None``: the tracks in no split)."""
        return [t for t in self.tracks if t.split == split]


# ---- helpers shared by the adapters ------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _probe(path: Path, root: Path, skipped: list[tuple[str, str]]) -> AudioInfo | None:
    """Header-check ``path``; on failure record ``(relative path, reason)`` in ``skipped``."""
    try:
        return audio_info(path)
    except AudioError as exc:
        skipped.append((_rel(path, root), exc.reason))
        return None


def _stem_id(rel: str) -> str:
    """Track id of a file at ``rel`` (POSIX, relative): the path without its suffix."""
    return PurePosixPath(rel).with_suffix("").as_posix()


def _dedupe(tracks: list[Track], skipped: list[tuple[str, str]]) -> list[Track]:
    seen: dict[str, str] = {}
    out = []
    for t in tracks:
        if t.id in seen:
            skipped.append((t.path, f"duplicate track id {t.id!r} (same clip as {seen[t.id]})"))
            continue
        seen[t.id] = t.path
        out.append(t)
    return out


def _with_splits(tracks: list[Track], splits: list[str | None]) -> list[Track]:
    return [Track(t.id, t.path, t.label, s, t.caption, t.offset, t.duration) for t, s in zip(tracks, splits)]


def _labels_if_complete(tracks: list[Track]) -> list[str | None] | None:
    labels = [t.label for t in tracks]
    return None if any(lab is None for lab in labels) else labels


def _seeded_splits(tracks: list[Track], scheme: str, seed: int, folds: int) -> list[str]:
    return assign_splits(len(tracks), scheme, labels=_labels_if_complete(tracks), seed=seed, folds=folds)


def _fault_filtered_splits(tracks: list[Track], split_dir: _OptPath) -> tuple[list, str]:
    folder = find_fault_filtered(split_dir) or download_fault_filtered()
    by_stem = read_fault_filtered(folder)
    return [by_stem.get(Path(t.path).stem) for t in tracks], str(folder)


def _auto_scheme(split_dir: _OptPath, allow_fault_filtered: bool, why_random: str) -> tuple[str, str]:
    """``auto`` resolved: ``(scheme, why)``; fault-filtered when its lists are found."""
    if not allow_fault_filtered:
        return "random", why_random
    lists = find_fault_filtered(split_dir)
    if lists is not None:
        return "fault-filtered", f"auto: GTZAN's fault-filtered lists found in {lists}"
    return "random", (f"auto: GTZAN's fault-filtered lists not found (looked in {fault_filtered_cache_dir()}); "
                      "pass --split-dir with train/valid/test_filtered.txt for the published split")


def _apply_labelled_split(
    tracks: list[Track], split: str, split_dir: _OptPath, seed: int, folds: int, *, allow_fault_filtered: bool,
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
        return _with_splits(tracks, splits), split, {"split_dir": folder}, why
    if split in ("random", "random-val", "kfold"):
        opts = {"seed": seed, **({"folds": folds} if split == "kfold" else {})}
        return _with_splits(tracks, _seeded_splits(tracks, split, seed, folds)), split, opts, why
    raise _unknown_scheme(split, ("auto", "fault-filtered", "random", "random-val", "kfold"))


_SCHEME_HOME = {"fault-filtered": "GTZAN's published lists", "audioset-eval": "MusicCaps", "manifest": "a manifest CSV with a split column",
                "folders": "class folders inside train/, valid/, test/"}


def _unknown_scheme(split: str, accepted: tuple[str, ...]) -> DatasetError:
    """The one-line error for a ``--split-scheme`` this kind of dataset does not take."""
    if split in _SCHEME_HOME:
        return DatasetError(f"--split-scheme {split} is for {_SCHEME_HOME[split]}, not this dataset "
                            f"(use {', '.join(accepted)})")
    return DatasetError(not_one_of("--split-scheme", split, accepted, "split scheme"))


def _check_label_name(label_name: str | None) -> str | None:
    if label_name is None:
        return None
    if not _LABEL_NAME.fullmatch(label_name) or label_name == "caption":
        raise DatasetError(f"--label-name {label_name!r}: use a word of letters, digits, '_' or '-' "
                           "starting with a letter (not 'caption'), e.g. genre")
    return label_name


# ---- GTZAN -------------------------------------------------------------------------------------


def _discover_gtzan(root: Path, split: str, split_dir: _OptPath, seed: int, folds: int, label_name: str | None
                    ) -> Dataset:
    genre_root = gtzan_genre_root(root)
    if genre_root is None:
        raise DatasetError(
            f"{root}: not a GTZAN folder (expected genre folders of files named <genre>.<digits>.<ext>, "
            f"e.g. genres_original/jazz/jazz.00054.wav, under genres_original/, genres/ or the folder itself)"
        )
    skipped: list[tuple[str, str]] = []
    tracks = []
    genres = audio_subdirs(genre_root)
    for genre_dir in genres:
        for path in audio_files(genre_dir):
            if _probe(path, root, skipped) is not None:
                tracks.append(Track(path.stem, _rel(path, root), genre_dir.name, None, None))
    tracks = _dedupe(tracks, skipped)
    tracks, scheme, opts, why = _apply_labelled_split(tracks, split, split_dir, seed, folds,
                                                      allow_fault_filtered=True)
    missing, extra = names_missing_extra([g.name for g in genres], GTZAN_GENRES)
    layout = {"genre_root": _rel(genre_root, root), "genres": [g.name for g in genres],
              "missing_standard_genres": missing, "extra_genres": extra}
    return Dataset("gtzan", "gtzan", root, tracks, skipped, {label_name or "genre": "label"}, scheme, opts,
                   why, layout)


# ---- folder of class sub-folders ---------------------------------------------------------------


def _one_class_error(given: Path, level: Path, classes: list[Path], loose: list[Path]) -> DatasetError:
    """The error for a folder that holds fewer than two classes: what was found and where to point."""
    if not classes:  # wrappers descended down to one folder of loose files
        found = f"all {len(loose)} audio files sit in one folder, {_rel(level, given)}/"
        hint = f", or at {level} to extract its files unlabelled"
    else:
        n = sum(len(audio_files(c, recursive=True)) for c in classes)
        found = f"{classes[0].name!r} ({', '.join(_rel(c, given) + '/' for c in classes)}: {n} audio files)"
        if loose:
            found += f", and {len(loose)} loose audio files in {_rel(level, given)}/"
        hint = (", or move the loose files into class folders" if loose
                else f", or at {classes[0]} to extract its files unlabelled" if len(classes) == 1 else "")
    return DatasetError(f"{given}: only one class: {found}; a folder dataset needs one sub-folder per class "
                        f"(at least 2): point at the folder that holds all the class folders{hint}")


def _class_groups(given: Path, level: Path) -> tuple[list[tuple[str | None, Path]], list[Path], dict]:
    """``([(split or None, class folder)], loose files outside every class folder, layout)`` of a
    folder dataset whose wrappers are already descended to ``level``."""
    by_split = split_folders(level, _SPLIT_ALIASES)
    bases = [(None, level)] if by_split is None else sorted(by_split.items(), key=lambda kv: _split_key(kv[0]))
    groups = [(s, c) for s, base in bases for c in audio_subdirs(base)]
    loose = [p for _, base in bases for p in audio_files(base)]
    classes = sorted({c.name for _, c in groups})
    if len(classes) < 2 and (groups or level != given):
        raise _one_class_error(given, level, [c for _, c in groups], loose)
    layout = {"class_root": _rel(level, given), "classes": classes}
    if by_split is not None:
        layout["split_folders"] = {s: _rel(d, level) for s, d in bases}
    return groups, loose, layout


def _discover_folder(given: Path, level: Path, split: str, split_dir: _OptPath, seed: int, folds: int,
                     label_name: str | None) -> Dataset:
    """Class folders at ``level`` (``given`` with its wrapper folders descended)."""
    groups, loose, layout = _class_groups(given, level)
    skipped: list[tuple[str, str]] = []
    tracks = []
    for split_name, class_dir in groups:
        for path in audio_files(class_dir, recursive=True):
            if _probe(path, level, skipped) is not None:
                rel = _rel(path, level)
                tracks.append(Track(_stem_id(rel), rel, class_dir.name, split_name, None))
    for path in loose:
        if groups:
            skipped.append((_rel(path, level), "not in a class folder"))
        elif _probe(path, level, skipped) is not None:  # no class folders at all: an unlabelled collection
            rel = _rel(path, level)
            tracks.append(Track(_stem_id(rel), rel, None, None, None))
    if not tracks and not skipped:
        raise DatasetError(f"{given}: no audio files found (expected one sub-folder of audio files per class)")
    if label_name and not groups:
        raise DatasetError(f"--label-name {label_name}: {given} has no class folders, so no labels to name")
    tasks = {label_name or "label": "label"} if groups else {}
    tracks = _dedupe(tracks, skipped)
    if "split_folders" in layout and split in ("auto", "folders"):
        scheme, opts = "folders", {}
        why = f"auto: the clips sit in split folders ({', '.join(layout['split_folders'].values())})"
    elif split == "folders":
        raise DatasetError(f"--split-scheme folders: {level} has no split folders (train/, valid/, test/)")
    else:
        tracks, scheme, opts, why = _apply_labelled_split(
            tracks, split, split_dir, seed, folds, allow_fault_filtered=split_dir is not None,
            why_random="auto: the class folders name no split")
    return Dataset(given.name, "folder", level, tracks, skipped, tasks, scheme, opts, why, layout)


# ---- manifest CSV ------------------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from exc
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()} for r in rows]
    return header, rows


def _normalize_split(value: str, where: str) -> str | None:
    v = value.strip().lower()
    if not v:
        return None
    if v in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[v]
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
    return full, rel, _stem_id(rel)


def _manifest_tasks(tracks: list[Track], label_task: str) -> dict[str, str]:
    tasks = {}
    if any(t.label is not None for t in tracks):
        tasks[label_task] = "label"
    if any(t.caption is not None for t in tracks):
        tasks["caption"] = "caption"
    return tasks


def _discover_manifest(csv_path: Path, split: str, split_dir: _OptPath, seed: int, folds: int,
                       label_name: str | None) -> Dataset:
    root = csv_path.parent
    header, rows = _read_csv(csv_path)
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
        if _probe(path, root, skipped) is None:
            continue
        tracks.append(Track(
            id=track_id,
            path=rel,
            label=row.get(label_col) or None,
            split=_normalize_split(row.get("split", ""), f"{csv_path}:{lineno}"),
            caption=row.get("caption") or None,
        ))
    tracks = _dedupe(tracks, skipped)
    tasks = _manifest_tasks(tracks, label_name or "label")
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
        tracks, scheme, opts, why = _apply_labelled_split(
            tracks, split, split_dir, seed, folds, allow_fault_filtered=split_dir is not None, why_random=why_random
        )
    return Dataset(root.name, "manifest", root, tracks, skipped, tasks, scheme, opts, why)


# ---- MusicCaps ---------------------------------------------------------------------------------


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "t")


def _musiccaps_clip_index(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for sub in MUSICCAPS_AUDIO_DIRS:
        folder = root / sub
        if folder.is_dir():
            for p in audio_files(folder):
                index.setdefault(p.stem, p)
    return index


def _musiccaps_splits(tracks: list[Track], eval_flags: list[bool], split: str, seed: int, folds: int):
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
    raise _unknown_scheme(split, ("auto", "random", "random-val", "kfold", "audioset-eval"))


def _discover_musiccaps(csv_path: Path, split: str, seed: int, folds: int, label_name: str | None) -> Dataset:
    if label_name:
        raise DatasetError(f"--label-name {label_name}: a MusicCaps dataset has captions, no class labels to name")
    root = csv_path.parent
    header, rows = _read_csv(csv_path)
    missing_cols = [c for c in ("ytid", "start_s", "end_s", "caption") if c not in header]
    if missing_cols:
        raise DatasetError(f"{csv_path}: not a MusicCaps CSV (missing columns {', '.join(missing_cols)})")
    clips = _musiccaps_clip_index(root)
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
        info = _probe(path, root, skipped)
        if info is None:
            continue
        segment = end - start
        offset, duration = 0.0, None
        if info.duration > segment + MUSICCAPS_FULL_VIDEO_TOLERANCE:  # the full video: cut the segment
            if info.duration + MUSICCAPS_FULL_VIDEO_TOLERANCE < end:
                skipped.append((_rel(path, root), f"{info.duration:.1f} s long: neither the {segment:g} s clip "
                                                  f"nor a full video reaching end_s={end:g}"))
                continue
            offset, duration = start, segment
        tracks.append(Track(ytid, _rel(path, root), None, None, row.get("caption") or None, offset, duration))
        eval_flags.append(_truthy(row.get("is_audioset_eval", "")))
    splits, scheme, opts, why = _musiccaps_splits(tracks, eval_flags, split, seed, folds)
    return Dataset("musiccaps", "musiccaps", root, _with_splits(tracks, splits), skipped,
                   {"caption": "caption"}, scheme, opts, why)


# ---- detection and the public entry point ------------------------------------------------------


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _is_musiccaps_csv(path: Path) -> bool:
    return {"ytid", "start_s", "end_s", "caption"} <= set(_csv_header(path))


def _find_csv(root: Path, kind: str) -> Path | None:
    """The CSV of a musiccaps/manifest dataset in ``root`` (``root`` itself if it is a CSV)."""
    if root.is_file():
        return root
    if kind == "musiccaps":
        if (root / MUSICCAPS_CSV).is_file():
            return root / MUSICCAPS_CSV
        cands = [p for p in sorted(root.glob("*.csv")) if _is_musiccaps_csv(p)]
    else:
        if (root / "manifest.csv").is_file():
            return root / "manifest.csv"
        cands = [p for p in sorted(root.glob("*.csv")) if "path" in _csv_header(p)]
    if len(cands) > 1:
        raise DatasetError(f"{root}: several {kind} CSV files ({', '.join(p.name for p in cands)}); pass one")
    return cands[0] if cands else None


def _has_dataset_csv(folder: Path) -> bool:
    """True when ``folder`` holds a MusicCaps or manifest CSV (wrapper descent stops there)."""
    return any(_is_musiccaps_csv(p) or "path" in _csv_header(p) for p in folder.glob("*.csv"))


def _data_level(root: Path, kind: str | None) -> Path:
    """``root`` with its wrapper folders descended (:func:`~embedstore.extract.layout.descend_wrappers`);
    the descent stops at a dataset CSV or GTZAN's layout unless ``kind`` says ``folder``."""
    if not root.is_dir() or kind in ("manifest", "musiccaps"):
        return root
    if kind == "folder":
        return descend_wrappers(root, lambda d: False)
    return descend_wrappers(root, lambda d: (kind is None and _has_dataset_csv(d)) or gtzan_genre_root(d) is not None)


def _detect_kind(root: Path) -> str:
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: a dataset is a folder or a CSV manifest, not a single file")
        return "musiccaps" if _is_musiccaps_csv(root) else "manifest"
    if _find_csv(root, "musiccaps") is not None:
        return "musiccaps"
    if gtzan_genre_root(root) is not None:
        return "gtzan"
    if _find_csv(root, "manifest") is not None:
        return "manifest"
    if audio_subdirs(root) or audio_files(root):
        return "folder"
    raise DatasetError(
        f"{root}: cannot tell the dataset type (no GTZAN genre folders, {MUSICCAPS_CSV}, "
        f"manifest CSV with a 'path' column, or class sub-folders of audio)"
    )


def discover_dataset(
    root: str | os.PathLike,
    dataset_type: str | None = None,
    *,
    split: str = "auto",
    split_dir: str | os.PathLike | None = None,
    seed: int = 0,
    folds: int = 5,
    name: str | None = None,
    label_name: str | None = None,
) -> Dataset:
    """Scan ``root`` into a :class:`Dataset` of readable tracks with splits assigned.

    Args:
        root: dataset folder (or, for ``manifest``/``musiccaps``, the CSV file itself). Wrapper
            folders (no audio of their own, all of it in one sub-folder) are descended first.
        dataset_type: ``gtzan`` | ``musiccaps`` | ``folder`` | ``manifest``; ``None`` detects it
            (musiccaps CSV > GTZAN genre folders > manifest CSV > class sub-folders).
        split: ``auto`` | ``fault-filtered`` (GTZAN) | ``random`` | ``random-val`` | ``kfold`` |
            ``audioset-eval`` (MusicCaps) | ``manifest`` (the CSV's split column) | ``folders``
            (class folders inside ``train/``, ``valid/``, ``test/``). ``auto`` means fault-filtered
            for GTZAN when the lists are local (``split_dir`` or the cache), the CSV's split column
            for a manifest that has one, the split folders where there are some, else ``random``.
            ``random`` is stratified 80/20 train/test for labelled data and 70/10/20
            train/valid/test for MusicCaps. ``Dataset.split_reason`` says which rule applied.
        split_dir: folder holding GTZAN's ``{train,valid,test}_filtered.txt``.
        seed: seed of the random and k-fold splits (same seed, same files -> same splits).
        folds: number of folds for ``kfold``.
        name: dataset name (default: ``gtzan``/``musiccaps``, else the name of the folder given).
        label_name: name of the class-label task (default ``genre`` for GTZAN, ``label`` for
            folders and manifests; a manifest with a column of this name reads its labels there).

    Raises:
        DatasetError: ``root`` is missing, of an unknown type, holds fewer than two class folders,
            or a CSV/split list is malformed.
    """
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise DatasetError(f"{root_path}: dataset folder not found")
    label_name = _check_label_name(label_name)
    kind = dataset_type.lower() if dataset_type else None
    if kind is not None and kind not in DATASET_KINDS:
        raise DatasetError(not_one_of("--dataset-type", dataset_type, DATASET_KINDS, "dataset type"))
    if root_path.is_file() and kind not in (None, "manifest", "musiccaps"):
        raise DatasetError(f"{root_path}: a {kind} dataset is a folder, not a file")
    level = _data_level(root_path, kind)
    kind = kind or _detect_kind(level)

    if kind == "gtzan":
        ds = _discover_gtzan(level, split, split_dir, seed, folds, label_name)
    elif kind == "folder":
        ds = _discover_folder(root_path, level, split, split_dir, seed, folds, label_name)
    else:
        csv_path = _find_csv(level, kind)
        if csv_path is None:
            what = MUSICCAPS_CSV if kind == "musiccaps" else "a manifest CSV with a 'path' column"
            raise DatasetError(f"{level}: no {what} found")
        if kind == "musiccaps":
            ds = _discover_musiccaps(csv_path, split, seed, folds, label_name)
        else:
            ds = _discover_manifest(csv_path, split, split_dir, seed, folds, label_name)
    if name:
        ds.name = name
    return ds


# ---- summaries ---------------------------------------------------------------------------------


def _split_key(split: str | None) -> tuple:
    if split is None:
        return (3, 0, "")
    if split in _SPLIT_ORDER:
        return (0, _SPLIT_ORDER.index(split), "")
    m = re.fullmatch(r"fold(\d+)", split)
    return (1, int(m.group(1)), "") if m else (2, 0, split)


def summarize_dataset(ds: Dataset) -> dict:
    """Counts for a report: clips per label, per split, per (label, split), and the skipped files.

    Returns a JSON-able dict with keys ``name, kind, root, split_scheme, split_options,
    split_reason, layout, tasks, n_tracks, n_skipped, labels {label: n}, splits {split: n},
    table {label: {split: n}}, skipped [{"path", "reason"}]``; a missing label or split is the key
    ``null``/``None``. ``layout`` is :attr:`Dataset.layout`.
    """
    labels = Counter(t.label for t in ds.tracks)
    splits = Counter(t.split for t in ds.tracks)
    table: dict = {}
    for t in ds.tracks:
        row = table.setdefault(t.label, {})
        row[t.split] = row.get(t.split, 0) + 1
    split_names = sorted(splits, key=_split_key)
    return {
        "name": ds.name,
        "kind": ds.kind,
        "root": str(ds.root),
        "split_scheme": ds.split_scheme,
        "split_options": dict(ds.split_options),
        "split_reason": ds.split_reason,
        "layout": dict(ds.layout),
        "tasks": dict(ds.tasks),
        "n_tracks": len(ds.tracks),
        "n_skipped": len(ds.skipped),
        "labels": dict(sorted(labels.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))),
        "splits": {s: splits[s] for s in split_names},
        "table": {lab: {s: table[lab].get(s, 0) for s in split_names}
                  for lab in sorted(table, key=lambda k: (k is None, k or ""))},
        "skipped": [{"path": p, "reason": r} for p, r in ds.skipped],
    }


def _layout_lines(layout: dict) -> list[str]:
    """Header lines of :func:`format_dataset_summary` on where the labels were read."""
    lines = []
    if "genres" in layout:
        lines.append(f"genre folders: {len(layout['genres'])} under {layout['genre_root']}/")
        if layout["missing_standard_genres"]:
            lines.append(f"standard GTZAN genres missing: {', '.join(layout['missing_standard_genres'])}")
        if layout["extra_genres"]:
            lines.append(f"not standard GTZAN genres: {', '.join(layout['extra_genres'])}")
    if "classes" in layout:
        where = ", ".join(f"{d}/" for d in layout.get("split_folders", {}).values()) or f"{layout['class_root']}/"
        lines.append(f"class folders: {len(layout['classes'])} under {where}")
    return lines


def format_dataset_summary(ds: Dataset, *, verbose: bool = False) -> str:
    """A terminal table of :func:`summarize_dataset`: labels x splits with totals, then the skipped
    files grouped by reason with a few examples each (every file with ``verbose``)."""
    s = summarize_dataset(ds)
    opts = ", ".join(f"{k}={v}" for k, v in s["split_options"].items())
    lines = [
        f"dataset {s['name']} ({s['kind']}) at {s['root']}",
        f"tasks: {', '.join(s['tasks']) or 'none'}   split: {s['split_scheme']}" + (f" ({opts})" if opts else ""),
        *([f"split chosen: {s['split_reason']}"] if s["split_reason"] else []),
        *_layout_lines(s["layout"]),
        f"{s['n_tracks']} tracks, {s['n_skipped']} skipped",
    ]
    if s["n_tracks"]:
        cols = [("-" if k is None else k) for k in s["splits"]] + ["total"]
        rows = []
        for lab, counts in s["table"].items():
            vals = list(counts.values())
            rows.append(["(no label)" if lab is None else str(lab), *map(str, vals), str(sum(vals))])
        rows.append(["total", *map(str, s["splits"].values()), str(s["n_tracks"])])
        head = ["label", *cols]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def fmt(r: list[str]) -> str:
            return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

        lines += ["", fmt(head), *(fmt(r) for r in rows[:-1]), "-" * len(fmt(head)), fmt(rows[-1])]
    if s["skipped"]:
        lines += ["", f"skipped ({s['n_skipped']:,}):"]
        lines += format_reason_groups([(e["path"], e["reason"]) for e in s["skipped"]], verbose=verbose)
    return "\n".join(lines)
