"""Reading embeddings for heads and analyses: one layer (or all), one split, only finished rows."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from embedstore.errors import StoreError
from embedstore.store.specs import resolve_entry
from embedstore.store.store import Store, open_store


@dataclass
class Embeddings:
    """Embeddings of some rows of a dataset, with their track metadata.

    ``X`` is ``[n, dim]`` for one layer, ``[n, layers, dim]`` for ``layer="all"`` and
    ``[n, max_frames, dim]`` from :func:`load_frames`; every other array is ``[n]``. ``rows`` index the
    dataset's track table; ``X`` keeps the stored dtype (float32 or float16).
    """

    X: np.ndarray
    track_ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    rows: np.ndarray
    layer_names: list[str]
    model: str
    dataset: str
    captions: np.ndarray
    layers: list[int]
    frame_counts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)


@contextmanager
def _opened(store: str | Path | Store) -> Iterator[Store]:
    if isinstance(store, Store):
        with store.snapshot():
            yield store
        return
    with open_store(store, "r") as st, st.snapshot():
        yield st


def select_rows(st: Store, dataset: str, model: str, split: str | list[str] | None = None,
                only_done: bool = True, rows: np.ndarray | None = None) -> np.ndarray:
    """``[n]`` rows of the track table in ``split`` (one name or several) and, with ``only_done``,
    written; ``rows`` (optional) restricts to those rows, keeping their order."""
    table = st.tracks(dataset)
    keep = np.ones(len(table), dtype=bool)
    if split is not None:
        wanted = [split] if isinstance(split, str) else list(split)
        present = sorted(set(table.splits.tolist()) - {""})
        unknown = [s for s in wanted if s not in present]
        if unknown:
            raise StoreError(f"{st.path}: dataset {dataset!r} has no split {', '.join(map(repr, unknown))} "
                             f"(splits: {', '.join(present) or 'none'})")
        keep &= np.isin(table.splits, wanted)
    if only_done:
        keep &= st.done(dataset, model)
    if rows is None:
        return np.flatnonzero(keep)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
        raise StoreError(f"{st.path}: rows must lie in 0..{len(table) - 1}")
    return rows[keep[rows]]


def _embeddings(st: Store, dataset: str, model: str, X: np.ndarray, rows: np.ndarray, layers: list[int]) -> Embeddings:
    table = st.tracks(dataset)
    names = st.model_attrs(dataset, model)["layer_names"]
    return Embeddings(X=X, track_ids=table.ids[rows], labels=table.labels[rows], splits=table.splits[rows],
                      rows=rows, layer_names=[names[i] for i in layers], model=model, dataset=dataset,
                      captions=table.captions[rows], layers=layers)


def load_embeddings(store: str | Path | Store, dataset: str | None = None, model: str | None = None,
                    layer: int | str | Sequence[int | str] = -1, split: str | list[str] | None = None,
                    only_done: bool = True, rows: np.ndarray | None = None) -> Embeddings:
    """Pooled embeddings of one layer (index, negative index or name; ``X`` ``[n, dim]``), of several
    (a list; ``X`` ``[n, layers, dim]``) or of ``layer="all"`` (``X`` ``[n, layers, dim]``); several
    layers need the same width.

    ``dataset=None`` picks the only dataset (or the only one holding ``model``); ``model=None`` the
    dataset's only model. ``split`` filters by split name(s); ``only_done`` drops rows not written yet;
    ``rows`` restricts to given track-table rows. Reads only the asked layer arrays and the chunks
    holding the rows.
    """
    with _opened(store) as st:
        dataset, model = resolve_entry(st, dataset, model)
        picked = select_rows(st, dataset, model, split, only_done, rows)
        layers = layer_indices(st, dataset, model, layer)
        X = read_stacked(st, dataset, model, layers, picked, stack=not is_one_layer(layer))
        return _embeddings(st, dataset, model, X, picked, layers)


def read_stacked(st: Store, dataset: str, model: str, layers: list[int], rows: np.ndarray, stack: bool) -> np.ndarray:
    """``[n, dim]`` of ``layers[0]`` or, with ``stack``, ``[n, len(layers), dim]`` (one width), written
    in place as the layers are read; ``n = len(rows)``, the storage dtype."""
    if not stack:
        return st.read_layers(dataset, model, layers[:1], rows)[0]
    attrs = st.model_attrs(dataset, model)
    out = np.empty((len(rows), len(layers), attrs["layer_widths"][layers[0]]), dtype=attrs["storage_dtype"])
    st.read_layers(dataset, model, layers, rows, out=out)
    return out


def is_one_layer(layer: int | str | Sequence[int | str]) -> bool:
    """Whether ``layer`` names one layer (an index or a name), not a list or ``"all"``."""
    return isinstance(layer, (int, np.integer)) or (isinstance(layer, str) and layer != "all")


def layer_indices(st: Store, dataset: str, model: str, layer: int | str | Sequence[int | str]) -> list[int]:
    """Indices of ``layer``: one (an index, negative index or name), a list of them, or ``"all"``;
    several layers must share one width (they are stacked into ``[n, layers, dim]``)."""
    widths = st.model_attrs(dataset, model)["layer_widths"]
    if is_one_layer(layer):
        return [st.layer_index(dataset, model, layer)]
    if layer == "all":
        layers = list(range(len(widths)))
    else:
        layers = [st.layer_index(dataset, model, one) for one in layer]
    if not layers:
        raise StoreError(f"{st.path}: no layer asked for (give an index, a name, a list of them or 'all')")
    if len({widths[i] for i in layers}) != 1:
        raise StoreError(f"{st.path}: layers {layers} of model {model!r} differ in width "
                         f"({[widths[i] for i in layers]}); load them one at a time")
    return layers


def load_frames(store: str | Path | Store, dataset: str | None = None, model: str | None = None,
                layer: int | str = -1, split: str | list[str] | None = None,
                only_done: bool = True) -> tuple[np.ndarray, np.ndarray, Embeddings]:
    """Frame sequences of one layer stored with frames: ``(values [n, max_frames, dim],
    counts [n], meta)`` where ``meta`` is an :class:`Embeddings` whose ``X`` is ``values`` and whose
    ``frame_counts`` is ``counts``; frames past ``counts[i]`` are padding."""
    with _opened(store) as st:
        dataset, model = resolve_entry(st, dataset, model)
        picked = select_rows(st, dataset, model, split, only_done)
        index = st.layer_index(dataset, model, layer)
        values, counts = st.read_frames(dataset, model, index, picked)
        meta = _embeddings(st, dataset, model, values, picked, [index])
        meta.frame_counts = counts
        return values, counts, meta
