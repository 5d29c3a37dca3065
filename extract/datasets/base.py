"""What every dataset adapter returns: a :class:`Dataset`, a list of :class:`Track`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    ``split_folders`` (class folders). ``targets`` (manifests): per tagging/regression task
    ``{"kind": "tag" | "regress", "separator": ";", "values": {track id: raw text}}``; such tasks map
    to the column kind ``tags`` or ``number`` in ``tasks``.
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
    targets: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tracks)

    def abspath(self, track: Track) -> Path:
        """Absolute path of ``track``'s audio file."""
        return self.root / track.path

    def split_tracks(self, split: str | None) -> list[Track]:
        """Tracks whose split is ``split`` (``None``: the tracks in no split)."""
        return [t for t in self.tracks if t.split == split]
