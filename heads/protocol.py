"""The probing protocol on plain arrays: splits or k-fold, train-only standardisation, seeds,
hyper-parameter choice on validation, metrics with bootstrap CIs.

:func:`probe_arrays` is the store-free core that :func:`embedstore.heads.probe.run_probe` calls once
per (model, layer); tests call it directly on synthetic arrays.

:func:`carve_valid` is the one validation carve-out of embedstore, used when a dataset has no valid
split by the MLP probes, the caption probes and both fine-tuning paths: :data:`VALID_FRACTION` of the
training clips (rounded up), seeded, stratified by class when every class has two clips and both parts
can hold one of each (else, and for captions, which have no classes, a plain seeded random draw).
Records say so: ``protocol["valid_source"] == "inner"``, ``protocol["valid_fraction"]`` and
``selected_on == "train_carveout"``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.model_selection import train_test_split

from embedstore.errors import DatasetError, ModelError
from embedstore.heads.base import FittedHead
from embedstore.heads.metrics import bootstrap_ci, classification_metrics

if TYPE_CHECKING:
    from embedstore.store.records import ProbeRecord

HEADS = ("mlp", "logreg")
_FOLD = re.compile(r"^fold(\d+)$")
#: The share of the training clips :func:`carve_valid` holds out as validation.
VALID_FRACTION = 0.15


@dataclass(frozen=True)
class Fold:
    """Row indices of one train/valid/test partition (``valid`` is None when there is none)."""

    name: str
    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray


def make_folds(splits: Sequence[Any]) -> list[Fold]:
    """Partitions implied by a split column ``[n]``.

    - ``fold0..foldK-1``: K-fold cross-validation; fold i is the test set, fold (i+1) mod K the
      validation set, the rest train (needs K >= 3).
    - ``train``/``valid``/``test``: one partition (``valid`` optional); other values are ignored.

    Raises:
        DatasetError: no usable partition (no train or no test rows, or fewer than 3 folds).
    """
    s = np.array(["" if v is None else str(v) for v in splits], dtype=object)
    fold_ids = sorted({int(m.group(1)) for v in set(s) if (m := _FOLD.match(v))})
    if fold_ids:
        if len(fold_ids) < 3:
            raise DatasetError(f"splits: k-fold needs at least 3 folds, found {len(fold_ids)}")
        masks = [np.flatnonzero(s == f"fold{k}") for k in fold_ids]
        out = []
        for i, k in enumerate(fold_ids):
            j = (i + 1) % len(fold_ids)
            train = np.sort(np.concatenate([m for n_, m in enumerate(masks) if n_ not in (i, j)]))
            out.append(Fold(f"fold{k}", train, masks[j], masks[i]))
        return out
    train, valid, test = (np.flatnonzero(s == name) for name in ("train", "valid", "test"))
    found = sorted(set(s) - {""})
    if not len(train) or not len(test):
        raise DatasetError(f"splits: need 'train' and 'test' rows (or fold0..foldK-1), found {found or 'none'}")
    return [Fold("split", train, valid if len(valid) else None, test)]


def stratified_subset(labels: Sequence[Any], n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Pick ``n`` of ``len(labels)`` positions, seeded: ``(rest, picked)``, both sorted lists of int.

    Stratified by ``labels`` (each class keeps its share) when every class has two items and both
    parts can hold one of each class; plain random otherwise. ``n >= len(labels)`` picks everything.
    """
    if n >= len(labels):
        return [], list(range(len(labels)))
    counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)[1]
    strat = labels if counts.min() >= 2 and min(n, len(labels) - n) >= len(counts) else None
    rest, picked = train_test_split(list(range(len(labels))), test_size=n, random_state=seed, stratify=strat)
    return sorted(rest), sorted(picked)


def carve_valid(labels: Sequence[Any] | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a validation share of a training split (the rule in the module docstring).

    Args:
        labels: the class of each training clip ``[n]``, or the number of clips ``n`` when they have
            no classes (captions). seed: fixes the draw.

    Returns:
        ``(train, valid)`` positions into the ``n`` clips (sorted int64 arrays): ``valid`` holds
        ``ceil(VALID_FRACTION * n)`` of them, ``train`` the rest.

    Raises:
        DatasetError: fewer than 2 training clips.
    """
    classes = [""] * labels if isinstance(labels, int) else list(labels)
    if len(classes) < 2:
        raise DatasetError(f"{len(classes)} train clip(s): too few to hold out a validation set")
    rest, picked = stratified_subset(classes, math.ceil(VALID_FRACTION * len(classes)), seed)
    return np.asarray(rest, dtype=np.int64), np.asarray(picked, dtype=np.int64)


def standardise(X_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score every array with the mean and std of ``X_train`` along axis 0 (per feature, and per
    layer for ``[n, layers, dim]``); constant features get std 1. Returns float32 arrays in order
    ``[train, *others]``."""
    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return [((x - mean) / std).astype(np.float32) for x in (X_train, *others)]


@dataclass
class ProbeResult:
    """Outcome of one probe (one model, one layer or the weighted stack, one head).

    Attributes:
        labels: class values in code order.
        metrics: per split (``train``, ``valid`` when present, ``test``) the dict of
            :func:`~embedstore.heads.metrics.classification_metrics` with, over seeds,
            ``accuracy``/``macro_f1``/``per_class_recall`` averaged, ``confusion`` summed, plus
            ``accuracy_std``, ``macro_f1_std`` (sample std over seeds, 0 for one seed),
            ``per_seed`` and ``ci95`` (bootstrap over clips of the seed-mean statistic).
        hparams: the most frequent choice over seeds and folds (``epochs`` as the median).
        runs: one entry per (seed, fold): seed, fold, chosen hparams, validation search, layer weights.
        selection_score: mean validation accuracy of the chosen candidates (used by ``layer="best"``).
        layer_weights: mean learned softmax layer weights ``[layers]`` (weighted head), else None.
        folds: per fold ``{"fold", "n_test", "test_accuracy"}`` when k-fold, else None.
        protocol: how splits, validation and standardisation were done: ``splits``, ``valid_source``
            (``split`` | ``inner`` carve-out | ``inner_cv``), ``valid_fraction`` (the carved share of
            train, else None), ``class_counts`` ``{role: [[clips per class] per fold]}`` (the clips
            each role actually used, classes in ``labels`` order), ``unassigned`` ``{split value:
            clips}`` (labelled clips in no split, unused).
        predictions: test ``{"track_ids", "y_true" [n] codes, "y_pred" [seeds, n] codes}``.
    """

    labels: list[Any]
    metrics: dict[str, dict[str, Any]]
    hparams: dict[str, Any]
    runs: list[dict[str, Any]]
    seeds: list[int]
    selection_score: float
    layer_weights: list[float] | None = None
    folds: list[dict[str, Any]] | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, Any] = field(default_factory=dict)

    def record(self, *, task: str, dataset: str, model: str, layer: int | str, layer_name: str | None,
               layers: list[int], head: str, preset: str, checkpoint: str | None) -> ProbeRecord:
        """The result record of this probe (:class:`~embedstore.store.records.ProbeRecord`) for the
        given key; only the MLP keeps its ``preset`` (other heads have ``default``)."""
        from embedstore.store.records import ProbeRecord

        return ProbeRecord(
            task=task, dataset=dataset, model=model, checkpoint=checkpoint, layer=layer, layer_name=layer_name,
            layers=list(layers), head=head, preset=preset if head == "mlp" else "default", hparams=self.hparams,
            selection_score=self.selection_score, seeds=self.seeds, protocol=self.protocol, metrics=self.metrics,
            layer_weights=self.layer_weights, folds=self.folds, runs=self.runs,
            predictions={"test": self.predictions},
        )


def _run_fold(head: str, preset: str, X: np.ndarray, y: np.ndarray, idx: dict[str, np.ndarray],
              n_classes: int, seed: int, device: str) -> tuple[FittedHead, dict[str, np.ndarray]]:
    """Fit one head on ``idx["train"]`` (choosing hparams on ``idx["valid"]``, which may be empty)
    and predict every role's rows. Returns ``(fitted, {role: class codes [len(idx[role])]})``."""
    feats = {role: X[rows] for role, rows in idx.items()}
    has_valid = len(idx["valid"]) > 0
    if head == "logreg":  # the sklearn pipeline standardises with train statistics itself
        from embedstore.heads.logreg import fit_logreg

        fitted = fit_logreg(feats["train"], y[idx["train"]], feats["valid"] if has_valid else None,
                            y[idx["valid"]] if has_valid else None, seed=seed)
    else:
        from embedstore.heads.mlp import fit_mlp, mlp_config

        feats = dict(zip(feats, standardise(feats["train"], *feats.values())[1:]))
        fitted = fit_mlp(feats["train"], y[idx["train"]], feats["valid"], y[idx["valid"]], n_classes,
                         config=mlp_config(preset), seed=seed, device=device)
    return fitted, {role: fitted.predict(f) if len(f) else np.empty(0, np.int64) for role, f in feats.items()}


def _partition(folds: list[Fold], y: np.ndarray, head: str, seed: int) -> tuple[dict[str, list[np.ndarray]], str]:
    """Per fold the train/valid/test rows actually used: without a validation split the MLP holds
    out :func:`carve_valid`'s share of train and logreg gets an empty valid (inner CV). Returns
    ``({role: [rows per fold]}, valid_source)``."""
    roles: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    source = "split"
    for f in folds:
        train, valid = f.train, f.valid
        if valid is None and head == "mlp":
            source = "inner"
            keep, held = carve_valid(y[train], seed)
            train, valid = train[keep], train[held]
        elif valid is None:
            source, valid = "inner_cv", np.empty(0, dtype=np.int64)
        roles["train"].append(train)
        roles["valid"].append(valid)
        roles["test"].append(f.test)
    return roles, source


def _class_counts(roles: dict[str, list[np.ndarray]], y: np.ndarray, n_classes: int) -> dict[str, list[list[int]]]:
    """Clips per class of each role and fold: ``{role: [[count per class code] per fold]}``."""
    return {role: [np.bincount(y[r], minlength=n_classes).tolist() for r in rows] for role, rows in roles.items()}


def _unassigned(split_values: np.ndarray, roles: dict[str, list[np.ndarray]]) -> dict[str, int]:
    """Labelled rows that no fold uses, counted by their split value: ``{split value: clips}``."""
    used = np.zeros(len(split_values), dtype=bool)
    for rows in roles.values():
        for r in rows:
            used[r] = True
    return dict(Counter(split_values[~used].tolist()))


def _summarise_hparams(chosen: list[dict[str, Any]]) -> dict[str, Any]:
    fixed = [{k: v for k, v in h.items() if k != "epochs"} for h in chosen]
    mode = json.loads(Counter(json.dumps(h, sort_keys=True) for h in fixed).most_common(1)[0][0])
    if any("epochs" in h for h in chosen):
        mode["epochs"] = float(np.median([h["epochs"] for h in chosen]))
    return mode


def split_metrics(y_true: np.ndarray, preds: np.ndarray, labels: list[Any], n_boot: int, seed: int) -> dict:
    """Metrics of ``preds [seeds, n]`` (codes) against ``y_true [n]`` (codes), aggregated over seeds."""
    codes = list(range(len(labels)))
    per = [classification_metrics(y_true, p, codes) for p in preds]
    ddof = 1 if len(per) > 1 else 0
    out = {
        "accuracy": float(np.mean([m["accuracy"] for m in per])),
        "macro_f1": float(np.mean([m["macro_f1"] for m in per])),
        "per_class_recall": np.mean([m["per_class_recall"] for m in per], axis=0).tolist(),
        "confusion": np.sum([m["confusion"] for m in per], axis=0).astype(int).tolist(),
        "labels": list(labels),
        "n": int(len(y_true)),
        "accuracy_std": float(np.std([m["accuracy"] for m in per], ddof=ddof)),
        "macro_f1_std": float(np.std([m["macro_f1"] for m in per], ddof=ddof)),
        "per_seed": {k: [m[k] for m in per] for k in ("accuracy", "macro_f1")},
        "ci95": bootstrap_ci(y_true, preds, n_boot=n_boot, seed=seed),
    }
    return out


def probe_arrays(
    X: np.ndarray,
    labels: Sequence[Any],
    splits: Sequence[Any],
    *,
    head: str = "mlp",
    preset: str = "default",
    seeds: int = 1,
    seed: int = 0,
    device: str = "cpu",
    track_ids: Sequence[Any] | None = None,
    n_boot: int = 1000,
) -> ProbeResult:
    """Train and evaluate one probe on in-memory features.

    Args:
        X: features ``[n, dim]`` (one layer) or ``[n, layers, dim]`` (the weighted-layer MLP).
        labels: class value per row ``[n]``; rows whose label is None or "" are dropped.
        splits: split per row ``[n]`` (``train``/``valid``/``test`` or ``fold0..foldK-1``).
        head: ``mlp`` or ``logreg``. preset: MLP preset (``default`` | ``paper``).
        seeds: number of repeats with seeds ``seed, seed+1, ...``.
        device: torch device for the MLP. track_ids: row ids ``[n]`` kept with the test predictions.
        n_boot: bootstrap resamples for the CIs.

    Features are standardised with train-split statistics only (inside the sklearn pipeline for
    logreg). With no validation split, the MLP holds out :func:`carve_valid`'s 15 % of train (fixed
    by ``seed``, the same for every repeat) and logreg picks C by stratified 3-fold CV on train.

    Raises:
        ModelError: unknown head, or ``logreg`` on ``[n, layers, dim]``.
        DatasetError: no labelled rows or no usable splits.
    """
    X, y, classes, ids, split_values = _labelled_rows(X, labels, splits, track_ids, head)
    folds = make_folds(split_values)
    roles, valid_source = _partition(folds, y, head, seed)
    seed_list = [seed + s for s in range(seeds)]
    preds, runs, fold_acc = _fit_all(head, preset, X, y, folds, roles, len(classes), seed_list, device)
    metrics = {}
    for role, idx in roles.items():
        rows = np.concatenate(idx)
        if len(rows):
            metrics[role] = split_metrics(y[rows], preds[role], classes, n_boot, seed)
    test_rows = np.concatenate(roles["test"])
    weights = None
    if runs[0]["layer_weights"] is not None:
        weights = np.mean([r["layer_weights"] for r in runs], axis=0).tolist()
    scores = [r["valid_accuracy"] for r in runs]
    return ProbeResult(
        labels=classes,
        metrics=metrics,
        hparams=_summarise_hparams([r["hparams"] for r in runs]),
        runs=runs,
        seeds=seed_list,
        selection_score=float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan"),
        layer_weights=weights,
        folds=[{"fold": f.name, "n_test": int(len(f.test)), "test_accuracy": float(fold_acc[:, i].mean())}
               for i, f in enumerate(folds)] if len(folds) > 1 else None,
        protocol={
            "splits": "kfold" if len(folds) > 1 else "train/valid/test",
            "n_folds": len(folds) if len(folds) > 1 else None,
            "valid_source": valid_source,
            "valid_fraction": VALID_FRACTION if valid_source == "inner" else None,
            "class_counts": _class_counts(roles, y, len(classes)),
            "unassigned": _unassigned(split_values, roles),
            "standardise": "train-split mean/std",
            "test_on_valid_fold": "(i+1) mod K" if len(folds) > 1 else None,
            "confusion": "counts summed over seeds",
            "n_boot": n_boot,
        },
        predictions={
            "track_ids": [_plain(v) for v in ids[test_rows]],
            "y_true": y[test_rows].tolist(),
            "y_pred": preds["test"].tolist(),
        },
    )


def _labelled_rows(X: Any, labels: Sequence[Any], splits: Sequence[Any], track_ids: Sequence[Any] | None,
                   head: str) -> tuple[np.ndarray, np.ndarray, list[Any], np.ndarray, np.ndarray]:
    """The labelled rows of :func:`probe_arrays`' inputs (rows whose label is None or "" dropped).

    Returns:
        ``X [m, dim]`` or ``[m, layers, dim]`` (float32 unless float64), class codes ``y [m]`` (int64),
        the sorted class values, row ids ``[m]`` (``track_ids`` or the kept row indices) and the
        split names ``[m]`` (str, "" for None).

    Raises:
        ModelError: unknown head, or a head other than ``mlp`` on ``[n, layers, dim]``.
        DatasetError: no labelled rows.
    """
    if head not in HEADS:
        raise ModelError(f"--head {head!r}: unknown; choose one of {', '.join(HEADS)}")
    X = np.asarray(X)
    if X.dtype != np.float64:
        X = X.astype(np.float32, copy=False)  # float16 stores are probed in float32
    if X.ndim == 3 and head != "mlp":
        raise ModelError("--layer weighted: needs --head mlp (the learned layer weights feed the MLP)")
    lab = np.array([None if v is None or v == "" else v for v in labels], dtype=object)
    keep = np.flatnonzero(lab != None)  # noqa: E711 - elementwise comparison on an object array
    if not len(keep):
        raise DatasetError("labels: no labelled rows to probe")
    lab = lab[keep]
    ids = np.asarray(track_ids, dtype=object)[keep] if track_ids is not None else keep
    classes = sorted(set(lab.tolist()), key=str)
    code_of = {c: i for i, c in enumerate(classes)}
    y = np.array([code_of[v] for v in lab], dtype=np.int64)
    split_values = np.array(["" if v is None else str(v) for v in np.asarray(list(splits), dtype=object)[keep]],
                            dtype=object)
    return X[keep], y, classes, ids, split_values


def _fit_all(head: str, preset: str, X: np.ndarray, y: np.ndarray, folds: list[Fold], roles: dict[str, list],
             n_classes: int, seed_list: list[int], device: str) -> tuple[dict[str, np.ndarray], list[dict], np.ndarray]:
    """Train and predict one probe per (seed, fold).

    ``roles``: row indices per role (``train``/``valid``/``test``) and fold, as from :func:`_partition`.

    Returns:
        The predicted codes per role ``[seeds, rows of the role over all folds]`` (int64, folds in
        order), one run dict per (seed, fold) (``seed, fold, hparams, search, valid_accuracy,
        layer_weights``), and the test accuracy per seed and fold ``[seeds, folds]``.
    """
    seeds = len(seed_list)
    preds = {role: np.zeros((seeds, sum(map(len, rows))), dtype=np.int64) for role, rows in roles.items()}
    runs: list[dict[str, Any]] = []
    fold_acc = np.zeros((seeds, len(folds)))
    for si, s in enumerate(seed_list):
        offsets = dict.fromkeys(roles, 0)
        for fi, f in enumerate(folds):
            idx = {role: rows[fi] for role, rows in roles.items()}
            fitted, fold_preds = _run_fold(head, preset, X, y, idx, n_classes, s, device)
            for role, p in fold_preds.items():
                preds[role][si, offsets[role] : offsets[role] + len(p)] = p
                offsets[role] += len(p)
            fold_acc[si, fi] = np.mean(fold_preds["test"] == y[idx["test"]])
            runs.append({"seed": s, "fold": f.name, "hparams": fitted.hparams, "search": fitted.search,
                         "valid_accuracy": fitted.valid_score, "layer_weights": fitted.layer_weights})
    return preds, runs, fold_acc


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
