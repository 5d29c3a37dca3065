"""GTZAN: genre folders whose files are named ``<folder>.<digits>.<ext>``, under ``genres_original/``,
``genres/`` or the root (recognised by this structure, whatever the genre names:
:func:`~embedstore.extract.datasets.layout.gtzan_genre_root`). Track id = file stem
(``blues.00012``), task ``genre`` (or the request's ``label_name``). Splits: GTZAN's fault-filtered
lists when found, else seeded random (:func:`~embedstore.extract.datasets.common.apply_labelled_split`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from embedstore.errors import DatasetError

from .base import Dataset, Track
from .common import apply_labelled_split, dedupe, probe_file, rel_path
from .layout import audio_files, audio_subdirs, gtzan_genre_root, names_missing_extra

if TYPE_CHECKING:
    from .registry import DatasetRequest

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def marker(folder: Path) -> bool:
    """True when ``folder`` is the top of a GTZAN dataset (wrapper descent stops there)."""
    return gtzan_genre_root(folder) is not None


def detect(root: Path) -> bool:
    """True when ``root`` holds GTZAN-structured genre folders."""
    return marker(root)


def discover(request: DatasetRequest, given: Path, level: Path) -> Dataset:
    """The GTZAN dataset at ``level`` (``given`` with its wrapper folders descended)."""
    genre_root = gtzan_genre_root(level)
    if genre_root is None:
        raise DatasetError(
            f"{level}: not a GTZAN folder (expected genre folders of files named <genre>.<digits>.<ext>, "
            f"e.g. genres_original/jazz/jazz.00054.wav, under genres_original/, genres/ or the folder itself)"
        )
    skipped: list[tuple[str, str]] = []
    tracks = []
    genres = audio_subdirs(genre_root)
    for genre_dir in genres:
        for path in audio_files(genre_dir):
            if probe_file(path, level, skipped) is not None:
                tracks.append(Track(path.stem, rel_path(path, level), genre_dir.name, None, None))
    tracks = dedupe(tracks, skipped)
    tracks, scheme, opts, why = apply_labelled_split(tracks, request.split_scheme, request.split_dir, request.seed,
                                                     request.folds, allow_fault_filtered=True)
    missing, extra = names_missing_extra([g.name for g in genres], GTZAN_GENRES)
    layout = {"genre_root": rel_path(genre_root, level), "genres": [g.name for g in genres],
              "missing_standard_genres": missing, "extra_genres": extra}
    return Dataset("gtzan", "gtzan", level, tracks, skipped, {request.label_name or "genre": "label"}, scheme, opts,
                   why, layout)
