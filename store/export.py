"""``embedstore export``: one model entry's embeddings, with their track metadata, in files other tools read.

Formats (:data:`EXPORT_FORMATS`):

- ``npz`` (numpy, always available): arrays ``X`` (``[n, dim]`` for one layer, ``[n, layers, dim]``
  for several; the stored dtype), ``track_ids``, ``labels``, ``splits``, ``captions`` (unicode, so
  ``np.load(..., allow_pickle=False)`` reads them), ``rows`` (int64 rows of the store's track table),
  ``layers`` (int64 layer indices), ``layer_names``, and the 0-d strings ``model``, ``dataset``.
- ``parquet`` (``pip install 'embedstore[parquet]'``, pyarrow): one row per clip with columns
  ``track_id, label, split, caption, row`` and ``embedding`` (a fixed-size list of the stored float
  type, nested once more for several layers); ``model, dataset, layers, layer_names`` in the schema
  metadata (key ``embedstore``, JSON).
- ``hf`` (``pip install 'embedstore[hf]'``, Hugging Face ``datasets``): the same table as a
  ``datasets.Dataset`` saved with ``save_to_disk`` (a folder; ``datasets.load_from_disk`` reads it),
  the metadata in its ``info.description``.

Rows are the written (``done``) rows of the split asked for, in track-table order, as
:func:`~embedstore.store.load.load_embeddings` returns them.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import StoreError, not_one_of
from embedstore.store.load import Embeddings, load_embeddings

EXPORT_FORMATS = ("npz", "parquet", "hf")
#: the extra that installs each optional format's library
_EXTRA = {"parquet": ("pyarrow", "parquet"), "hf": ("datasets", "hf")}


def _require(fmt: str) -> Any:
    """The module ``fmt`` needs, or a one-line StoreError naming the extra that installs it."""
    module, extra = _EXTRA[fmt]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StoreError(f"--format {fmt} needs {module}: pip install 'embedstore[{extra}]'") from None


def export_embeddings(store: str | Path, out: str | Path | None = None, *, fmt: str = "npz", dataset: str | None = None,
                      model: str | None = None, layer: int | str | Sequence[int | str] = -1,
                      split: str | list[str] | None = None) -> Path:
    """Write the embeddings of ``layer`` (see :func:`~embedstore.store.load.load_embeddings`) of
    ``model`` in ``dataset``, rows of ``split`` (default all), to ``out`` as ``fmt`` (default
    ``<store>.<model>.L<layer>[.<split>].<fmt>`` beside the store; hf: no suffix); returns the path.

    Raises:
        StoreError: an unknown ``fmt``, a missing optional library (naming the extra), ``out``
            already existing as a folder for npz/parquet, or what ``load_embeddings`` raises.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(not_one_of("--format", fmt, EXPORT_FORMATS, "export format"))
    lib = _require(fmt) if fmt in _EXTRA else None  # before the store is read
    if out is not None and fmt != "hf" and Path(out).is_dir():
        raise StoreError(f"--out {out}: is a folder; give a file name (e.g. {Path(out) / ('embeddings.' + fmt)})")
    emb = load_embeddings(store, dataset=dataset, model=model, layer=layer, split=split)
    if out is None:
        parts = [Path(store).name, emb.model, f"L{layer}"] + ([split] if isinstance(split, str) else [])
        out = Path(store).with_name(".".join(parts) + ("" if fmt == "hf" else f".{fmt}"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        np.savez(out, **_npz_arrays(emb))
        return out
    table = arrow_table(emb)
    if fmt == "parquet":
        importlib.import_module("pyarrow.parquet").write_table(table, out)
    else:
        ds = lib.Dataset(table, info=lib.DatasetInfo(description=json.dumps(_metadata(emb))))
        ds.save_to_disk(str(out))
    return out


def _metadata(emb: Embeddings) -> dict[str, Any]:
    return {"model": emb.model, "dataset": emb.dataset, "layers": [int(i) for i in emb.layers],
            "layer_names": list(emb.layer_names), "shape": list(emb.X.shape[1:]), "dtype": str(emb.X.dtype)}


def _npz_arrays(emb: Embeddings) -> dict[str, np.ndarray]:
    text = lambda values: np.asarray([str(v) for v in values], dtype=np.str_)  # noqa: E731
    return {"X": emb.X, "track_ids": text(emb.track_ids), "labels": text(emb.labels), "splits": text(emb.splits),
            "captions": text(emb.captions), "rows": np.asarray(emb.rows, dtype=np.int64),
            "layers": np.asarray(emb.layers, dtype=np.int64), "layer_names": text(emb.layer_names),
            "model": np.str_(emb.model), "dataset": np.str_(emb.dataset)}


def arrow_table(emb: Embeddings) -> Any:
    """A ``pyarrow.Table`` of ``emb``: one row per clip, ``embedding`` a fixed-size list ``[dim]``
    (``[layers][dim]`` for several layers) of the stored float type, metadata under ``embedstore``."""
    pa = _require("parquet")
    X = np.ascontiguousarray(emb.X)
    embedding = pa.array(X.reshape(-1))
    for size in reversed(X.shape[1:]):
        embedding = pa.FixedSizeListArray.from_arrays(embedding, size)
    columns = {"track_id": [str(v) for v in emb.track_ids], "label": [str(v) for v in emb.labels],
               "split": [str(v) for v in emb.splits], "caption": [str(v) for v in emb.captions],
               "row": pa.array(np.asarray(emb.rows, dtype=np.int64)), "embedding": embedding}
    return pa.table(columns, metadata={"embedstore": json.dumps(_metadata(emb))})
