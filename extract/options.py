"""Options of an extraction run, shared by the local and the Ray engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from embedstore.errors import EmbedstoreError
from embedstore.extract.audio import DEFAULT_GAIN, check_gain
from embedstore.extract.pooling import POOLINGS
from embedstore.store.writer import DEFAULT_FLUSH_SECONDS


@dataclass
class ExtractOptions:
    """How to extract (everything except which dataset and which encoders).

    Attributes:
        batch_size: windows per encoder call.
        pooling: ``"mean"`` or ``"mean+std"`` over time.
        storage_dtype: ``"float32"`` or ``"float16"`` on disk.
        frames_hop: seconds per stored frame for frame-level sequences (None: pooled only).
        frame_layers: layer indices whose frame sequences are stored (None with ``frames_hop``: all).
        workers: decoding processes (None: :func:`~embedstore.extract.feeding.default_workers`,
            ``min(4, cpus - 1)`` on the CPU, what the device needs up to ``cpus - 1`` on a GPU; 0 decodes
            in the main process).
        limit: extract at most this many clips (the first ones of the track list).
        split: only clips of these splits.
        strict: any failed clip is an error.
        progress: show a progress bar (on a terminal) or log lines (otherwise).
        flush_seconds: finished rows are made durable (marked done) at the first write at least this
            many seconds after they were produced, whatever the chunk size, so a killed run loses at
            most about this much work (0: after every batch).
        gain: the gain rule of decoding (``"none"``: the decoded amplitude, what the encoders' own
            feature extractors expect; ``"peak"``: peak-normalised to [-1, 1]); recorded in each
            model entry, and an entry refuses rows made with another rule.
    """

    batch_size: int = 8
    pooling: str = "mean"
    storage_dtype: str = "float32"
    frames_hop: float | None = None
    frame_layers: Sequence[int] | None = None
    workers: int | None = None
    limit: int | None = None
    split: Sequence[str] | None = None
    strict: bool = False
    progress: bool = True
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    gain: str = DEFAULT_GAIN

    def __post_init__(self) -> None:
        check_gain(self.gain)
        if self.batch_size < 1:
            raise EmbedstoreError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.pooling not in POOLINGS:
            raise EmbedstoreError(f"--pool must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.storage_dtype not in ("float32", "float16"):
            raise EmbedstoreError(f"--storage-dtype must be float32 or float16, got {self.storage_dtype!r}")
        if self.frames_hop is not None and self.frames_hop <= 0:
            raise EmbedstoreError(f"--frames must be a positive hop in seconds, got {self.frames_hop}")
        if self.limit is not None and self.limit < 1:
            raise EmbedstoreError(f"--limit must be at least 1, got {self.limit}")
        if not self.flush_seconds >= 0:
            raise EmbedstoreError(f"--flush-seconds must be 0 or more seconds, got {self.flush_seconds}")
