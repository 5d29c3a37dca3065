"""Probe result records: one JSON file per (task, dataset, model, layer, head[, preset]) kept in a
folder beside the store (``embedstore.zarr`` -> ``embedstore.zarr.results/``).

Record fields (``schema`` = :data:`RECORD_SCHEMA`):

- ``task, dataset, model``: what was probed; ``checkpoint``: the model entry's checkpoint.
- ``layer``: layer index (int) or ``"weighted"``; ``layer_name``; ``layers``: indices fed to the head.
- ``head`` (``mlp`` | ``logreg``), ``preset`` (``default`` | ``paper``; logreg: ``default``).
- ``hparams``: chosen on validation (most frequent over seeds/folds); ``runs``: per (seed, fold)
  choice, validation search and layer weights; ``selection_score``: mean validation accuracy of the
  chosen hyper-parameters, the one number every "best" (layer, model, head, reference row) is chosen
  by (:func:`choose_best`); ``selected_on``: the rows that score comes from (:data:`SELECTED_ON`).
- ``seeds``: list of seeds; ``protocol``: split scheme, validation source (``valid_source``,
  ``valid_fraction`` of a train carve-out), clips per class of each split and fold
  (``class_counts``), labelled clips in no split (``unassigned``), standardisation.
- ``metrics[split]`` for ``train``/``valid``/``test``: ``accuracy, macro_f1, per_class_recall
  [labels], confusion [labels x labels] (rows true, summed over seeds), labels, n, accuracy_std,
  macro_f1_std, per_seed, ci95 {accuracy: [lo, hi], macro_f1: [lo, hi]}``.
- ``layer_weights``: learned softmax weights ``[layers]`` (weighted head) or null.
- ``folds``: per-fold test accuracy when the dataset uses k-fold splits, else null.
- ``predictions``: test ``track_ids``, ``y_true`` and ``y_pred [seeds][n]`` as indices into
  ``metrics[split]["labels"]`` (paired tests between records use them).
- ``created`` (ISO 8601 UTC), ``embedstore_version``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from embedstore import __version__
from embedstore.errors import StoreError

RECORD_SCHEMA = "embedstore.probe/1"
#: ``selected_on`` values: the rows whose accuracy chose the hyper-parameters and ranks the record for
#: every "best". The test split is never one of them.
SELECTED_ON = {
    "valid": "valid accuracy",  # the dataset's own valid split
    "valid_fold": "valid-fold accuracy",  # k-fold: fold (i+1) mod K beside test fold i
    "train_carveout": "train carve-out accuracy",  # no valid split: a stratified share of train held out
    "train_cv": "inner-CV accuracy on train",  # no valid split: stratified k-fold CV inside train
}
RESULTS_SUFFIX = ".results"
KEY_FIELDS = ("task", "dataset", "model", "layer", "head")


def results_dir(store_path: str | Path) -> Path:
    """The results folder of a store: ``<store path>.results/`` beside it (not created here)."""
    p = Path(store_path)
    return p.with_name(p.name.rstrip("/") + RESULTS_SUFFIX)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-") or "_"


def record_filename(record: dict[str, Any]) -> str:
    """``<task>__<dataset>__<model>__L<layer>__<head>[-<preset>].json``; a non-default preset is
    part of the name so that a paper reproduction and the default protocol are kept side by side."""
    missing = [k for k in KEY_FIELDS if record.get(k) is None]
    if missing:
        raise StoreError(f"probe record: missing key field(s) {', '.join(missing)}")
    head = record["head"]
    if record.get("preset", "default") != "default":
        head = f"{head}-{record['preset']}"
    parts = [record["task"], record["dataset"], record["model"], f"L{record['layer']}", head]
    return "__".join(_slug(p) for p in parts) + ".json"


def _json_clean(value: Any) -> Any:
    """Replace NaN/inf floats with None (strict JSON) and numpy scalars with Python ones."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def selected_on(protocol: dict[str, Any]) -> str:
    """The :data:`SELECTED_ON` key of a probe's ``protocol`` (its ``valid_source`` and split scheme)."""
    source = protocol.get("valid_source", "split")
    if source == "inner":
        return "train_carveout"
    if source == "inner_cv":
        return "train_cv"
    return "valid_fold" if protocol.get("splits") == "kfold" else "valid"


def record_selected_on(record: dict[str, Any]) -> str:
    """``record["selected_on"]``, or for records written before that field, derived from its protocol."""
    return record.get("selected_on") or selected_on(record.get("protocol") or {})


def selection_score(record: dict[str, Any]) -> float | None:
    """The validation accuracy that ranks ``record`` (``selection_score``); None when it has none."""
    score = record.get("selection_score")
    return float(score) if score is not None and math.isfinite(score) else None


def choose_best(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The record with the highest :func:`selection_score` (ties: the first in order), or None when
    no record has one. Only validation scores are read: test metrics never choose."""
    best, top = None, -math.inf
    for rec in records:
        score = selection_score(rec)
        if score is not None and score > top:
            best, top = rec, score
    return best


def build_record(
    result: Any,
    *,
    task: str,
    dataset: str,
    model: str,
    layer: int | str,
    layer_name: str | None,
    layers: list[int],
    head: str,
    preset: str,
    checkpoint: str | None,
) -> dict[str, Any]:
    """The JSON record of a :class:`~embedstore.heads.protocol.ProbeResult` (fields in the module
    docstring); ``created`` and ``embedstore_version`` are filled in here."""
    return _json_clean({
        "schema": RECORD_SCHEMA,
        "task": task,
        "dataset": dataset,
        "model": model,
        "checkpoint": checkpoint,
        "layer": layer,
        "layer_name": layer_name,
        "layers": list(layers),
        "head": head,
        "preset": preset if head == "mlp" else "default",
        "hparams": result.hparams,
        "selection_score": result.selection_score,
        "selected_on": selected_on(result.protocol),
        "seeds": result.seeds,
        "protocol": result.protocol,
        "metrics": result.metrics,
        "layer_weights": result.layer_weights,
        "folds": result.folds,
        "runs": result.runs,
        "predictions": {"test": result.predictions},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embedstore_version": __version__,
    })


def save_result(store_path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically to the store's results folder, replacing the record of the same
    probe; returns the file's path."""
    folder = results_dir(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / record_filename(record)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_json_clean(record), fh, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_results(store_path: str | Path, task: str | None = None) -> list[dict[str, Any]]:
    """All probe records of a store (optionally of one task), sorted by task, dataset, model, head,
    preset and layer (ints first, then ``"weighted"``). An absent folder gives ``[]``.

    Raises:
        StoreError: a record file is not valid JSON.
    """
    folder = results_dir(store_path)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable probe record ({exc})") from None
        if task is None or rec.get("task") == task:
            out.append(rec)

    def key(r: dict[str, Any]) -> tuple:
        layer = r.get("layer")
        return (r.get("task"), r.get("dataset"), r.get("model"), r.get("head"), r.get("preset", ""),
                (0, layer, "") if isinstance(layer, int) else (1, 0, str(layer)))

    return sorted(out, key=key)
