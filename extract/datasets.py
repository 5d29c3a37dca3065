"""Dataset adapters: a folder on disk -> a :class:`Dataset` (a list of :class:`Track`).

Four kinds, picked from the folder's contents or named by ``dataset_type``:

- ``gtzan``: ``genres_original/<genre>/<genre>.000NN.wav``, ``genres/<genre>/<genre>.000NN.au``, or
  the genre folders directly under the root. Track id = file stem (``blues.00012``), task ``genre``.
- ``musiccaps``: ``musiccaps-public.csv`` plus pre-downloaded clips named ``<ytid>.<ext>`` in the
  root or in ``audio/`` or ``clips/``. Track id = ytid, task ``caption``.
- ``folder``: one sub-folder per class (label = folder name), task ``label``.
- ``manifest``: a CSV with header ``path,label[,split][,caption]``, paths relative to the CSV.

Every audio file is checked at discovery (a header read, :func:`~embedstore.extract.audio.audio_info`);
unreadable or missing files go to ``Dataset.skipped`` as ``(path, reason)`` and never into ``tracks``.
Split schemes are described in :mod:`embedstore.extract.splits`.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from embedstore.errors import AudioError, DatasetError
from embedstore.extract.audio import AudioInfo, audio_info, is_audio_path
from embedstore.extract.splits import (
    assign_splits,
    audioset_eval_splits,
    download_fault_filtered,
    find_fault_filtered,
    read_fault_filtered,
)
from embedstore.store.failures import format_reason_groups

__all__ = [
    "DATASET_KINDS",
    "GTZAN_GENRES",
    "MUSICCAPS_CSV",
    "Dataset",
    "Track",
    "discover_dataset",
    "format_dataset_summary",
    "summarize_dataset",
]

DATASET_KINDS = ("gtzan", "musiccaps", "folder", "manifest")
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
MUSICCAPS_CSV = "musiccaps-public.csv"
MUSICCAPS_AUDIO_DIRS = (".", "audio", "clips")
#: A MusicCaps file longer than its segment by more than this (seconds) is taken as the full video.
MUSICCAPS_FULL_VIDEO_TOLERANCE = 1.0

_GTZAN_LAYOUTS = ("genres_original", "genres", ".")
_GTZAN_NAME = re.compile(r"^(?P<genre>[a-z]+)\.\d{5}$")
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
    parameters (seed, folds, list folder).
    """

    name: str
    kind: str
    root: Path
    tracks: list[Track]
    skipped: list[tuple[str, str]]
    tasks: dict[str, str]
    split_scheme: str
    split_options: dict = field(default_factory=dict)

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


def _audio_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Audio files (by suffix, hidden files excluded) under ``folder``, sorted by path."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_audio_path(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


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


def _apply_labelled_split(
    tracks: list[Track], split: str, split_dir: _OptPath, seed: int, folds: int, *, allow_fault_filtered: bool
) -> tuple[list[Track], str, dict]:
    """Assign splits to labelled tracks; returns (tracks, resolved scheme, options)."""
    if split == "auto":
        has_lists = allow_fault_filtered and find_fault_filtered(split_dir) is not None
        split = "fault-filtered" if has_lists else "random"
    if split == "fault-filtered":
        splits, folder = _fault_filtered_splits(tracks, split_dir)
        return _with_splits(tracks, splits), split, {"split_dir": folder}
    if split in ("random", "random-val", "kfold"):
        opts = {"seed": seed, **({"folds": folds} if split == "kfold" else {})}
        return _with_splits(tracks, _seeded_splits(tracks, split, seed, folds)), split, opts
    raise DatasetError(f"unknown split scheme {split!r} (use auto, fault-filtered, random, random-val or kfold)")


# ---- GTZAN -------------------------------------------------------------------------------------


def _gtzan_genre_root(root: Path) -> Path | None:
    """The folder holding GTZAN's genre folders, or None if ``root`` is not laid out like GTZAN."""
    for layout in _GTZAN_LAYOUTS:
        cand = root / layout
        if not cand.is_dir():
            continue
        subs = _subdirs(cand)
        if not subs or any(s.name not in GTZAN_GENRES for s in subs):
            continue
        for sub in subs:
            if any(_GTZAN_NAME.match(p.stem) for p in sub.iterdir() if is_audio_path(p)):
                return cand
    return None


def _discover_gtzan(root: Path, split: str, split_dir: _OptPath, seed: int, folds: int) -> Dataset:
    genre_root = _gtzan_genre_root(root)
    if genre_root is None:
        raise DatasetError(
            f"{root}: not a GTZAN folder (expected genres_original/<genre>/<genre>.000NN.wav, "
            f"genres/<genre>/<genre>.000NN.au or <genre>/ folders)"
        )
    skipped: list[tuple[str, str]] = []
    tracks = []
    for genre_dir in _subdirs(genre_root):
        for path in _audio_files(genre_dir):
            if _probe(path, root, skipped) is not None:
                tracks.append(Track(path.stem, _rel(path, root), genre_dir.name, None, None))
    tracks = _dedupe(tracks, skipped)
    tracks, scheme, opts = _apply_labelled_split(tracks, split, split_dir, seed, folds, allow_fault_filtered=True)
    return Dataset("gtzan", "gtzan", root, tracks, skipped, {"genre": "label"}, scheme, opts)


# ---- folder of class sub-folders ---------------------------------------------------------------


def _discover_folder(root: Path, split: str, split_dir: _OptPath, seed: int, folds: int) -> Dataset:
    skipped: list[tuple[str, str]] = []
    tracks = []
    classes = [d for d in _subdirs(root) if _audio_files(d, recursive=True)]
    if classes:
        for class_dir in classes:
            for path in _audio_files(class_dir, recursive=True):
                if _probe(path, root, skipped) is not None:
                    rel = _rel(path, root)
                    tracks.append(Track(rel.rsplit(".", 1)[0], rel, class_dir.name, None, None))
        tasks = {"label": "label"}
    else:  # loose files, no classes: an unlabelled collection
        for path in _audio_files(root):
            if _probe(path, root, skipped) is not None:
                rel = _rel(path, root)
                tracks.append(Track(rel.rsplit(".", 1)[0], rel, None, None, None))
        tasks = {}
    if not tracks and not skipped:
        raise DatasetError(f"{root}: no audio files found (expected one sub-folder of audio files per class)")
    tracks = _dedupe(tracks, skipped)
    tracks, scheme, opts = _apply_labelled_split(
        tracks, split, split_dir, seed, folds, allow_fault_filtered=split_dir is not None
    )
    return Dataset(root.name, "folder", root, tracks, skipped, tasks, scheme, opts)


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


def _discover_manifest(csv_path: Path, split: str, split_dir: _OptPath, seed: int, folds: int) -> Dataset:
    root = csv_path.parent
    header, rows = _read_csv(csv_path)
    if "path" not in header:
        raise DatasetError(f"{csv_path}: manifest needs a 'path' column (header: {','.join(header) or 'empty'})")
    skipped: list[tuple[str, str]] = []
    tracks = []
    for lineno, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise DatasetError(f"{csv_path}:{lineno}: empty path")
        path = Path(row["path"])
        path = path if path.is_absolute() else root / path
        rel = _rel(path, root)
        if not path.exists():
            skipped.append((rel, "missing on disk"))
            continue
        if _probe(path, root, skipped) is None:
            continue
        tracks.append(Track(
            id=rel.rsplit(".", 1)[0],
            path=rel,
            label=row.get("label") or None,
            split=_normalize_split(row.get("split", ""), f"{csv_path}:{lineno}"),
            caption=row.get("caption") or None,
        ))
    tracks = _dedupe(tracks, skipped)
    tasks = {}
    if any(t.label is not None for t in tracks):
        tasks["label"] = "label"
    if any(t.caption is not None for t in tracks):
        tasks["caption"] = "caption"
    has_splits = "split" in header and tracks and all(t.split is not None for t in tracks)
    if split == "manifest" or (split == "auto" and has_splits):
        if not has_splits:
            raise DatasetError(f"{csv_path}: split='manifest' needs a 'split' value on every row")
        scheme, opts = "manifest", {}
    else:
        tracks, scheme, opts = _apply_labelled_split(
            tracks, split, split_dir, seed, folds, allow_fault_filtered=split_dir is not None
        )
    return Dataset(root.name, "manifest", root, tracks, skipped, tasks, scheme, opts)


# ---- MusicCaps ---------------------------------------------------------------------------------


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "t")


def _musiccaps_clip_index(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for sub in MUSICCAPS_AUDIO_DIRS:
        folder = root / sub
        if folder.is_dir():
            for p in _audio_files(folder):
                index.setdefault(p.stem, p)
    return index


def _musiccaps_splits(tracks: list[Track], eval_flags: list[bool], split: str, seed: int, folds: int):
    if split in ("auto", "random", "random-val"):
        return assign_splits(len(tracks), "random-val", seed=seed), "random", {"seed": seed}
    if split == "kfold":
        return assign_splits(len(tracks), "kfold", seed=seed, folds=folds), "kfold", {"seed": seed, "folds": folds}
    if split == "audioset-eval":
        return audioset_eval_splits(eval_flags, seed=seed), "audioset-eval", {"seed": seed}
    raise DatasetError(f"unknown split scheme {split!r} for MusicCaps (use auto, random, kfold or audioset-eval)")


def _discover_musiccaps(csv_path: Path, split: str, seed: int, folds: int) -> Dataset:
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
    splits, scheme, opts = _musiccaps_splits(tracks, eval_flags, split, seed, folds)
    return Dataset("musiccaps", "musiccaps", root, _with_splits(tracks, splits), skipped,
                   {"caption": "caption"}, scheme, opts)


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


def _detect_kind(root: Path) -> str:
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: a dataset is a folder or a CSV manifest, not a single file")
        return "musiccaps" if _is_musiccaps_csv(root) else "manifest"
    if _find_csv(root, "musiccaps") is not None:
        return "musiccaps"
    if _gtzan_genre_root(root) is not None:
        return "gtzan"
    if _find_csv(root, "manifest") is not None:
        return "manifest"
    if any(_audio_files(d, recursive=True) for d in _subdirs(root)) or _audio_files(root):
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
) -> Dataset:
    """Scan ``root`` into a :class:`Dataset` of readable tracks with splits assigned.

    Args:
        root: dataset folder (or, for ``manifest``/``musiccaps``, the CSV file itself).
        dataset_type: ``gtzan`` | ``musiccaps`` | ``folder`` | ``manifest``; ``None`` detects it
            (musiccaps CSV > GTZAN genre folders > manifest CSV > class sub-folders).
        split: ``auto`` | ``fault-filtered`` (GTZAN) | ``random`` | ``random-val`` | ``kfold`` |
            ``audioset-eval`` (MusicCaps) | ``manifest`` (the CSV's split column). ``auto`` means
            fault-filtered for GTZAN when the lists are local (``split_dir`` or the cache), the CSV's
            split column for a manifest that has one, else ``random``. ``random`` is stratified
            80/20 train/test for labelled data and 70/10/20 train/valid/test for MusicCaps.
        split_dir: folder holding GTZAN's ``{train,valid,test}_filtered.txt``.
        seed: seed of the random and k-fold splits (same seed, same files -> same splits).
        folds: number of folds for ``kfold``.
        name: dataset name (default: ``gtzan``/``musiccaps``, else the folder's name).

    Raises:
        DatasetError: ``root`` is missing, of an unknown type, or a CSV/split list is malformed.
    """
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise DatasetError(f"{root_path}: dataset folder not found")
    kind = dataset_type.lower() if dataset_type else _detect_kind(root_path)
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset type {dataset_type!r} (use {', '.join(DATASET_KINDS)})")
    if root_path.is_file() and kind not in ("manifest", "musiccaps"):
        raise DatasetError(f"{root_path}: a {kind} dataset is a folder, not a file")

    if kind == "gtzan":
        ds = _discover_gtzan(root_path, split, split_dir, seed, folds)
    elif kind == "folder":
        ds = _discover_folder(root_path, split, split_dir, seed, folds)
    else:
        csv_path = _find_csv(root_path, kind)
        if csv_path is None:
            what = MUSICCAPS_CSV if kind == "musiccaps" else "a manifest CSV with a 'path' column"
            raise DatasetError(f"{root_path}: no {what} found")
        if kind == "musiccaps":
            ds = _discover_musiccaps(csv_path, split, seed, folds)
        else:
            ds = _discover_manifest(csv_path, split, split_dir, seed, folds)
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

    Returns a JSON-able dict with keys ``name, kind, root, split_scheme, split_options, tasks,
    n_tracks, n_skipped, labels {label: n}, splits {split: n}, table {label: {split: n}},
    skipped [{"path", "reason"}]``; a missing label or split is the key ``null``/``None``.
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
        "tasks": dict(ds.tasks),
        "n_tracks": len(ds.tracks),
        "n_skipped": len(ds.skipped),
        "labels": dict(sorted(labels.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))),
        "splits": {s: splits[s] for s in split_names},
        "table": {lab: {s: table[lab].get(s, 0) for s in split_names}
                  for lab in sorted(table, key=lambda k: (k is None, k or ""))},
        "skipped": [{"path": p, "reason": r} for p, r in ds.skipped],
    }


def format_dataset_summary(ds: Dataset, *, verbose: bool = False) -> str:
    """A terminal table of :func:`summarize_dataset`: labels x splits with totals, then the skipped
    files grouped by reason with a few examples each (every file with ``verbose``)."""
    s = summarize_dataset(ds)
    opts = ", ".join(f"{k}={v}" for k, v in s["split_options"].items())
    lines = [
        f"dataset {s['name']} ({s['kind']}) at {s['root']}",
        f"tasks: {', '.join(s['tasks']) or 'none'}   split: {s['split_scheme']}" + (f" ({opts})" if opts else ""),
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
