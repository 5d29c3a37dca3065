"""The small storage interface both backends (Zarr, HDF5) implement, and the structural operations.

Two kinds of writes exist, and they are kept apart on purpose:

* **structural changes** (create a dataset or model entry, grow arrays, change attributes) are
  described as a list of :class:`Op` and handed to :meth:`Backend.apply`; the Zarr backend applies
  them one by one (each file write is atomic, and the caller orders them so the registering attribute
  comes last), the HDF5 backend rebuilds the file into a temporary file and renames it over the old
  one (HDF5 metadata updates are not crash-safe in place);
* **row writes** (:meth:`Backend.write_rows`) only ever replace values inside existing arrays and are
  durable (fsync'd) when the call returns.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np


@dataclass
class CreateGroup:
    """Create (replacing any half-made leftover) the group ``node`` with ``attrs``."""

    node: str
    attrs: dict


@dataclass
class SetAttrs:
    """Replace all attributes of group ``node``."""

    node: str
    attrs: dict


@dataclass
class CreateArray:
    """Create array ``path`` ``[rows, *inner]`` of ``dtype`` ("str" for strings), chunked along rows,
    filled with ``fill``; ``data`` (optional) is written at creation. ``codec`` (a canonical
    :func:`~embedstore.store.schema.check_codec` spec) compresses it where the backend compresses
    (Zarr); ``None`` keeps the backend's default for small arrays."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int
    fill: Any
    data: np.ndarray | None = None
    codec: str | None = None


@dataclass
class Resize:
    """Grow (or trim) array ``path`` to ``rows`` rows; new rows hold the fill value."""

    path: str
    rows: int


@dataclass
class WriteRows:
    """Write ``values`` into rows ``start:start+len(values)`` of array ``path``."""

    path: str
    start: int
    values: np.ndarray


Op = CreateGroup | SetAttrs | CreateArray | Resize | WriteRows


def unique_sorted(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(sorted unique rows, inverse or None)``; ``inverse`` maps back to the asked order."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size <= 1 or bool(np.all(np.diff(rows) > 0)):
        return rows, None
    uniq, inverse = np.unique(rows, return_inverse=True)
    return uniq, inverse


def contiguous(rows: np.ndarray) -> bool:
    """Whether sorted unique ``rows`` form one run ``a, a+1, ..., b``."""
    return rows.size > 0 and int(rows[-1]) - int(rows[0]) + 1 == rows.size


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """Flush ``path``'s data (or a directory's entries) to disk; missing paths are ignored."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_all(files: Iterable[Path]) -> None:
    """fsync ``files`` and then their directories (so renames into them persist), in parallel."""
    files = sorted(set(files))
    if not files:
        return
    dirs = sorted({f.parent for f in files})
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        list(pool.map(fsync_path, files))
        list(pool.map(lambda d: fsync_path(d, directory=True), dirs))


class Backend(ABC):
    """Node paths are ``/``-separated and relative to the store root (``""`` is the root)."""

    kind: str
    path: Path

    @abstractmethod
    def exists(self) -> bool:
        """Whether a store (root group) exists at :attr:`path`."""

    @abstractmethod
    def create_root(self, attrs: dict) -> None:
        """Create an empty store with root ``attrs``."""

    @abstractmethod
    def read_attrs(self, node: str) -> dict:
        """All attributes of group ``node`` (``{}`` if it does not exist)."""

    @abstractmethod
    def has_array(self, path: str) -> bool:
        """Whether array ``path`` exists."""

    @abstractmethod
    def shape(self, path: str) -> tuple[int, ...]:
        """Shape of array ``path``."""

    @abstractmethod
    def read(self, path: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Read ``rows`` (sorted unique indices, a slice, or all) of array ``path`` along axis 0.
        String arrays come back as numpy unicode arrays."""

    def read_many(self, paths: list[str], rows: np.ndarray | slice | None = None,
                  out: np.ndarray | None = None) -> list[np.ndarray]:
        """:meth:`read` of the same ``rows`` of several arrays (e.g. every layer), in one go where
        the backend can do better than one call per array. With ``out`` (``[rows, len(paths), ...]``,
        numeric arrays of one shape) the values are written into it and the list holds its views
        ``out[:, k]``."""
        parts = [self.read(path, rows) for path in paths]
        if out is None:
            return parts
        for k, part in enumerate(parts):
            out[:, k] = part
        return [out[:, k] for k in range(len(parts))]

    @abstractmethod
    def write_rows(self, items: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """For each ``(path, rows, values)`` write ``values[i]`` into row ``rows[i]`` (rows sorted,
        unique, inside the array); durable on return."""

    @abstractmethod
    def apply(self, ops: list[Op]) -> None:
        """Apply structural operations in order (see the module docstring for atomicity)."""

    @abstractmethod
    def size_bytes(self, node: str = "") -> int:
        """Bytes on disk used by ``node`` and everything below it."""

    @abstractmethod
    def arrays_under(self, node: str) -> list[str]:
        """Paths of every array below group ``node``."""

    @abstractmethod
    def cleanup(self) -> None:
        """Remove leftovers of writers that were killed (temporary files); call only under the lock."""

    @property
    @abstractmethod
    def lock_path(self) -> Path:
        """The file whose ``flock`` marks the one process allowed to write this store."""

    def close(self) -> None:
        """Release cached handles."""


def open_backend(path: Path, read_only: bool) -> Backend:
    """The backend for ``path``: HDF5 for ``.h5``/``.hdf5``, Zarr v3 otherwise."""
    if path.suffix.lower() in (".h5", ".hdf5"):
        from embedstore.store.hdf5_backend import HDF5Backend

        return HDF5Backend(path, read_only)
    from embedstore.store.zarr_backend import ZarrBackend

    return ZarrBackend(path, read_only)
