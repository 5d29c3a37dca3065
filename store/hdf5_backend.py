"""HDF5 backend: one ``.h5`` file, the same node paths as the Zarr layout, read with plain h5py.

HDF5 updates its own metadata (object headers, B-trees, heaps) in place, so a process killed while
it changes the file's structure can leave the whole file unreadable. The scheme used here:

* **structure changes** (new dataset, new model entry, growth, attributes) never touch the live file:
  :meth:`HDF5Backend.apply` rebuilds the file into ``<name>.<uuid>.tmp`` with the changes applied,
  fsyncs it and ``os.replace``\\ s it over the old one (cost: one copy of the file per structural change,
  which happens once per dataset/model entry/growth, never per row);
* **row writes** only touch raw data: every array is *contiguous, unfiltered and allocated at creation*
  (``H5D_ALLOC_TIME_EARLY``), so writing rows is a plain in-place ``pwrite`` of their bytes, and the
  failure reasons are fixed-length strings for the same reason. The file is opened per write batch,
  flushed, closed and fsynced before the caller marks the rows done.

The price is no compression in HDF5 files (filters need chunked layout, whose chunk index changes
as chunks are written) and disk space allocated up front for every row. Readers open the file per
call with HDF5 file locking off; they see either the old or the new file across a rename, and rows
only count once their ``done`` flag (written after the data) is set. Attributes are stored as JSON
text (``json.loads(f[node].attrs[key])``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from embedstore.store.backend import (
    Backend,
    CreateArray,
    CreateGroup,
    Op,
    Resize,
    SetAttrs,
    WriteRows,
    contiguous,
    fsync_path,
)
from embedstore.store.schema import REASON_BYTES

_LIBVER = ("earliest", "v110")  # superblock v0: no "file open for writing" flag a killed writer leaves set
_COPY_BYTES = 64 << 20


def _h5_dtype(dtype: str):
    if dtype == "str":
        return h5py.string_dtype("utf-8")
    if dtype == "fixedstr":
        return h5py.string_dtype("utf-8", REASON_BYTES)
    return np.dtype(dtype)


def _fill(dtype, fill):
    if h5py.check_string_dtype(dtype) is not None:
        return None if h5py.check_string_dtype(dtype).length is None else b""
    return fill


def _create(group: h5py.Group, name: str, shape: tuple[int, ...], dtype, fill) -> h5py.Dataset:
    """A contiguous, unfiltered dataset with all its space allocated (and filled) now."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return group.create_dataset(name, shape=shape, dtype=dtype, fillvalue=_fill(dtype, fill), dcpl=dcpl)


def _read(ds: h5py.Dataset, rows: np.ndarray | slice | None) -> np.ndarray:
    source = ds.asstr() if h5py.check_string_dtype(ds.dtype) is not None else ds
    if rows is None:
        out = source[()] if ds.ndim == 0 else source[:]
    elif isinstance(rows, slice):
        out = source[rows]
    elif rows.size == 0:
        out = np.zeros((0, *ds.shape[1:]), dtype=ds.dtype if source is ds else str)
    elif contiguous(rows):
        out = source[int(rows[0]) : int(rows[-1]) + 1]
    elif rows.size * 8 >= int(rows[-1]) - int(rows[0]):  # dense: one range read beats a point list
        out = source[int(rows[0]) : int(rows[-1]) + 1][rows - rows[0]]
    else:
        out = source[rows]
    out = np.asarray(out)
    return out.astype(str) if out.dtype == object else out


class HDF5Backend(Backend):
    kind = "hdf5"

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._stamp: tuple[int, int, int] | None = None
        self._attr_cache: dict[str, dict] = {}

    def _open(self, mode: str = "r") -> h5py.File:
        return h5py.File(self.path, mode, locking=False, **({"libver": _LIBVER} if mode != "r" else {}))

    # ---- reading ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file() and h5py.is_hdf5(self.path)

    def read_attrs(self, node: str) -> dict:
        # Attributes only ever change through apply(), which replaces the file: for one file
        # identity (inode, change time, size) they are fixed, so they are cached by it.
        meta = os.stat(self.path)
        stamp = (meta.st_ino, meta.st_ctime_ns, meta.st_size)
        if stamp != self._stamp:
            self._stamp, self._attr_cache = stamp, {}
        if node not in self._attr_cache:
            with self._open() as f:
                found = node in f if node else True
                self._attr_cache[node] = {k: json.loads(v) for k, v in f[node or "/"].attrs.items()} if found else {}
        return dict(self._attr_cache[node])

    def has_array(self, path: str) -> bool:
        with self._open() as f:
            return isinstance(f.get(path), h5py.Dataset)

    def shape(self, path: str) -> tuple[int, ...]:
        with self._open() as f:
            return tuple(f[path].shape)

    def read(self, path: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        return self.read_many([path], rows)[0]

    def read_many(self, paths: list[str], rows: np.ndarray | slice | None = None,
                  out: np.ndarray | None = None) -> list[np.ndarray]:
        with self._open() as f:  # one open for all the arrays
            if out is None:
                return [_read(f[path], rows) for path in paths]
            for k, path in enumerate(paths):
                out[:, k] = _read(f[path], rows)
            return [out[:, k] for k in range(len(paths))]

    def arrays_under(self, node: str) -> list[str]:
        found: list[str] = []
        with self._open() as f:
            base = f[node] if node else f
            base.visititems(lambda name, obj: found.append(f"{node}/{name}" if node else name)
                            if isinstance(obj, h5py.Dataset) else None)
        return sorted(found)

    def size_bytes(self, node: str = "") -> int:
        if not node:
            return self.path.stat().st_size
        with self._open() as f:
            return sum(f[p].id.get_storage_size() for p in self._paths_under(f, node))

    @staticmethod
    def _paths_under(f: h5py.File, node: str) -> list[str]:
        found: list[str] = []
        f[node].visititems(lambda n, o: found.append(f"{node}/{n}") if isinstance(o, h5py.Dataset) else None)
        return found

    # ---- writing ------------------------------------------------------------------------------
    def write_rows(self, items: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        with self._open("r+") as f:
            for path, rows, values in items:
                if rows.size == 0:
                    continue
                ds = f[path]
                if h5py.check_string_dtype(ds.dtype) is not None:
                    values = np.array([str(v).encode("utf-8")[:REASON_BYTES] for v in values], dtype=ds.dtype)
                if contiguous(rows):
                    ds[int(rows[0]) : int(rows[-1]) + 1] = values
                else:
                    ds[rows] = values
            f.flush()
        fsync_path(self.path)

    def create_root(self, attrs: dict) -> None:
        self.apply([SetAttrs("", attrs)])

    def apply(self, ops: list[Op]) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.tmp")
        resizes = {op.path: op.rows for op in ops if isinstance(op, Resize)}
        replaced = {op.node for op in ops if isinstance(op, CreateGroup)}
        replaced |= {op.path for op in ops if isinstance(op, CreateArray)}
        try:
            with h5py.File(tmp, "w", libver=_LIBVER, locking=False) as dst:
                if self.exists():
                    with self._open() as src:
                        _copy_group(src, dst, "", replaced, resizes)
                for op in ops:
                    _apply_op(dst, op)
            fsync_path(tmp)
            os.replace(tmp, self.path)
            fsync_path(self.path.parent, directory=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def cleanup(self) -> None:
        for leftover in self.path.parent.glob(f"{self.path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")


def _copy_group(src: h5py.Group, dst: h5py.Group, prefix: str, skip: set[str], resizes: dict[str, int]) -> None:
    """Copy ``src`` into ``dst`` (re-creating datasets, which also compacts the file), leaving out
    the nodes in ``skip`` and resizing those in ``resizes`` along axis 0."""
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name, obj in src.items():
        path = f"{prefix}/{name}" if prefix else name
        if path in skip:
            continue
        if isinstance(obj, h5py.Group):
            _copy_group(obj, dst.create_group(name), path, skip, resizes)
            continue
        rows = resizes.get(path, obj.shape[0])
        new = _create(dst, name, (rows, *obj.shape[1:]), obj.dtype, obj.fillvalue)
        keep = min(rows, obj.shape[0])
        row_bytes = max(1, int(np.prod(obj.shape[1:], dtype=np.int64)) * obj.dtype.itemsize)
        step = max(1, _COPY_BYTES // row_bytes)
        for start in range(0, keep, step):
            stop = min(keep, start + step)
            new[start:stop] = obj[start:stop]


def _apply_op(f: h5py.File, op: Op) -> None:
    if isinstance(op, CreateGroup):
        group = f.require_group(op.node)
        group.attrs.clear()
        for key, value in op.attrs.items():
            group.attrs[key] = json.dumps(value)
    elif isinstance(op, SetAttrs):
        group = f.require_group(op.node) if op.node else f
        group.attrs.clear()
        for key, value in op.attrs.items():
            group.attrs[key] = json.dumps(value)
    elif isinstance(op, CreateArray):
        parent, _, name = op.path.rpartition("/")
        ds = _create(f.require_group(parent) if parent else f, name, op.shape, _h5_dtype(op.dtype), op.fill)
        if op.data is not None and len(op.data):
            ds[...] = op.data.astype(object) if op.dtype == "str" else op.data
    elif isinstance(op, WriteRows):
        if len(op.values):
            ds = f[op.path]
            values = op.values.astype(object) if h5py.check_string_dtype(ds.dtype) is not None else op.values
            ds[op.start : op.start + len(op.values)] = values
    elif isinstance(op, Resize):
        pass  # applied while copying
    else:  # pragma: no cover - programming error
        raise TypeError(f"unknown store operation {op!r}")
