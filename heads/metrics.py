"""Classification metrics, bootstrap confidence intervals and paired tests.

Used by the probe heads and reused by fine-tuning. Headline numbers come from
:mod:`sklearn.metrics`; the bootstrap uses a vectorised confusion-matrix computation that gives the
same accuracy and macro-F1 as sklearn on every resample (macro-F1 averages over the classes present
in the resample's true or predicted labels, as ``sklearn.metrics.f1_score(average="macro")`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

BOOTSTRAP_METRICS = ("accuracy", "macro_f1")


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]) -> dict:
    """Accuracy, macro-F1, per-class recall and confusion matrix of one set of predictions.

    Args:
        y_true: true labels ``[n]`` (any hashable values, e.g. strings).
        y_pred: predicted labels ``[n]``, same value space.
        labels: the class order used for ``per_class_recall`` and ``confusion``.

    Returns:
        ``{"accuracy": float, "macro_f1": float, "per_class_recall": [n_labels] floats (0 for a class
        absent from y_true), "confusion": [n_labels, n_labels] ints (rows true, columns predicted),
        "labels": list, "n": int}``. Macro-F1 averages over the classes present in ``y_true`` or
        ``y_pred`` (sklearn's default).
    """
    labels = list(labels)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    if len(y_true) == 0:
        raise ValueError("classification_metrics needs at least one example")
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class_recall": [
            float(r) for r in recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        ],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
        "labels": [_jsonable(v) for v in labels],
        "n": int(len(y_true)),
    }


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def encode_labels(y_true: Sequence[Any], *y_preds: Any) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Map label values to integer codes shared by ``y_true`` and every prediction array.

    Returns ``(true_codes [n], [pred_codes [...]], n_codes)``.
    """
    y_true = np.asarray(y_true)
    allv = np.concatenate([y_true.ravel(), *[np.asarray(p).ravel() for p in y_preds]])
    uniq, inv = np.unique(allv, return_inverse=True)
    t = inv[: y_true.size].reshape(y_true.shape)
    out, pos = [], y_true.size
    for p in y_preds:
        p = np.asarray(p)
        out.append(inv[pos : pos + p.size].reshape(p.shape))
        pos += p.size
    return t, out, len(uniq)


def _batched_scores(t: np.ndarray, p: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 of many resamples at once.

    Args:
        t: true codes ``[B, n]``; p: predicted codes ``[B, n]``.

    Returns:
        ``{"accuracy": [B], "macro_f1": [B]}``.
    """
    b = t.shape[0]
    code = (np.arange(b)[:, None] * n_classes + t) * n_classes + p
    conf = np.bincount(code.ravel(), minlength=b * n_classes * n_classes).reshape(b, n_classes, n_classes)
    tp = np.diagonal(conf, axis1=1, axis2=2).astype(float)
    denom = conf.sum(axis=2) + conf.sum(axis=1)  # support_true + support_pred = 2TP + FP + FN
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return {
        "accuracy": tp.sum(axis=1) / t.shape[1],
        "macro_f1": f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1),
    }


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _seed_mean_scores(t: np.ndarray, p: np.ndarray, idx: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Scores of each resample ``idx [B, n]``, averaged over the seeds of ``p [S, n]`` -> ``{name: [B]}``."""
    sums: dict[str, np.ndarray] = {}
    for s in range(p.shape[0]):
        sc = _batched_scores(t[idx], p[s][idx], n_classes)
        for k, v in sc.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / p.shape[0] for k, v in sums.items()}


def bootstrap_ci(
    y_true: Sequence[Any],
    y_pred: Any,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals of accuracy and macro-F1.

    Clips are resampled with replacement ``n_boot`` times (seeded, so the result is reproducible).

    Args:
        y_true: true labels ``[n]``.
        y_pred: predictions ``[n]``, or ``[seeds, n]`` for repeated runs; then each resample's
            statistic is the mean over seeds on the same resampled clips.
        n_boot: number of resamples. alpha: 0.05 gives a 95% interval. seed: RNG seed.

    Returns:
        ``{"accuracy": [low, high], "macro_f1": [low, high]}``.
    """
    p = np.asarray(y_pred)
    p = p[None] if p.ndim == 1 else p
    t, (pc,), k = encode_labels(y_true, p)
    idx = _resample_indices(len(t), n_boot, seed)
    scores = _seed_mean_scores(t, pc, idx, k)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {name: [float(v) for v in np.percentile(scores[name], q)] for name in BOOTSTRAP_METRICS}


def paired_bootstrap(
    y_true: Sequence[Any],
    pred_a: Any,
    pred_b: Any,
    *,
    metric: str = "accuracy",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap test of ``metric(a) - metric(b)`` on the same clips.

    Args:
        y_true: true labels ``[n]``; pred_a, pred_b: predictions ``[n]`` or ``[seeds, n]``.

    Returns:
        ``{"diff": observed difference, "ci95": [low, high], "p_value": two-sided p}`` where the
        p-value is twice the smaller share of resampled differences on either side of zero
        (capped at 1).
    """
    a = np.asarray(pred_a)
    b = np.asarray(pred_b)
    a = a[None] if a.ndim == 1 else a
    b = b[None] if b.ndim == 1 else b
    t, (ac, bc), k = encode_labels(y_true, a, b)
    full = np.arange(len(t))[None]
    diff = float(_seed_mean_scores(t, ac, full, k)[metric][0] - _seed_mean_scores(t, bc, full, k)[metric][0])
    idx = _resample_indices(len(t), n_boot, seed)
    d = _seed_mean_scores(t, ac, idx, k)[metric] - _seed_mean_scores(t, bc, idx, k)[metric]
    p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    return {"diff": diff, "ci95": [float(v) for v in np.percentile(d, [2.5, 97.5])], "p_value": float(p)}


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """Exact (binomial) McNemar test of two classifiers on the same clips.

    Args:
        correct_a, correct_b: ``[n]`` booleans, whether each classifier got each clip right.

    Returns:
        ``{"b": a right & b wrong, "c": a wrong & b right, "p_value": two-sided exact p}`` with
        ``p = min(1, 2 * P(X <= min(b, c)))``, ``X ~ Binomial(b + c, 1/2)``; ``p = 1`` when there is
        no discordant pair.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"correct_a {a.shape} and correct_b {b_.shape} differ in shape")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "p_value": 1.0}
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return {"b": b, "c": c, "p_value": float(min(1.0, 2 * tail))}


# ---- tagging and regression --------------------------------------------------------------------


def _ci(stat: Any, n: int, n_boot: int, seed: int) -> list[float] | None:
    """95% percentile bootstrap interval of ``stat(idx)`` over clips resampled with replacement
    (resamples where the statistic is undefined are dropped); None without any defined resample."""
    values = [stat(idx) for idx in _resample_indices(n, n_boot, seed)] if n_boot and n else []
    values = [v for v in values if np.isfinite(v)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def tagging_metrics(Y: np.ndarray, scores: np.ndarray, tags: Sequence[str], *, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Macro ROC-AUC and macro average precision (scikit-learn's) of tag scores.

    Args:
        Y: ``[n, tags]`` 0/1 truth; scores: ``[n, tags]`` predicted probabilities; tags: their names.

    Returns:
        ``{"macro_auc", "macro_ap", "per_tag_auc": {tag: auc or None}, "excluded": [tags], "n",
        "ci95": {"macro_auc": [lo, hi], "macro_ap": [lo, hi]}}``; a tag with no positive (or no
        negative) clip here has no AUC and is left out of both macro averages (``excluded``).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    Y = np.asarray(Y).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    positives = Y.sum(axis=0)
    usable = (positives > 0) & (positives < len(Y))
    per_tag = {str(t): (float(roc_auc_score(Y[:, k], scores[:, k])) if usable[k] else None) for k, t in enumerate(tags)}

    def macro(metric: Any, idx: np.ndarray) -> float:
        y, s = Y[idx], scores[idx]
        pos = y.sum(axis=0)
        ok = usable & (pos > 0) & (pos < len(idx))
        return float(metric(y[:, ok], s[:, ok], average="macro")) if ok.any() else float("nan")

    every = np.arange(len(Y))
    return {
        "macro_auc": macro(roc_auc_score, every), "macro_ap": macro(average_precision_score, every),
        "per_tag_auc": per_tag, "excluded": [str(t) for t, ok in zip(tags, usable) if not ok], "n": int(len(Y)),
        "ci95": {"macro_auc": _ci(lambda i: macro(roc_auc_score, i), len(Y), n_boot, seed),
                 "macro_ap": _ci(lambda i: macro(average_precision_score, i), len(Y), n_boot, seed)},
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """R² and MAE (scikit-learn's) and Pearson r (SciPy's) of predictions ``[n]`` against targets ``[n]``,
    each with a 95% bootstrap interval over clips: ``{"r2", "mae", "pearson_r", "n", "ci95": {...}}``."""
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error, r2_score

    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)

    def r(idx: np.ndarray) -> float:
        a, b = y[idx], pred[idx]
        return float(pearsonr(a, b)[0]) if len(idx) > 1 and a.std() > 0 and b.std() > 0 else float("nan")

    stats = {"r2": lambda i: float(r2_score(y[i], pred[i])) if len(i) > 1 else float("nan"),
             "mae": lambda i: float(mean_absolute_error(y[i], pred[i])), "pearson_r": r}
    every = np.arange(len(y))
    return {**{k: f(every) for k, f in stats.items()}, "n": int(len(y)),
            "ci95": {k: _ci(f, len(y), n_boot, seed) for k, f in stats.items()}}
