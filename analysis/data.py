"""Reading what the analyses need from a store: layer names, labelled rows, splits, output files.

The store's arrays reach :mod:`embedstore.analysis` through here, so the figure modules only see
numpy arrays. Dataset, model and layer specs are resolved by :mod:`embedstore.store.specs` and
probe records read by :mod:`embedstore.store.records`; layers are always addressed by their
non-negative index after :func:`~embedstore.store.specs.resolve_layers`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import EmbedstoreError, StoreError

from .metrics import subsample_indices

LayerSpec = int | str  # an index (negative counts from the end), a layer name, "all" or "best" (by validation)


@dataclass(frozen=True)
class View:
    """The rows of one model layer that an analysis uses.

    Attributes:
        X: ``[n, dim]`` float embeddings (after subsampling).
        labels: ``[n]`` str labels, ``""`` where a track has none.
        track_ids: ``[n]`` str track ids.
        model, layer, layer_name: which entry and layer (index >= 0).
        split: the split(s) asked for, or None for all rows.
        n_total: rows available before subsampling.
    """

    X: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    model: str
    layer: int
    layer_name: str
    split: str | list[str] | None
    n_total: int

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def subsampled(self) -> bool:
        return self.n < self.n_total


@contextmanager
def open_for_reading(store_path: str | Path) -> Iterator[Any]:
    """Context manager: the store at ``store_path`` opened read-only, in one consistent snapshot
    (metadata read once); raises :class:`StoreError` if it is missing."""
    from embedstore.store import open_store

    if not Path(store_path).exists():
        raise StoreError(f"{store_path}: no such store")
    with open_store(store_path, mode="r") as store, store.snapshot():
        yield store


def layer_names(store, dataset: str, model: str) -> list[str]:
    """Names of the layers of one model entry, index order."""
    attrs = store.model_attrs(dataset, model)
    names = attrs.get("layer_names")
    if names is None:
        names = [f"layer{i}" for i in range(len(attrs["layer_widths"]))]
    return [str(n) for n in names]


def _as_str_labels(labels: Any, n: int) -> np.ndarray:
    if labels is None:
        return np.full(n, "", dtype=object)
    out = np.array(["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in labels],
                   dtype=object)
    return out


def load_view(store, dataset: str, model: str, layer: int, split: str | list[str] | None,
              max_points: int | None = None, seed: int = 0, names: Sequence[str] | None = None) -> View:
    """One layer's rows ``[n, dim]`` with labels and ids; a seeded subsample of ``max_points`` rows.

    The subsample depends only on the number of rows and ``seed``, so model entries that hold the
    same tracks get the same tracks drawn.
    """
    from embedstore.store import load_embeddings

    names = list(names) if names is not None else layer_names(store, dataset, model)
    emb = load_embeddings(store, dataset=dataset, model=model, layer=int(layer), split=split)
    X = np.asarray(emb.X)
    if X.ndim != 2:
        raise StoreError(f"expected [n, dim] embeddings for {model} layer {layer}, got shape {X.shape}")
    n_total = X.shape[0]
    if n_total == 0:
        raise StoreError(f"model {model!r} of dataset {dataset!r} has no rows for split {split!r}")
    idx = subsample_indices(n_total, max_points, seed)
    return View(
        X=X[idx],
        labels=_as_str_labels(emb.labels, n_total)[idx],
        track_ids=np.asarray(emb.track_ids).astype(str)[idx],
        model=model,
        layer=int(layer),
        layer_name=names[int(layer)],
        split=split,
        n_total=int(n_total),
    )


def dataset_labels(store, dataset: str) -> list[str]:
    """Every distinct label of the dataset's track table, sorted (``""`` when some track has none):
    the set that fixes each label's colour in every figure of the dataset."""
    table = store.tracks(dataset)
    return sorted(set(_as_str_labels(table.labels, len(table)).tolist()))


def statistics_split(store, dataset: str) -> str | None:
    """The split whose rows give standardisation statistics (mean, std): ``"train"`` when the
    dataset has train rows, else None (the caller then uses the rows it analyses)."""
    return "train" if "train" in set(store.tracks(dataset).splits.tolist()) else None


def task_name(store, dataset: str) -> str:
    """The name of the dataset's label task (e.g. "genre"), for legend titles; "label" if unknown."""
    try:
        tasks = store.dataset_attrs(dataset).get("tasks") or {}
    except (KeyError, AttributeError, EmbedstoreError):
        return "label"
    labelled = [t for t in tasks if t != "caption"]
    return str(labelled[0]) if labelled else "label"


def selection_split(store, dataset: str) -> str | list[str] | None:
    """The rows a training-free "best layer" is chosen on: ``"valid"`` when the dataset has valid
    rows, else ``"train"``, else every split but ``test`` (k-fold datasets: all folds; None when the
    dataset has no splits at all). Never the test split.

    Raises:
        StoreError: the dataset's only split is ``test``.
    """
    present = set(store.tracks(dataset).splits.tolist()) - {""}
    for name in ("valid", "train"):
        if name in present:
            return name
    rest = sorted(present - {"test"})
    if not rest and present:
        raise StoreError(f"dataset {dataset!r} has only test rows: no split to choose a best layer on "
                         "without reading the test split")
    return rest or None


# ---- output --------------------------------------------------------------------------------------


def default_out_dir(store_path: str | Path) -> Path:
    """``<store>.analysis/`` next to the store (e.g. ``gtzan.zarr`` -> ``gtzan.zarr.analysis``)."""
    p = Path(store_path)
    return p.parent / f"{p.name}.analysis"


def out_dir_for(store_path: str | Path, out: str | Path | None) -> Path:
    d = Path(out) if out is not None else default_out_dir(store_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def file_stem(*parts: object) -> str:
    """A file-name-safe stem from ``parts`` joined by ``_`` (None parts skipped)."""
    text = "_".join(str(p) for p in parts if p is not None and p != "")
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-")[:180]


def layer_tag(layer: LayerSpec, chosen: Sequence[str] = ()) -> str:
    """``layer`` for a file name: ``all``, ``best``, or the names of the layers it resolved to
    (``chosen``, one per model; distinct ones joined by ``+``), never a negative index such as
    ``layer-1``. Without ``chosen``, an index gives ``layer3`` and a name itself."""
    if layer in ("all", "best"):
        return str(layer)
    if chosen:
        return "+".join(dict.fromkeys(str(c) for c in chosen))
    return f"layer{layer}" if not isinstance(layer, str) or layer.lstrip("-").isdigit() else layer


def split_tag(split: str | Sequence[str] | None) -> str:
    if split is None:
        return "all"
    return split if isinstance(split, str) else "+".join(split)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, payload: dict) -> Path:
    """Write ``payload`` as sorted, indented JSON (NaN/inf become null); returns ``path``."""
    path.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=True) + "\n")
    return path
