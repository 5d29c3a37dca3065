"""The store's layout: names of groups and arrays, the schema version, and the track table.

Layout (identical node paths in Zarr and HDF5; see ``docs/store-format.md``)::

    /                                  attrs: schema_version, embedstore_version, format, datasets
    /<dataset>/                        attrs: name, kind, root, tasks, split_scheme, ..., n_tracks, models
    /<dataset>/tracks/<column>         [tracks]  id, path, label, split, caption, content_hash (str),
                                                 offset, duration (float64)
    /<dataset>/models/<model>/         attrs: the model entry's metadata (see IDENTITY_KEYS)
    /<dataset>/models/<model>/layers/<l>        [tracks, width_l]  pooled embedding of layer l
    /<dataset>/models/<model>/done              [tracks] bool      row written and durable
    /<dataset>/models/<model>/failed            [tracks] bool      row's last attempt failed
    /<dataset>/models/<model>/fail_reason       [tracks] str       one-line reason where failed
    /<dataset>/models/<model>/frames/<l>        [tracks, max_frames, width_l]  (opt-in)
    /<dataset>/models/<model>/frame_counts      [tracks] int32     valid frames per track (opt-in)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import numpy as np

from embedstore.errors import StoreError

SCHEMA_VERSION = 1
FORMAT_NAME = "embedstore"

TRACKS = "tracks"
MODELS = "models"
LAYERS = "layers"
FRAMES = "frames"
DONE = "done"
FAILED = "failed"
FAIL_REASON = "fail_reason"
FRAME_COUNTS = "frame_counts"

#: bytes kept of a failure reason (HDF5 stores it as fixed-length UTF-8 so it can be written in place)
REASON_BYTES = 256

#: track-table columns: (TrackTable field, stored array name, kind)
TRACK_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ids", "id", "str"),
    ("paths", "path", "str"),
    ("labels", "label", "str"),
    ("splits", "split", "str"),
    ("captions", "caption", "str"),
    ("offsets", "offset", "float"),
    ("durations", "duration", "float"),
    ("hashes", "content_hash", "str"),
)

#: metadata keys that identify what a model entry's numbers mean; writing into an existing entry with
#: a different value for any of them (where both sides have it) is refused
IDENTITY_KEYS: tuple[str, ...] = (
    "layer_widths",
    "storage_dtype",
    "frame_layers",
    "max_frames",
    "frame_widths",
    "model_name",
    "checkpoint",
    "revision",
    "weights_sha256",
    "weights_hash",
    "sample_rate",
    "layer_names",
    "frame_rate",
    "pooling",
    "window_rule",
    "frame_hop",
    "preprocessing",
    # the names extract/pipeline.py writes
    "encoder",
    "encoder_widths",
    "windowing",
    "frames_hop_seconds",
    "audio_preprocessing",
    "layer_convention",
)

#: values an entry written before a key was recorded is taken to hold for it, when a write brings the key:
#: an entry that predates the recorded layer convention (stable-layer-norm encoders stored their last layer
#: before or after the final LayerNorm depending on the transformers version) must not be mixed with one that
#: states it. Keys absent here are compared only where both sides have them.
LEGACY_IDENTITY: dict[str, str] = {
    "layer_convention": "not recorded (written before embedstore recorded the layer convention)",
}

STORAGE_DTYPES = ("float32", "float16")

#: compressors a model entry's embedding arrays (layers, frames) may use in Zarr: ``"none"``, or Blosc with
#: byte shuffle and ``"lz4"`` or ``"zstd"`` at a level 1-9 (``"zstd:3"``); HDF5 arrays are never compressed
CODEC_NAMES = ("none", "lz4", "zstd")
_DEFAULT_LEVELS = {"lz4": 5, "zstd": 3}
#: codec of new Zarr model entries, chosen by measurement (``benchmarks/bench_store.py``, ``benchmarks/README.md``)
DEFAULT_CODEC = "none"


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it can be a group name in both backends, else raise :class:`StoreError`."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name != name.strip():
        raise StoreError(f"{what} name {name!r} is not usable: it must be non-empty, without '/', "
                         "leading '.' or surrounding spaces")
    return name


def check_codec(spec: str) -> str:
    """The canonical form of codec ``spec`` (``"none"``, ``"lz4:5"``, ``"zstd:3"``; a name without a level
    gets its default level), or :class:`StoreError` naming the choices."""
    name, _, level = str(spec).strip().lower().partition(":")
    if name in CODEC_NAMES and name != "none" and (not level or (level.isdigit() and 1 <= int(level) <= 9)):
        return f"{name}:{int(level) if level else _DEFAULT_LEVELS[name]}"
    if name == "none" and not level:
        return name
    raise StoreError(f"codec {spec!r} is not one of none, lz4[:level], zstd[:level] (level 1-9)")


def dataset_node(dataset: str) -> str:
    return dataset


def model_node(dataset: str, model: str) -> str:
    return f"{dataset}/{MODELS}/{model}"


def _str_array(values: Iterable[Any]) -> np.ndarray:
    out = ["" if v is None else str(v) for v in values]
    return np.asarray(out, dtype=str) if out else np.zeros(0, dtype="<U1")


def _float_array(values: Iterable[Any]) -> np.ndarray:
    return np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)


@dataclass
class TrackTable:
    """The track table of one dataset; every array is ``[tracks]``, row-aligned with the model arrays.

    Strings are numpy unicode arrays where ``""`` means missing (no label, no caption, unknown hash);
    ``offsets``/``durations`` are float64 seconds (``nan`` = unknown duration).
    """

    ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray = field(default=None)  # type: ignore[assignment]
    splits: np.ndarray = field(default=None)  # type: ignore[assignment]
    captions: np.ndarray = field(default=None)  # type: ignore[assignment]
    offsets: np.ndarray = field(default=None)  # type: ignore[assignment]
    durations: np.ndarray = field(default=None)  # type: ignore[assignment]
    hashes: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.ids)
        for attr, _, kind in TRACK_COLUMNS:
            value = getattr(self, attr)
            if value is None:
                value = [None] * n
            value = _str_array(value) if kind == "str" else _float_array(value)
            if value.shape != (n,):
                raise StoreError(f"track table column {attr!r} has {len(value)} rows, ids have {n}")
            setattr(self, attr, value)
        if n and np.isnan(self.offsets).any():
            self.offsets = np.nan_to_num(self.offsets, nan=0.0)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_tracks(cls, tracks: Iterable[Any], hashes: Iterable[str | None] | None = None) -> "TrackTable":
        """Build a table from objects with ``id, path, label, split, caption, offset, duration``
        attributes (e.g. ``extract.datasets.Track``); ``hashes`` gives each track's content hash."""
        tracks = list(tracks)
        get = lambda name, default=None: [getattr(t, name, default) for t in tracks]  # noqa: E731
        return cls(ids=get("id"), paths=get("path"), labels=get("label"), splits=get("split"),
                   captions=get("caption"), offsets=get("offset", 0.0), durations=get("duration"),
                   hashes=list(hashes) if hashes is not None else get("content_hash"))

    def select(self, rows: np.ndarray) -> "TrackTable":
        """The sub-table of ``rows`` (indices into this table)."""
        rows = np.asarray(rows, dtype=np.int64)
        return TrackTable(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def columns(self) -> dict[str, np.ndarray]:
        """Stored column name -> ``[tracks]`` array."""
        return {stored: getattr(self, attr) for attr, stored, _ in TRACK_COLUMNS}

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray]) -> "TrackTable":
        return cls(**{attr: columns[stored] for attr, stored, _ in TRACK_COLUMNS})


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (``np.str_('a')`` -> ``'a'``), for messages."""
    return value.item() if isinstance(value, np.generic) else value


def table_disagreement(stored: TrackTable, new: TrackTable) -> tuple[np.ndarray, str | None]:
    """Match ``new`` against ``stored`` by track id.

    Returns ``(new_rows, problem)``: the rows of ``new`` whose ids are not stored yet (in the order of
    ``new``), and a one-line description of the first disagreement on a stored track (``None`` when
    every shared track agrees). An empty content hash on either side matches any hash.
    """
    if len(set(new.ids.tolist())) != len(new):
        ids, counts = np.unique(new.ids, return_counts=True)
        return np.zeros(0, np.int64), f"track id {_plain(ids[counts > 1][0])!r} appears more than once"
    index = {tid: i for i, tid in enumerate(stored.ids.tolist())}
    pos = np.array([index.get(t, -1) for t in new.ids.tolist()], dtype=np.int64)
    shared_new = np.flatnonzero(pos >= 0)
    shared_old = pos[shared_new]
    for attr, _, kind in TRACK_COLUMNS:
        a = getattr(stored, attr)[shared_old]
        b = getattr(new, attr)[shared_new]
        if kind == "str":
            bad = a != b
            if attr == "hashes":
                bad &= (a != "") & (b != "")
        else:
            bad = ~np.isclose(a, b, rtol=0.0, atol=1e-6, equal_nan=True)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            return (np.zeros(0, np.int64),
                    f"track {_plain(stored.ids[shared_old[k]])!r} has {attr[:-1] if attr != 'hashes' else 'hash'}"
                    f" {_plain(a[k])!r} in the store but {_plain(b[k])!r} in the new table")
    return np.flatnonzero(pos < 0), None


def normalise_tasks(tasks: Any) -> dict[str, str]:
    """``{"genre": "label"}`` stays; a list of task names maps each to its column
    (``"caption"`` -> ``"caption"``, anything else -> ``"label"``)."""
    if tasks is None:
        return {}
    if isinstance(tasks, dict):
        return {str(k): str(v) for k, v in tasks.items()}
    return {str(t): ("caption" if t == "caption" else "label") for t in tasks}


def one_line(text: str, limit: int = REASON_BYTES) -> str:
    """``text`` on one line, cut to at most ``limit`` UTF-8 bytes."""
    line = " ".join(str(text).split())
    return line.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def frame_widths_of(attrs: dict) -> list[int]:
    """Width of each stored frame layer, in ``frame_layers`` order. Entries written before
    ``frame_widths`` was recorded sized their frame arrays by the layer's pooled width."""
    widths = attrs.get("frame_widths")
    if widths is None:
        widths = [attrs["layer_widths"][i] for i in attrs.get("frame_layers", [])]
    return [int(w) for w in widths]
