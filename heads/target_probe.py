"""Probes for tagging and regression tasks on stored embeddings: :func:`run_target_probe`.

The targets are a dataset's ``targets`` attribute (raw text per track id, written at extraction from
a manifest column; see :class:`~embedstore.extract.datasets.base.Dataset`). Per layer and seed the
features are standardised with train statistics (regression targets too), the head's hyper-parameters
are chosen on validation (the dataset's valid split, else a carve-out of train,
:func:`~embedstore.heads.protocol.carve_valid`), and metrics are computed on the seed-mean predictions
with bootstrap intervals. ``--layer best`` keeps the layer with the best validation score (macro ROC-AUC
for tags, R² for regression); test metrics never choose.
"""

from __future__ import annotations

import warnings as _warnings
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import DatasetError, ModelError, StoreError
from embedstore.heads.metrics import regression_metrics, tagging_metrics
from embedstore.heads.protocol import VALID_FRACTION, carve_valid, standardise
from embedstore.heads.tagging import tag_matrix
from embedstore.store.records import RegressRecord, TagRecord, choose_best, save_record
from embedstore.store.specs import dataset_tasks, resolve_dataset, resolve_layers, resolve_models

#: column kind in a dataset's ``tasks`` -> task kind
COLUMN_KINDS = {"tags": "tag", "number": "regress"}
#: the linear head of each kind (``--head logreg``)
LINEAR_HEAD = {"tag": "logreg", "regress": "ridge"}
SCORE = {"tag": "macro_auc", "regress": "r2"}


def _targets(st: Any, ds: str, task: str, kind: str, track_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(has target [n] bool, Y, tag names)`` for ``track_ids``: ``Y`` ``[n, tags]`` 0/1 (tag) or ``[n]``
    float (regress; NaN where missing)."""
    entry = (st.dataset_attrs(ds).get("targets") or {}).get(task)
    if entry is None:
        raise StoreError(f"--task {task!r}: dataset {ds!r} stores no target values for it (re-extract from its manifest)")
    raw = [entry["values"].get(str(t), "") for t in track_ids.tolist()]
    has = np.array([bool(v) for v in raw])
    if kind == "tag":
        Y, tags = tag_matrix(raw, entry.get("separator", ";"))
        return has, Y, tags
    try:
        y = np.array([float(v) if v else np.nan for v in raw])
    except ValueError as exc:
        raise StoreError(f"--task-kind regress: column {task!r} of dataset {ds!r} is not numeric ({exc})") from None
    return has, y, []


def _roles(splits: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """Row positions of ``train``/``valid``/``test`` and the validation source (``split`` | ``inner``)."""
    names = set(splits.tolist())
    if any(s.startswith("fold") for s in names):
        raise DatasetError("tagging and regression probes need train/valid/test splits, not folds "
                           "(extract with --split-scheme random or random-val)")
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    if not len(train) or not len(test):
        raise DatasetError(f"need train and test clips with targets (have {len(train)} train, {len(test)} test)")
    valid = np.flatnonzero(splits == "valid")
    if len(valid):
        return {"train": train, "valid": valid, "test": test}, "split"
    rest, held = carve_valid(len(train), seed)
    return {"train": train[rest], "valid": train[held], "test": test}, "inner"


def _fit(kind: str, head: str, Xs: list[np.ndarray], Ys: list[np.ndarray], preset: str, seed: int, device: str) -> Any:
    if head == "mlp":
        from embedstore.heads.mlp import mlp_config
        from embedstore.heads.target_mlp import fit_target_mlp

        return fit_target_mlp(Xs[0], Ys[0], Xs[1], Ys[1], kind, config=mlp_config(preset), seed=seed, device=device)
    if kind == "tag":
        from embedstore.heads.tagging import fit_tag_linear

        return fit_tag_linear(Xs[0], Ys[0], Xs[1], Ys[1], seed=seed)
    from embedstore.heads.regression import fit_ridge

    return fit_ridge(Xs[0], Ys[0], Xs[1], Ys[1])


def _metrics(kind: str, truth: np.ndarray, preds: list[np.ndarray], tags: list[str], n_boot: int) -> dict[str, Any]:
    """Metrics of the seed-mean prediction (``n_boot`` bootstrap resamples for the intervals) plus each
    seed's headline numbers."""
    fn = (lambda t, p, **kw: tagging_metrics(t, p, tags, **kw)) if kind == "tag" else regression_metrics
    out = fn(truth, np.mean(preds, axis=0), n_boot=n_boot)
    keys = ("macro_auc", "macro_ap") if kind == "tag" else ("r2", "mae", "pearson_r")
    out["per_seed"] = [{k: v for k, v in fn(truth, p, n_boot=0).items() if k in keys} for p in preds]
    return out


def probe_layer(X: np.ndarray, Y: np.ndarray, splits: np.ndarray, *, kind: str, head: str, preset: str, seeds: int,
                device: str, tags: list[str], n_boot: int = 1000) -> dict[str, Any]:
    """One probe: ``X`` ``[n, dim]``, ``Y`` ``[n, tags]`` or ``[n]``, ``splits`` ``[n]``. Returns the
    record fields ``metrics, hparams, selection_score, protocol, runs`` (and ``target_scaling``);
    bootstrap intervals (``n_boot`` resamples) on test only: validation only chooses."""
    roles, source = _roles(splits, 0)
    order = ("train", "valid", "test")
    Ys = [Y[roles[r]] for r in order]
    scaling: dict[str, float] = {}
    if kind == "regress":
        mean, std = float(Ys[0].mean()), float(Ys[0].std()) or 1.0
        Ys = [(y - mean) / std for y in Ys]
        scaling = {"mean": mean, "std": std}
    Xs = standardise(*[X[roles[r]] for r in order])
    preds: dict[str, list[np.ndarray]] = {"valid": [], "test": []}
    runs = []
    for seed in range(seeds):
        fitted = _fit(kind, head, Xs, Ys, preset, seed, device)
        for i, role in ((1, "valid"), (2, "test")):
            p = fitted.predict(Xs[i])
            preds[role].append(p * scaling["std"] + scaling["mean"] if scaling else p)
        runs.append({"seed": seed, "hparams": fitted.hparams, "search": fitted.search})
    truth = {"valid": Y[roles["valid"]], "test": Y[roles["test"]]}
    metrics = {role: _metrics(kind, truth[role], preds[role], tags, n_boot if role == "test" else 0)
               for role in preds}
    return {"metrics": metrics, "hparams": runs[0]["hparams"], "runs": runs,
            "selection_score": metrics["valid"][SCORE[kind]], "target_scaling": scaling,
            "protocol": {"valid_source": source, "splits": "split", "n": {r: int(len(roles[r])) for r in order},
                         **({"valid_fraction": VALID_FRACTION} if source == "inner" else {})}}


def task_kind_of(st: Any, task: str, datasets: list[str]) -> str | None:
    """``tag``/``regress`` when ``task`` is a tagging/regression column of one of ``datasets``, else None."""
    kinds = {COLUMN_KINDS.get(dataset_tasks(st, ds).get(task, "")) for ds in datasets} - {None}
    return kinds.pop() if len(kinds) == 1 else None


def _entry_records(st: Any, ds: str, model: str, *, task: str, kind: str, layer: int | str, head: str, preset: str,
                   seeds: int, device: str, notes: list[str], n_boot: int) -> list[Any]:
    """One record per layer of ``layer`` for one model entry (``notes`` collects warnings)."""
    from embedstore.store import load_embeddings

    attrs = st.model_attrs(ds, model)
    names = [str(n) for n in attrs["layer_names"]]
    picked = resolve_layers(layer, names, model=model, words=("all", "best"))
    cls = TagRecord if kind == "tag" else RegressRecord
    head_name = head if head == "mlp" else LINEAR_HEAD[kind]
    records = []
    for li in picked.indices:
        emb = load_embeddings(st, dataset=ds, model=model, layer=li)
        has, Y, tags = _targets(st, ds, task, kind, emb.track_ids)
        found = probe_layer(emb.X[has], Y[has], emb.splits[has], kind=kind, head=head, preset=preset, seeds=seeds,
                            device=device, tags=tags, n_boot=n_boot)
        for split, m in found["metrics"].items():
            for tag in m.get("excluded", []):
                notes.append(f"{ds}/{model}: tag {tag!r} has no positive (or no negative) {split} clip; "
                             "left out of the macro averages")
        extra = {"tags": tags} if kind == "tag" else {"target_scaling": found["target_scaling"]}
        records.append(cls(task=task, dataset=ds, model=model, layer=li, layer_name=names[li], layers=[li],
                           head=head_name, preset=preset, checkpoint=attrs.get("checkpoint"),
                           hparams=found["hparams"], seeds=list(range(seeds)),
                           selection_score=found["selection_score"], protocol=found["protocol"],
                           metrics=found["metrics"], runs=found["runs"], **extra))
    if layer == "best":
        best = choose_best(records)
        if best is None:
            raise DatasetError(f"--layer best: no validation score for {ds}/{model} to choose a layer by")
        best.layer_selection = {"by": SCORE[kind], "selected_on": best.selected_on,
                                "scores": {str(r.layer): r.selection_score for r in records}}
        return [best]
    return records


def run_target_probe(store_path: str | Path, task: str, *, kind: str | None = None, models: list[str] | None = None,
                     dataset: str | None = None, layer: int | str = "all", head: str = "mlp",
                     preset: str = "default", seeds: int = 1, device: str = "auto", n_boot: int = 1000
                     ) -> tuple[list[Any], list[Path], list[str]]:
    """Probe the tagging/regression task ``task`` (a stored target column) on every chosen dataset,
    model and layer; saves and returns ``(records, paths, warnings)``.

    Args:
        kind: ``tag`` | ``regress``; None: the column's stored kind. head: ``mlp`` or ``logreg`` (the
            linear head: one-vs-rest logistic regression for tags, ridge for regression).
        layer: an index, a name, ``all`` or ``best`` (chosen on validation).
        n_boot: bootstrap resamples of the test intervals.

    Raises:
        StoreError: no dataset has ``task``; ModelError: a bad head, seeds or layer;
        DatasetError: splits without train/test clips, or k-fold splits.
    """
    from embedstore.devices import resolve_device
    from embedstore.store import open_store

    if head not in ("mlp", "logreg"):
        raise ModelError(f"--head {head!r}: tagging and regression take mlp or logreg")
    if seeds < 1:
        raise ModelError(f"--seeds {seeds}: must be at least 1")
    if layer == "weighted":
        raise ModelError("--layer weighted: not available for tagging and regression yet; use all or best")
    records, paths, notes = [], [], []
    with open_store(store_path, mode="r") as st:
        names = [resolve_dataset(st, dataset)] if dataset is not None else list(st.datasets())
        names = [ds for ds in names if dataset_tasks(st, ds).get(task) in COLUMN_KINDS]
        if not names:
            raise StoreError(f"--task {task!r}: no dataset in the store has it as a tagging or regression column")
        kind = kind or task_kind_of(st, task, names)
        if kind not in ("tag", "regress"):
            raise ModelError(f"--task-kind: {task!r} is stored with different kinds; state tag or regress")
        dev = str(resolve_device(device))
        for ds in names:
            for model in resolve_models(st, ds, models):
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore", category=UserWarning)  # sklearn: single-class tags, noted below
                    found = _entry_records(st, ds, model, task=task, kind=kind, layer=layer, head=head, preset=preset,
                                           seeds=seeds, device=dev, notes=notes, n_boot=n_boot)
                records += found
    paths = [save_record(store_path, rec) for rec in records]
    for note in dict.fromkeys(notes):
        _warnings.warn(note, stacklevel=2)
    return records, paths, list(dict.fromkeys(notes))


def format_target_table(records: list[Any]) -> str:
    """One line per record: dataset/model, layer, head, then the test headline numbers with 95% CIs
    and the validation score that ranks it."""
    lines = []
    for r in records:
        test, kind = r.metrics["test"], "tag" if isinstance(r, TagRecord) else "regress"
        keys = ("macro_auc", "macro_ap") if kind == "tag" else ("r2", "mae", "pearson_r")
        cells = []
        for k in keys:
            ci = test["ci95"].get(k)
            value = test[k]
            cells.append(f"{k} {'n/a' if value is None else f'{value:.3f}'}"
                         + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        score = "n/a" if r.selection_score is None else f"{r.selection_score:.3f}"
        lines.append(f"{r.dataset}/{r.model} L{r.layer} {r.head}: " + ", ".join(cells)
                     + f" (valid {SCORE[kind]} {score}, on {r.selected_on})")
    return "\n".join(lines)
