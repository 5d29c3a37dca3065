"""The logistic-regression probe: ``StandardScaler`` + ``LogisticRegression`` with C chosen on
validation (or by inner stratified cross-validation on train when there is no validation split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from embedstore.heads.base import FittedHead


@dataclass(frozen=True)
class LogRegConfig:
    """Attributes: Cs: the inverse-regularisation grid; max_iter: lbfgs iterations; cv_folds: inner
    folds used when there is no validation split."""

    Cs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    max_iter: int = 1000
    cv_folds: int = 3


def make_logreg(C: float, *, max_iter: int = 1000, seed: int = 0) -> Pipeline:
    """``StandardScaler -> LogisticRegression(C)`` (multinomial, lbfgs) as an sklearn pipeline."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))


def fit_logreg(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray | None,
    y_valid: np.ndarray | None,
    *,
    config: LogRegConfig = LogRegConfig(),
    seed: int = 0,
) -> FittedHead:
    """Choose C by validation accuracy and return the pipeline fitted on the train split.

    Args:
        X_train ``[n, dim]``, y_train ``[n]`` class codes; X_valid/y_valid: validation set or None,
        in which case C is chosen by stratified ``config.cv_folds``-fold CV on train (seeded).
        Ties go to the smaller C (stronger regularisation).

    Returns:
        A :class:`FittedHead`; ``hparams = {"C": chosen, "selected_by": "valid" | "inner_cv"}``.
    """
    search = []
    if X_valid is not None and len(X_valid):
        for C in config.Cs:
            model = make_logreg(C, max_iter=config.max_iter, seed=seed).fit(X_train, y_train)
            search.append({"C": C, "valid_accuracy": float(model.score(X_valid, y_valid)), "model": model})
        how = "valid"
    else:
        counts = np.bincount(y_train)
        n_splits = min(config.cv_folds, int(counts[counts > 0].min()))
        if n_splits >= 2:
            cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
            for C in config.Cs:
                accs = [
                    make_logreg(C, max_iter=config.max_iter, seed=seed)
                    .fit(X_train[tr], y_train[tr])
                    .score(X_train[va], y_train[va])
                    for tr, va in cv.split(X_train, y_train)
                ]
                search.append({"C": C, "valid_accuracy": float(np.mean(accs))})
        else:
            search.append({"C": 1.0, "valid_accuracy": float("nan")})
        how = "inner_cv"
    best = max(search, key=lambda r: (np.nan_to_num(r["valid_accuracy"], nan=-1.0), -r["C"]))
    model = best.get("model")
    if model is None:
        model = make_logreg(best["C"], max_iter=config.max_iter, seed=seed).fit(X_train, y_train)
    return FittedHead(
        predict=model.predict,
        hparams={"C": best["C"], "selected_by": how},
        search=[{k: v for k, v in r.items() if k != "model"} for r in search],
        valid_score=best["valid_accuracy"],
    )
