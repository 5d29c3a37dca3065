"""Shared fixtures: synthetic datasets (generated once per session) and the real data in ../shared.

- ``gtzan_dir``: GTZAN-like ``genres_original`` folder, 4 genres x 6 clips in wav/flac/ogg/au, plus
  the broken files of :data:`synth.BROKEN_KINDS`.
- ``gtzan_clean_dir``: the same without broken files.
- ``musiccaps_dir``: ``musiccaps-public.csv`` + ``audio/<ytid>.wav`` (12 rows, 2 clips missing,
  3 clips are "full videos" that need start_s/end_s).
- ``fault_filtered_dir`` / ``gtzan_excerpts_dir``: the real GTZAN split lists and 100 real clips
  from ``../shared/data`` beside the repository; tests using them are skipped when absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth import make_gtzan_like, make_musiccaps_like  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _shared(name: str) -> Path:
    path = (SHARED_DATA / name).resolve()
    if not path.is_dir():
        pytest.skip(f"shared test data {path} is not available")
    return path


@pytest.fixture(scope="session")
def gtzan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic GTZAN (genres_original layout) with broken files."""
    return make_gtzan_like(tmp_path_factory.mktemp("gtzan"), broken=True)


@pytest.fixture(scope="session")
def gtzan_clean_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic GTZAN (genres_original layout), every file readable."""
    return make_gtzan_like(tmp_path_factory.mktemp("gtzan_clean"), broken=False)


@pytest.fixture(scope="session")
def musiccaps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic MusicCaps: CSV + clips, some missing, some full-length videos."""
    return make_musiccaps_like(tmp_path_factory.mktemp("musiccaps"))


@pytest.fixture(scope="session")
def fault_filtered_dir() -> Path:
    """The published GTZAN fault-filtered lists (train/valid/test_filtered.txt)."""
    return _shared("gtzan-fault-filtered")


@pytest.fixture(scope="session")
def gtzan_excerpts_dir() -> Path:
    """100 real GTZAN excerpts (genres_original/<genre>/<genre>.0000N.wav, 10 per genre, 22050 Hz)."""
    return _shared("gtzan-excerpts")
