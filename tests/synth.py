"""Test-side access to the synthetic datasets (they live in the package for ``embedstore demo``),
plus generators of the folder layouts users have (class folders under wrappers, any genre names) and of
bad and unusual files that only the tests need."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from embedstore.extract.synthetic import *  # noqa: F401,F403
from embedstore.extract.synthetic import __all__ as _synthetic_all
from embedstore.extract.synthetic import ClipFormat, _write, make_musiccaps_like, render_genre

__all__ = [*_synthetic_all, "cut_bytes", "make_class_folders", "make_musiccaps_mostly_missing", "write_truncated_pcm"]


def make_class_folders(
    base: str | Path,
    classes: Mapping[str, str],
    n_per_class: int = 3,
    *,
    name: str = "{i:03d}",
    formats: Sequence[ClipFormat] = (ClipFormat("wav", 8000),),
    seconds: float = 0.25,
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write ``base/<class>/<name>.<ext>`` clips and return ``{class: [files]}``.

    ``classes`` maps each folder name to the synthetic genre it sounds like (any folder name, e.g.
    ``{"drill": "hiphop"}``); ``name`` is formatted with ``cls`` (the folder name) and ``i`` (the
    clip's index), e.g. ``"{cls}.{i:05d}"`` for GTZAN's naming. Clip i uses ``formats[i % len]``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for cls, genre in classes.items():
        folder = Path(base) / cls
        folder.mkdir(parents=True, exist_ok=True)
        out[cls] = []
        for i in range(n_per_class):
            fmt = formats[i % len(formats)]
            path = folder / f"{name.format(cls=cls, i=i)}.{fmt.ext}"
            _write(path, render_genre(genre, fmt.sample_rate, seconds, rng), fmt)
            out[cls].append(path)
    return out



def cut_bytes(path: Path, keep: int) -> int:
    """Keep only the first ``keep`` bytes of ``path`` (an interrupted download); returns the old size."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep])
    return len(data)


def write_truncated_pcm(path: Path, seconds: float, keep_seconds: float, sample_rate: int = 8000) -> None:
    """Write a mono 16-bit PCM file (WAV/AIFF/AU by suffix) of ``seconds`` of noise, then cut its bytes
    so only the first ``keep_seconds`` of samples remain while the header still declares ``seconds``.

    The header size is found as the file size minus the sample bytes (``2 * frames``), which holds
    for files soundfile writes (the sample data is the last chunk)."""
    frames = int(round(seconds * sample_rate))
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, frames).astype(np.float32)
    sf.write(str(path), noise, sample_rate, subtype="PCM_16")
    header = Path(path).stat().st_size - 2 * frames
    cut_bytes(path, header + 2 * int(round(keep_seconds * sample_rate)))


def make_musiccaps_mostly_missing(root: Path, n_rows: int, n_present: int, n_wrong_length: int,
                                  seconds: float = 1.0) -> Path:
    """A MusicCaps folder whose CSV lists ``n_rows`` clips of which only ``n_present`` are on disk, the
    last ``n_wrong_length`` of those of a length that is neither the segment nor a full video reaching
    ``end_s`` (``seconds + 3`` s long, with ``start_s`` 100). Returns ``root``."""
    make_musiccaps_like(root, n=n_present, n_missing=0, n_full_video=0, seconds=seconds, sample_rate=8000)
    csv_path = Path(root) / "musiccaps-public.csv"
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows[n_present - n_wrong_length:]:
        row["start_s"], row["end_s"] = "100", f"{100 + seconds:g}"
        clip = np.random.default_rng(1).uniform(-0.5, 0.5, int((seconds + 3) * 8000)).astype(np.float32)
        sf.write(str(Path(root) / "audio" / f"{row['ytid']}.wav"), clip, 8000)
    for i in range(n_rows - n_present):
        rows.append({**rows[0], "ytid": f"missing{i:05d}", "start_s": "30", "end_s": f"{30 + seconds:g}"})
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(root)
