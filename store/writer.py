"""Row writer of one model entry: buffers rows, writes whole chunks, marks rows done once durable."""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING

import numpy as np

from embedstore.errors import StoreError
from embedstore.store.schema import (
    DONE,
    FAIL_REASON,
    FAILED,
    FRAME_COUNTS,
    FRAMES,
    LAYERS,
    frame_widths_of,
    model_node,
    one_line,
)

if TYPE_CHECKING:
    from embedstore.store.store import Store

_BUFFER_BYTES = 256 << 20
DEFAULT_FLUSH_SECONDS = 30.0  # time bound on a written row waiting in the buffer before it is durable


class ModelWriter:
    """Writes rows of one model entry (get one from :meth:`Store.model_writer`).

    Rows are buffered; a chunk is written as soon as every not-yet-done row of it is buffered, and
    everything is written when the buffer holds ``max_buffer_rows`` rows, on :meth:`flush`/:meth:`close`,
    and at the first :meth:`write` or :meth:`fail` once ``flush_seconds`` have passed since the first row
    or failure buffered after the previous flush (partial chunks included; ``None``: no time bound,
    ``0``: every call).
    A flush writes the data, makes it durable, and only then sets the rows' ``done`` flags, so a process
    killed at any moment loses at most the rows not yet flushed, which :meth:`pending` reports again:
    the rows of about the last ``flush_seconds`` plus one batch, whatever the chunk size.
    """

    def __init__(self, store: "Store", dataset: str, model: str, attrs: dict, n_rows: int,
                 max_buffer_rows: int | None = None, flush_seconds: float | None = DEFAULT_FLUSH_SECONDS) -> None:
        self.flush_seconds = flush_seconds
        self._waiting_since: float | None = None  # first write/fail not yet durable (monotonic clock)
        self.store, self.dataset, self.model, self.attrs = store, dataset, model, attrs
        self.node = model_node(dataset, model)
        self.n_rows = n_rows
        self.widths: list[int] = list(attrs["layer_widths"])
        self.frame_layers: list[int] = list(attrs.get("frame_layers", []))
        self.max_frames = int(attrs.get("max_frames", 0))
        self.frame_widths: list[int] = frame_widths_of(attrs)
        self.dtype = np.dtype(attrs["storage_dtype"])
        self.chunk_rows = int(attrs["chunk_rows"])
        row_bytes = self.dtype.itemsize * (sum(self.widths) + self.max_frames * sum(self.frame_widths))
        self.max_buffer_rows = max_buffer_rows or max(1, min(4 * self.chunk_rows, _BUFFER_BYTES // row_bytes))
        self._done = np.asarray(store.backend.read(f"{self.node}/{DONE}", slice(0, n_rows)), dtype=bool)
        self._failed = np.asarray(store.backend.read(f"{self.node}/{FAILED}", slice(0, n_rows)), dtype=bool)
        chunks = (n_rows + self.chunk_rows - 1) // self.chunk_rows
        self._missing = np.bincount(np.flatnonzero(~self._done) // self.chunk_rows, minlength=chunks)
        self._buffer: dict[int, tuple[list[np.ndarray], list[np.ndarray], int]] = {}
        self._buffered_missing = np.zeros(chunks, dtype=np.int64)
        self._failures: dict[int, str] = {}
        self._failed_here: set[int] = set()
        self._closed = False

    # ---- public API ---------------------------------------------------------------------------
    def pending(self) -> np.ndarray:
        """``[k]`` int64: rows not done, in increasing order, leaving out rows waiting in the buffer
        and rows failed through this writer. Rows that failed in an earlier run are pending again,
        so re-running a job retries them."""
        todo = ~self._done
        skip = [*self._buffer, *self._failed_here]
        if skip:
            todo[skip] = False
        return np.flatnonzero(todo)

    def write(self, rows: np.ndarray, layers: list[np.ndarray], frames: list[np.ndarray] | None = None,
              frame_counts: np.ndarray | None = None) -> None:
        """Queue ``rows`` ``[n]``: ``layers[l]`` is ``[n, width_l]``; with frame layers, ``frames[j]``
        is ``[n, max_frames, width]`` for the j-th frame layer and ``frame_counts`` ``[n]``."""
        self._check_open()
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = rows.size
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise StoreError(f"model {self.model!r}: rows must lie in 0..{self.n_rows - 1}")
        if len(layers) != len(self.widths):
            raise StoreError(f"model {self.model!r}: got {len(layers)} layers, the entry has {len(self.widths)}")
        layers = [np.asarray(x) for x in layers]
        for i, (x, width) in enumerate(zip(layers, self.widths)):
            if x.shape != (n, width):
                raise StoreError(f"model {self.model!r}: layer {i} has shape {x.shape}, expected {(n, width)}")
        frames = [np.asarray(f) for f in frames] if frames is not None else []
        if self.frame_layers:
            if len(frames) != len(self.frame_layers) or frame_counts is None:
                raise StoreError(f"model {self.model!r}: frames for layers {self.frame_layers} and frame_counts are required")
            for j, (f, width) in enumerate(zip(frames, self.frame_widths)):
                if f.shape != (n, self.max_frames, width):
                    raise StoreError(f"model {self.model!r}: frames {j} have shape {f.shape}, expected "
                                     f"{(n, self.max_frames, width)}")
            counts = np.asarray(frame_counts).reshape(-1)
            if counts.size != n or (n and (counts.min() < 0 or counts.max() > self.max_frames)):
                raise StoreError(f"model {self.model!r}: frame_counts must be {n} values in 0..{self.max_frames}")
        elif frames:
            raise StoreError(f"model {self.model!r}: the entry stores no frames")
        self._start_waiting()
        for k, row in enumerate(rows.tolist()):
            if row not in self._buffer and not self._done[row]:
                self._buffered_missing[row // self.chunk_rows] += 1
            self._buffer[row] = ([x[k] for x in layers], [f[k] for f in frames],
                                 int(counts[k]) if self.frame_layers else 0)
            self._failures.pop(row, None)
            self._failed_here.discard(row)
        complete = np.flatnonzero((self._buffered_missing >= self._missing) & (self._missing > 0))
        if len(self._buffer) >= self.max_buffer_rows:
            self.flush()
        elif complete.size:
            chunk = np.asarray(list(self._buffer)) // self.chunk_rows
            self._write(np.sort(np.asarray(list(self._buffer))[np.isin(chunk, complete)]))
        self._flush_if_due()

    def fail(self, row: int, reason: str) -> None:
        """Record that ``row`` could not be embedded; ``reason`` is kept as one line. The row stays
        pending (a later run retries it); a later successful write clears the failure."""
        self._check_open()
        row = int(row)
        if not 0 <= row < self.n_rows:
            raise StoreError(f"model {self.model!r}: row {row} outside 0..{self.n_rows - 1}")
        self._start_waiting()
        if row in self._buffer:
            self._drop([row])
        self._failures[row] = one_line(reason)
        self._failed_here.add(row)
        self._flush_if_due()

    def flush(self) -> None:
        """Write every buffered row and failure; durable on return."""
        if self._buffer:
            self._write(np.sort(np.asarray(list(self._buffer), dtype=np.int64)))
        if self._failures:
            rows = np.asarray(sorted(self._failures), dtype=np.int64)
            backend = self.store.backend
            backend.write_rows([(f"{self.node}/{FAIL_REASON}", rows, np.asarray([self._failures[r] for r in rows.tolist()], dtype=str))])
            backend.write_rows([(f"{self.node}/{FAILED}", rows, np.ones(rows.size, dtype=bool))])
            self._failed[rows] = True
            self._failures.clear()
        self._waiting_since = None

    def close(self) -> None:
        """Flush and release the store's write lock."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self.store.unlock()

    def __enter__(self) -> "ModelWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"model {self.model!r}: writer is closed")

    def _start_waiting(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = monotonic()

    def _flush_if_due(self) -> None:
        """Flush everything once ``flush_seconds`` have passed since the first row or failure buffered
        after the previous flush (rows written since as whole chunks do not restart the clock)."""
        if not self._buffer and not self._failures:
            self._waiting_since = None
        elif self.flush_seconds is not None and monotonic() - self._waiting_since >= self.flush_seconds:
            self.flush()

    def _drop(self, rows: list[int]) -> None:
        for row in rows:
            if self._buffer.pop(row, None) is not None and not self._done[row]:
                self._buffered_missing[row // self.chunk_rows] -= 1

    def _write(self, rows: np.ndarray) -> None:
        """Write buffered ``rows`` (sorted): data first, durable, then the done flags."""
        entries = [self._buffer[r] for r in rows.tolist()]
        items = []
        for i in range(len(self.widths)):
            items.append((f"{self.node}/{LAYERS}/{i}", rows, np.stack([e[0][i] for e in entries]).astype(self.dtype)))
        for j, layer in enumerate(self.frame_layers):
            items.append((f"{self.node}/{FRAMES}/{layer}", rows, np.stack([e[1][j] for e in entries]).astype(self.dtype)))
        if self.frame_layers:
            items.append((f"{self.node}/{FRAME_COUNTS}", rows, np.asarray([e[2] for e in entries], dtype=np.int32)))
        backend = self.store.backend
        backend.write_rows(items)
        flags = [(f"{self.node}/{DONE}", rows, np.ones(rows.size, dtype=bool))]
        cleared = rows[self._failed[rows]]
        if cleared.size:
            flags.append((f"{self.node}/{FAILED}", cleared, np.zeros(cleared.size, dtype=bool)))
        backend.write_rows(flags)
        self._failed[cleared] = False
        newly = rows[~self._done[rows]]
        np.subtract.at(self._missing, newly // self.chunk_rows, 1)
        self._drop(rows.tolist())
        self._done[rows] = True
