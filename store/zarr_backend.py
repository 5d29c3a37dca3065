"""Zarr v3 backend: a directory readable by any Zarr v3 client.

Crash safety rests on zarr-python 3's ``LocalStore``, which writes every chunk and metadata document
to a temporary ``*.partial`` file and ``os.replace``\\ s it into place (``zarr/storage/_local.py``,
``_atomic_write``): a chunk file is always either the old or the new complete chunk. What
``LocalStore`` does not do is ``fsync``; :meth:`ZarrBackend.write_rows` fsyncs the chunk files it
touched (and their directories) before returning, so the caller may then mark the rows done. A
killed writer can leave ``*.partial`` files behind; :meth:`ZarrBackend.cleanup` removes them.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from embedstore.store.backend import (
    Backend,
    CreateArray,
    CreateGroup,
    Op,
    Resize,
    SetAttrs,
    WriteRows,
    contiguous,
    fsync_all,
    fsync_path,
)

_PARTIAL = ".partial"
_READ_BUDGET = 4 << 20  # bytes of chunk spans read_many holds in flight (at least one array)


def _compressor(dtype: str, codec: str | None = None) -> BloscCodec | None:
    """Blosc for ``codec`` (canonical ``"lz4:5"``, ``"zstd:3"``; ``"none"``: no compressor); ``None`` is
    zstd level 3, for the track table and the flags, which are small and read whole."""
    if codec == "none":
        return None
    cname, _, level = (codec or "zstd:3").partition(":")
    # byte shuffle groups the exponent bytes of floats together, which the compressor then packs well
    shuffle = "shuffle" if dtype.startswith(("float", "int")) else "noshuffle"
    return BloscCodec(cname=cname, clevel=int(level), shuffle=shuffle)


async def _read_async(arr: zarr.AsyncArray, rows: np.ndarray | slice | None,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``rows`` (see :meth:`Backend.read`) of ``arr`` along axis 0, written into ``out`` (a
    ``[rows, ...]`` view, e.g. one layer of a stacked result) when given.

    Sorted rows are split into runs whose chunks follow one another; each run is read as one range
    (zarr fetches its chunks concurrently) and its rows are picked with numpy, so chunks holding none
    of the rows are never read. Zarr's orthogonal selection reads the same chunks but picks element
    by element, which measured about twice as slow (``benchmarks/README.md``).
    """
    if rows is None or isinstance(rows, slice) or (rows.size and contiguous(rows)):
        whole = ... if rows is None else rows if isinstance(rows, slice) else slice(int(rows[0]), int(rows[-1]) + 1)
        values = await arr.getitem(whole)
    elif rows.size == 0:
        values = np.zeros((0, *arr.shape[1:]), dtype=arr.dtype if arr.dtype.kind != "T" else str)
    else:
        chunk = rows // arr.chunks[0]
        runs = np.split(rows, np.flatnonzero(np.diff(chunk) > 1) + 1)
        spans = await asyncio.gather(*(arr.getitem(slice(int(run[0]), int(run[-1]) + 1)) for run in runs))
        values = np.empty((rows.size, *arr.shape[1:]), dtype=arr.dtype) if out is None else out
        start = 0
        for span, run in zip(spans, runs):
            np.take(np.asarray(span), run - run[0], axis=0, out=values[start : start + run.size])
            start += run.size
    if out is not None and values is not out:
        out[...] = values
        return out
    return values


def _span_bytes(arrays: list[zarr.Array], rows: np.ndarray | slice | None) -> int:
    """Bytes of the widest array's rows from the first to the last of ``rows`` (all when None)."""
    n = max(arr.shape[0] for arr in arrays) if arrays else 0
    if isinstance(rows, slice):
        span = len(range(*rows.indices(n)))
    elif rows is None or rows.size == 0:
        span = n if rows is None else 0
    else:
        span = int(rows[-1]) - int(rows[0]) + 1
    return span * max((int(np.prod(arr.shape[1:])) * arr.dtype.itemsize for arr in arrays), default=0)


def _to_numpy(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "T":  # numpy StringDType from Zarr's variable-length strings
        return np.asarray(values.tolist(), dtype=str).reshape(values.shape)
    return values


class ZarrBackend(Backend):
    kind = "zarr"

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._store = LocalStore(path, read_only=read_only)
        self._arrays: dict[str, zarr.Array] = {}
        self._stamps: dict[str, tuple[int, int, int]] = {}

    # ---- reading ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / "zarr.json").is_file()

    def read_attrs(self, node: str) -> dict:
        # the group's zarr.json is replaced atomically, so reading it directly is a consistent snapshot
        meta = self.path / node / "zarr.json" if node else self.path / "zarr.json"
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return dict(doc.get("attributes", {})) if doc.get("node_type") == "group" else {}

    def _array(self, path: str, fresh: bool = False) -> zarr.Array:
        """The array at ``path``; with ``fresh``, reopened if its ``zarr.json`` was replaced since
        (a resize replaces it, a new file has a new inode), so readers see growth."""
        if fresh:
            try:
                meta = os.stat(self.path / path / "zarr.json")
            except FileNotFoundError:
                raise KeyError(path) from None
            stamp = (meta.st_ino, meta.st_mtime_ns, meta.st_size)
            if self._stamps.get(path) != stamp:
                self._arrays.pop(path, None)
                self._stamps[path] = stamp
        if path not in self._arrays:
            self._arrays[path] = zarr.open_array(self._store, path=path, mode="r" if self.read_only else "r+")
        return self._arrays[path]

    def has_array(self, path: str) -> bool:
        return (self.path / path / "zarr.json").is_file()

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._array(path, fresh=True).shape)

    def read(self, path: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        return self.read_many([path], rows)[0]

    def read_many(self, paths: list[str], rows: np.ndarray | slice | None = None,
                  out: np.ndarray | None = None) -> list[np.ndarray]:
        # One hand-off to zarr's event loop for all the arrays (e.g. every layer): zarr's synchronous
        # API pays a thread hand-off per call, which dominated reading a small split of many layers.
        # Arrays are read concurrently (each one's chunks too) while their spans fit in _READ_BUDGET:
        # reading many large layers at once holds all their chunks in fresh memory and measured
        # slower, reading many small ones one by one pays their latency in turn.
        arrays = [self._array(path, fresh=True) for path in paths]
        span = _span_bytes(arrays, rows)

        async def read_all() -> list:
            gate = asyncio.Semaphore(max(1, _READ_BUDGET // max(1, span)))

            async def read_one(k: int, arr: zarr.Array) -> np.ndarray:
                async with gate:
                    return await _read_async(arr.async_array, rows, None if out is None else out[:, k])

            return await asyncio.gather(*(read_one(k, arr) for k, arr in enumerate(arrays)))

        return [_to_numpy(np.asarray(out)) for out in sync(read_all())]

    def arrays_under(self, node: str) -> list[str]:
        base = self.path / node if node else self.path
        found = []
        for meta in base.rglob("zarr.json"):
            if '"node_type": "array"' in meta.read_text(encoding="utf-8"):
                found.append(meta.parent.relative_to(self.path).as_posix())
        return sorted(found)

    def size_bytes(self, node: str = "") -> int:
        base = self.path / node if node else self.path
        return sum(f.stat().st_size for f in base.rglob("*") if f.is_file())

    # ---- writing ------------------------------------------------------------------------------
    def write_rows(self, items: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        touched: set[Path] = set()
        for path, rows, values in items:
            if rows.size == 0:
                continue
            arr = self._array(path)
            if contiguous(rows):
                arr[int(rows[0]) : int(rows[-1]) + 1] = values
            else:
                arr.oindex[(rows,) + (slice(None),) * (arr.ndim - 1)] = values
            chunk_rows = arr.chunks[0]
            for chunk in np.unique(rows // chunk_rows).tolist():
                key = arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))
                touched.add(self.path / path / key)
        fsync_all(touched)

    def create_root(self, attrs: dict) -> None:
        zarr.create_group(self._store, attributes=attrs, zarr_format=3)
        fsync_path(self.path / "zarr.json")

    def apply(self, ops: list[Op]) -> None:
        # Ops before the last are invisible until the last one (the attribute update that registers
        # them) lands, so durability is needed only at that point: fsync all of them, then the last.
        self._arrays.clear()
        for i, op in enumerate(ops):
            if i == len(ops) - 1:
                fsync_all(self._files_of(ops[:-1]))
            self._apply_one(op)
        fsync_all(self._files_of(ops[-1:]))
        self._arrays.clear()

    def _files_of(self, ops: list[Op]) -> list[Path]:
        files: list[Path] = []
        for op in ops:
            node = self.path / getattr(op, "node", getattr(op, "path", ""))
            files.append(node / "zarr.json")
            if isinstance(op, (CreateArray, WriteRows)):
                files += [f for f in (node / "c").rglob("*") if f.is_file()]
        return files

    def _apply_one(self, op: Op) -> None:
        if isinstance(op, CreateGroup):
            zarr.create_group(self._store, path=op.node, attributes=op.attrs, overwrite=True)
        elif isinstance(op, SetAttrs):
            zarr.open_group(self._store, path=op.node, mode="r+").attrs.put(op.attrs)
        elif isinstance(op, CreateArray):
            arr = zarr.create_array(
                self._store,
                name=op.path,
                shape=op.shape,
                dtype=str if op.dtype in ("str", "fixedstr") else op.dtype,
                chunks=(max(1, op.chunk_rows), *op.shape[1:]),
                compressors=_compressor(op.dtype, op.codec),
                fill_value=op.fill,
                overwrite=True,
            )
            if op.data is not None and len(op.data):
                arr[...] = op.data
        elif isinstance(op, Resize):
            arr = zarr.open_array(self._store, path=op.path, mode="r+")
            arr.resize((op.rows, *arr.shape[1:]))
        elif isinstance(op, WriteRows):
            if len(op.values):
                arr = zarr.open_array(self._store, path=op.path, mode="r+")
                arr[op.start : op.start + len(op.values)] = op.values
        else:  # pragma: no cover - programming error
            raise TypeError(f"unknown store operation {op!r}")

    def cleanup(self) -> None:
        for leftover in self.path.rglob(f"*{_PARTIAL}"):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass

    @property
    def lock_path(self) -> Path:
        # beside the directory, not in it: Zarr warns about files it does not know inside a hierarchy
        return self.path.with_name(self.path.name + ".lock")

    def close(self) -> None:
        self._arrays.clear()  # LocalStore holds no open files
