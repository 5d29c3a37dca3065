"""The backend-neutral store: datasets, their track tables and model entries.

``open_store(path, mode)`` picks Zarr v3 (default) or HDF5 (``.h5``/``.hdf5``) and returns a
:class:`Store`. All writing goes through :meth:`Store.write_tracks` (structure) and
:meth:`Store.model_writer` (rows); readers never lock and may run while a writer works.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from embedstore import __version__
from embedstore.errors import StoreError, did_you_mean
from embedstore.store import locking, specs
from embedstore.store.backend import (
    Backend,
    CreateArray,
    CreateGroup,
    Op,
    Resize,
    SetAttrs,
    WriteRows,
    open_backend,
    unique_sorted,
)
from embedstore.store.schema import (
    DONE,
    FAIL_REASON,
    FAILED,
    FORMAT_NAME,
    FRAME_COUNTS,
    FRAMES,
    IDENTITY_KEYS,
    LEGACY_IDENTITY,
    LAYERS,
    SCHEMA_VERSION,
    DEFAULT_CODEC,
    STORAGE_DTYPES,
    TRACK_COLUMNS,
    TRACKS,
    TrackTable,
    check_codec,
    check_name,
    frame_widths_of,
    model_node,
    normalise_tasks,
    table_disagreement,
)
from embedstore.store.writer import DEFAULT_FLUSH_SECONDS

if TYPE_CHECKING:  # the writer imports this module
    from embedstore.store.writer import ModelWriter

DEFAULT_STORE = Path("embedstore.zarr")
TRACK_CHUNK_ROWS = 4096
_CHUNK_BYTES = 2 << 20  # target size of one layer chunk before compression
_FRAME_CHUNK_BYTES = 8 << 20


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} must be JSON-serialisable: {exc}") from None


def default_chunk_rows(widths: list[int], itemsize: int, n_tracks: int | None = None) -> int:
    """Rows per chunk so the widest layer's chunk is about 2 MiB: a power of two in [16, 4096], and
    no more than ``n_tracks`` (at least 16): an uncompressed chunk is stored whole, so a small dataset
    would otherwise be padded up to 2 MiB per layer."""
    rows = _CHUNK_BYTES // max(1, max(widths) * itemsize)
    rows = min(4096, max(16, 2 ** int(math.log2(max(rows, 1)))))
    if n_tracks is not None:
        rows = min(rows, max(16, n_tracks))
    return int(rows)


class Store:
    """An open embedstore (use :func:`open_store`). A context manager; ``close()`` releases nothing
    on disk (readers hold no lock), so forgetting it is harmless."""

    def __init__(self, path: Path, mode: str, backend: Backend) -> None:
        self.path = path
        self.mode = mode
        self.backend = backend
        self._tracks_cache: dict[tuple[str, int], TrackTable] = {}
        self._attr_cache: dict[str, dict] | None = None

    # ---- housekeeping -------------------------------------------------------------------------
    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, mode={self.mode!r}, backend={self.backend.kind!r})"

    @property
    def kind(self) -> str:
        """``"zarr"`` or ``"hdf5"``."""
        return self.backend.kind

    def _require_write(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path}: store is open read-only; open it with mode='a' to write")

    def lock(self) -> None:
        """Take this store's write lock (re-entrant within the process); pair with :meth:`unlock`."""
        locking.acquire(self.backend.lock_path, self.path, on_first=self.backend.cleanup)

    def unlock(self) -> None:
        locking.release(self.backend.lock_path)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within this block, attributes are read once and reused: one consistent view for a
        compound read (e.g. :func:`load_embeddings`), and fewer file opens."""
        outer = self._attr_cache is None
        if outer:
            self._attr_cache = {}
        try:
            yield
        finally:
            if outer:
                self._attr_cache = None

    def _attrs(self, node: str) -> dict:
        if self._attr_cache is None:
            return self.backend.read_attrs(node)
        if node not in self._attr_cache:
            self._attr_cache[node] = self.backend.read_attrs(node)
        return self._attr_cache[node]

    # ---- reading structure --------------------------------------------------------------------
    def root_attrs(self) -> dict:
        """Root attributes: ``format``, ``schema_version``, ``embedstore_version``, ``datasets``."""
        return self._attrs("")

    def datasets(self) -> list[str]:
        """Names of the datasets in the store, in creation order."""
        return list(self.root_attrs().get("datasets", []))

    def _check_dataset(self, dataset: str) -> dict:
        attrs = self._attrs(dataset) if dataset in self.datasets() else {}
        if not attrs:
            choices = ", ".join(self.datasets()) or "none"
            raise StoreError(f"{self.path}: no dataset {dataset!r} in the store"
                             f"{did_you_mean(dataset, self.datasets())} (datasets: {choices})")
        return attrs

    def dataset_attrs(self, dataset: str) -> dict:
        """The dataset's attributes: ``name, kind, root, tasks, split_scheme, ...`` as written, plus
        ``n_tracks`` and ``models``."""
        return self._check_dataset(dataset)

    def models(self, dataset: str) -> list[str]:
        """Model entries of ``dataset``, in creation order."""
        return list(self._check_dataset(dataset).get("models", []))

    def n_tracks(self, dataset: str) -> int:
        """Rows of the dataset's track table."""
        return int(self._check_dataset(dataset)["n_tracks"])

    def find_datasets(self, task: str) -> list[str]:
        """Datasets whose ``tasks`` attribute names ``task`` (e.g. ``"genre"``)."""
        return [d for d in self.datasets() if task in self._attrs(d).get("tasks", {})]

    def model_attrs(self, dataset: str, model: str) -> dict:
        """Metadata of a model entry (``layer_names``, ``layer_widths``, ``storage_dtype``, ...)."""
        if model not in self.models(dataset):
            choices = ", ".join(self.models(dataset)) or "none"
            raise StoreError(f"{self.path}: dataset {dataset!r} has no model {model!r}"
                             f"{did_you_mean(model, self.models(dataset))} (models: {choices})")
        return self._attrs(model_node(dataset, model))

    def tracks(self, dataset: str) -> TrackTable:
        """The dataset's track table (``[tracks]`` arrays)."""
        n = self.n_tracks(dataset)
        key = (dataset, n)
        if key not in self._tracks_cache:  # rows below n never change, so (dataset, n) is a safe key
            cols = {stored: self.backend.read(f"{dataset}/{TRACKS}/{stored}", slice(0, n))
                    for _, stored, _ in TRACK_COLUMNS}
            self._tracks_cache[key] = TrackTable.from_columns(cols)
        return self._tracks_cache[key]

    # ---- reading rows -------------------------------------------------------------------------
    def done(self, dataset: str, model: str) -> np.ndarray:
        """``[tracks]`` bool: rows whose embeddings are written."""
        self.model_attrs(dataset, model)
        return self.backend.read(f"{model_node(dataset, model)}/{DONE}", slice(0, self.n_tracks(dataset)))

    def failures(self, dataset: str, model: str) -> list[tuple[int, str, str]]:
        """``(row, track id, reason)`` of every row whose last attempt failed."""
        self.model_attrs(dataset, model)
        node = model_node(dataset, model)
        failed = np.flatnonzero(self.backend.read(f"{node}/{FAILED}", slice(0, self.n_tracks(dataset))))
        if failed.size == 0:
            return []
        reasons = self.backend.read(f"{node}/{FAIL_REASON}", failed)
        ids = self.tracks(dataset).ids[failed]
        return [(int(r), str(i), str(m)) for r, i, m in zip(failed, ids, reasons)]

    def layer_index(self, dataset: str, model: str, layer: int | str) -> int:
        """Resolve ``layer`` (index, negative index, digit string or layer name) to an index; see
        :func:`~embedstore.store.specs.layer_index` (a :class:`ModelError` names the layers)."""
        names = [str(n) for n in self.model_attrs(dataset, model)["layer_names"]]
        return specs.layer_index(layer, names, model=model, option="layer")

    def _read_rows(self, paths: list[str], rows: np.ndarray | None, n: int,
                   out: np.ndarray | None = None) -> list[np.ndarray]:
        """``rows`` (any order, repeats allowed; all of ``0..n-1`` when None) of each array in
        ``paths``, written into ``out`` (``[rows, len(paths), ...]``) when given."""
        if rows is None:
            return self.backend.read_many(paths, slice(0, n), out)
        uniq, inverse = unique_sorted(rows)
        if uniq.size and (uniq[0] < 0 or uniq[-1] >= n):
            raise StoreError(f"{self.path}: rows must lie in 0..{n - 1}")
        if inverse is None:
            return self.backend.read_many(paths, uniq, out)
        parts = [x[inverse] for x in self.backend.read_many(paths, uniq)]
        if out is None:
            return parts
        for k, part in enumerate(parts):
            out[:, k] = part
        return [out[:, k] for k in range(len(parts))]

    def read_layer(self, dataset: str, model: str, layer: int | str, rows: np.ndarray | None = None) -> np.ndarray:
        """``[rows, width]`` pooled embeddings of one layer (all rows when ``rows`` is None); reads
        only that layer's array and only the chunks holding ``rows``."""
        return self.read_layers(dataset, model, [layer], rows)[0]

    def read_layers(self, dataset: str, model: str, layers: list[int | str], rows: np.ndarray | None = None,
                    out: np.ndarray | None = None) -> list[np.ndarray]:
        """``[rows, width_l]`` pooled embeddings of each of ``layers``, read together (in Zarr, in one
        call into zarr's event loop). With ``out`` (``[rows, len(layers), width]`` of the storage
        dtype, layers of one width) the values are written into it, which saves stacking them."""
        node = model_node(dataset, model)
        paths = [f"{node}/{LAYERS}/{self.layer_index(dataset, model, layer)}" for layer in layers]
        return self._read_rows(paths, rows, self.n_tracks(dataset), out)

    def read_frames(self, dataset: str, model: str, layer: int | str,
                    rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``([rows, max_frames, width], [rows] frame counts)`` of a layer stored with frames."""
        index = self.layer_index(dataset, model, layer)
        attrs = self.model_attrs(dataset, model)
        if index not in attrs.get("frame_layers", []):
            raise StoreError(f"{self.path}: model {model!r} stores no frames for layer {index} "
                             f"(frame layers: {attrs.get('frame_layers') or 'none'})")
        node, n = model_node(dataset, model), self.n_tracks(dataset)
        values, counts = self._read_rows([f"{node}/{FRAMES}/{index}", f"{node}/{FRAME_COUNTS}"], rows, n)
        return values, counts

    # ---- writing ------------------------------------------------------------------------------
    def write_tracks(self, dataset: str, table: TrackTable, attrs: dict | None = None) -> None:
        """Create ``dataset`` with ``table``, or grow it by the table's tracks not stored yet.

        ``attrs`` (``name, kind, root, tasks, split_scheme``, any JSON) are stored on the dataset;
        ``tasks`` maps task -> column, e.g. ``{"genre": "label"}``. Tracks are matched by id; a stored
        track whose path, label, split, caption, offset, duration or content hash differs in ``table``
        raises :class:`StoreError`. New tracks are appended (model arrays grow with them, not done).
        """
        self._require_write()
        check_name(dataset, "dataset")
        attrs = _jsonable(dict(attrs or {}), "dataset attributes")
        attrs["tasks"] = normalise_tasks(attrs.get("tasks"))
        attrs.setdefault("name", dataset)
        self.lock()
        try:
            root = self.root_attrs()
            if dataset not in root.get("datasets", []):
                _, problem = table_disagreement(TrackTable(ids=[], paths=[]), table)
                if problem:
                    raise StoreError(f"{self.path}: dataset {dataset!r}: {problem}")
                ops: list[Op] = [CreateGroup(dataset, {**attrs, "n_tracks": len(table), "models": []})]
                for name, values in table.columns().items():
                    ops.append(CreateArray(f"{dataset}/{TRACKS}/{name}", (len(table),),
                                           "str" if values.dtype.kind == "U" else "float64",
                                           TRACK_CHUNK_ROWS, "" if values.dtype.kind == "U" else 0.0, values))
                ops.append(SetAttrs("", {**root, "datasets": [*root.get("datasets", []), dataset]}))
                self.backend.apply(ops)
                return
            current = self.backend.read_attrs(dataset)
            new_rows, problem = table_disagreement(self.tracks(dataset), table)
            if problem:
                raise StoreError(f"{self.path}: dataset {dataset!r}: {problem}; refusing to mix track "
                                 "tables (write the new audio under another name with --dataset-name)")
            n_old = int(current["n_tracks"])
            n_new = n_old + int(new_rows.size)
            merged = {**current, **attrs, "tasks": {**current.get("tasks", {}), **attrs["tasks"]},
                      "n_tracks": n_new, "models": current.get("models", [])}
            ops = []
            if new_rows.size:
                for name, values in table.select(new_rows).columns().items():
                    path = f"{dataset}/{TRACKS}/{name}"
                    ops += [Resize(path, n_new), WriteRows(path, n_old, values)]
                for model in merged["models"]:
                    node = model_node(dataset, model)
                    ops += [Resize(p, n_new) for p in self.backend.arrays_under(node)]
                    ops += [WriteRows(f"{node}/{flag}", n_old, np.zeros(n_new - n_old, bool)) for flag in (DONE, FAILED)]
            if merged != current:
                ops.append(SetAttrs(dataset, merged))  # last: the new rows exist once n_tracks says so
            if ops:
                self.backend.apply(ops)
        finally:
            self.unlock()

    def model_writer(self, dataset: str, model: str, metadata: dict, layer_widths: list[int], *,
                     storage_dtype: str = "float32", frame_layers: list[int] | None = None,
                     max_frames: int = 0, frame_widths: list[int] | None = None, chunk_rows: int | None = None,
                     codec: str | None = None,
                     flush_seconds: float | None = DEFAULT_FLUSH_SECONDS) -> ModelWriter:
        """Create (or reopen, to resume) the model entry ``model`` of ``dataset`` and return its writer.

        ``metadata`` is any JSON dict; the keys in :data:`~embedstore.store.schema.IDENTITY_KEYS`
        (``model_name, checkpoint, revision, weights_sha256, sample_rate, layer_names, frame_rate,
        pooling, window_rule, frame_hop, preprocessing``, ...) identify the entry, and reopening it with
        a different value for one of them, different ``layer_widths``, dtype or frame settings raises
        :class:`StoreError`. ``frame_layers`` (indices) get ``[tracks, max_frames, width]`` frame arrays,
        ``width`` the layer's entry of ``frame_widths`` (one per frame layer, in sorted layer order; default
        the layer's pooled width: frames are not pooled, so mean+std rows are twice as wide as frames).
        ``flush_seconds`` bounds how long a written row may wait in the writer's buffer before it is made
        durable and marked done, whatever ``chunk_rows`` is (``None``: only whole chunks, a full buffer
        and close flush; see :class:`~embedstore.store.writer.ModelWriter`). ``codec`` compresses a new
        entry's layer and frame arrays in Zarr (``"none"``, ``"lz4[:level]"``, ``"zstd[:level]"``; default
        :data:`~embedstore.store.schema.DEFAULT_CODEC`); HDF5 arrays are never compressed, so there it
        must be ``None`` or ``"none"``. A reopened entry keeps the codec it was created with. The
        writer holds the store's write lock until it is closed.
        """
        from embedstore.store.writer import ModelWriter

        self._require_write()
        check_name(model, "model")
        ds_attrs = self._check_dataset(dataset)
        widths = [int(w) for w in layer_widths]
        if not widths or min(widths) <= 0:
            raise StoreError(f"model {model!r}: layer_widths must be positive, got {layer_widths}")
        if storage_dtype not in STORAGE_DTYPES:
            raise StoreError(f"model {model!r}: storage dtype {storage_dtype!r} is not one of {STORAGE_DTYPES}")
        count = len(widths)
        if any(not -count <= int(i) < count for i in frame_layers or []):
            raise StoreError(f"model {model!r}: frame layers {frame_layers} out of range 0..{count - 1}")
        frames = sorted({int(i) % count for i in frame_layers or []})
        if frames and max_frames <= 0:
            raise StoreError(f"model {model!r}: frame layers need max_frames > 0")
        f_widths = [int(w) for w in frame_widths] if frame_widths is not None else [widths[i] for i in frames]
        if len(f_widths) != len(frames) or any(w <= 0 for w in f_widths):
            raise StoreError(f"model {model!r}: frame_widths {frame_widths} must be one positive width per frame "
                             f"layer {frames}")
        if flush_seconds is not None and not flush_seconds >= 0:
            raise StoreError(f"model {model!r}: flush_seconds must be >= 0 seconds or None, got {flush_seconds}")
        meta = _jsonable(dict(metadata), f"metadata of model {model!r}")
        names = [str(x) for x in meta.get("layer_names") or [f"layer_{i}" for i in range(count)]]
        if len(names) != count:
            raise StoreError(f"model {model!r}: {len(names)} layer names for {count} layer widths")
        itemsize = np.dtype(storage_dtype).itemsize
        codec = self._codec(codec)
        n_tracks = int(ds_attrs["n_tracks"])
        entry = {**meta, "layer_names": names, "layer_widths": widths, "num_layers": count,
                 "storage_dtype": storage_dtype, "frame_layers": frames,
                 "max_frames": int(max_frames) if frames else 0, "frame_widths": f_widths,
                 "chunk_rows": int(chunk_rows or default_chunk_rows(widths, itemsize, n_tracks)), "codec": codec,
                 "embedstore_version": __version__, "schema_version": SCHEMA_VERSION,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.lock()
        try:
            node = model_node(dataset, model)
            ds_attrs = self.backend.read_attrs(dataset)
            n = int(ds_attrs["n_tracks"])
            if model in ds_attrs.get("models", []):
                stored = self.backend.read_attrs(node)
                for key in IDENTITY_KEYS:
                    old = stored.get(key, LEGACY_IDENTITY.get(key))
                    if old is not None and key in entry and old != entry[key]:
                        raise StoreError(
                            f"{self.path}: model entry {model!r} of dataset {dataset!r} holds {key}="
                            f"{json.dumps(old)[:120]}, not {json.dumps(entry[key])[:120]}; "
                            "write it under another model name or into another store")
                entry = stored
            else:
                self.backend.apply(self._model_ops(dataset, model, entry, n, ds_attrs))
            return ModelWriter(self, dataset, model, entry, n, flush_seconds=flush_seconds)
        except BaseException:
            self.unlock()
            raise

    def _codec(self, codec: str | None) -> str:
        """The canonical codec of a new entry: ``codec`` or the default; always ``"none"`` in HDF5."""
        if self.kind != "zarr":
            if codec is not None and check_codec(codec) != "none":
                raise StoreError(f"{self.path}: HDF5 stores are uncompressed (raw in-place writes keep them "
                                 f"crash-safe); codec {codec!r} needs a Zarr store")
            return "none"
        return check_codec(DEFAULT_CODEC if codec is None else codec)

    def _model_ops(self, dataset: str, model: str, entry: dict, n: int, ds_attrs: dict) -> list[Op]:
        node = model_node(dataset, model)
        rows, dtype, codec = entry["chunk_rows"], entry["storage_dtype"], entry["codec"]
        ops: list[Op] = [CreateGroup(node, entry)]
        for i, width in enumerate(entry["layer_widths"]):
            ops.append(CreateArray(f"{node}/{LAYERS}/{i}", (n, width), dtype, rows, math.nan, codec=codec))
        ops += [CreateArray(f"{node}/{DONE}", (n,), "bool", rows, False),
                CreateArray(f"{node}/{FAILED}", (n,), "bool", rows, False),
                CreateArray(f"{node}/{FAIL_REASON}", (n,), "fixedstr", rows, "")]
        if entry["frame_layers"]:
            itemsize = np.dtype(dtype).itemsize
            for i, width in zip(entry["frame_layers"], frame_widths_of(entry)):
                frame_rows = max(1, min(rows, _FRAME_CHUNK_BYTES // (entry["max_frames"] * width * itemsize)))
                ops.append(CreateArray(f"{node}/{FRAMES}/{i}", (n, entry["max_frames"], width), dtype,
                                       frame_rows, math.nan, codec=codec))
            ops.append(CreateArray(f"{node}/{FRAME_COUNTS}", (n,), "int32", rows, 0))
        ops.append(SetAttrs(dataset, {**ds_attrs, "models": [*ds_attrs.get("models", []), model]}))
        return ops


def _create(path: Path, backend: Backend) -> Store:
    """A new, empty store at ``path`` (its folder and root attributes), opened for writing."""
    (path if backend.kind == "zarr" else path.parent).mkdir(parents=True, exist_ok=True)
    store = Store(path, "a", backend)
    store.lock()
    try:
        if not backend.exists():
            backend.create_root({"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION,
                                 "embedstore_version": __version__, "datasets": []})
    finally:
        store.unlock()
    return store


def _why_not_created(path: Path, exc: OSError) -> str:
    """The reason a store folder could not be made, naming a file that sits where a folder must be."""
    ancestor = next((p for p in path.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    return exc.strerror or str(exc)


def open_store(path: str | Path = DEFAULT_STORE, mode: str = "r") -> Store:
    """Open the store at ``path``: ``mode="r"`` reads an existing store, ``"a"`` also writes and
    creates the store if missing. A path ending in ``.h5``/``.hdf5`` is HDF5, anything else Zarr v3.

    Raises :class:`StoreError` when the path is not an embedstore store or was written by a newer
    schema version than this embedstore reads.
    """
    if mode not in ("r", "a"):
        raise StoreError(f"store mode must be 'r' or 'a', got {mode!r}")
    path = Path(path)
    backend = open_backend(path, read_only=mode == "r")
    if not backend.exists():
        if mode == "r":
            raise StoreError(f"{path}: no embedstore store here (write one first, e.g. `embedstore extract`)")
        if path.exists() and (path.is_file() if backend.kind == "zarr" else True):
            raise StoreError(f"{path}: exists but is not an embedstore store")
        if backend.kind == "zarr" and path.is_dir() and any(path.iterdir()):
            raise StoreError(f"{path}: directory is not empty and not a Zarr store")
        try:
            return _create(path, backend)
        except OSError as exc:  # read-only, no such parent, a file where a folder should be, ...
            raise StoreError(f"{path}: cannot create the store here ({_why_not_created(path, exc)})") from None
    attrs = backend.read_attrs("")
    if attrs.get("format") != FORMAT_NAME or "schema_version" not in attrs:
        raise StoreError(f"{path}: not an embedstore store (no schema_version in its root attributes)")
    if int(attrs["schema_version"]) > SCHEMA_VERSION:
        raise StoreError(f"{path}: written with store schema version {attrs['schema_version']}, newer than "
                         f"the {SCHEMA_VERSION} this embedstore {__version__} reads; upgrade embedstore")
    return Store(path, mode, backend)
