"""Tagging targets and the linear tagging head: each clip holds several tags (``guitar;slow``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from embedstore.heads.base import FittedHead

#: the inverse-regularisation grid of the linear head
CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def tag_matrix(values: Sequence[str], separator: str = ";") -> tuple[np.ndarray, list[str]]:
    """``(Y [n, tags] 0/1 int, tag names sorted)`` of raw texts such as ``"guitar; slow"`` (tags are
    stripped; an empty text has no tag)."""
    sets = [{t.strip() for t in str(v).split(separator) if t.strip()} for v in values]
    binarizer = MultiLabelBinarizer()
    Y = binarizer.fit_transform(sets)
    return Y.astype(int), [str(c) for c in binarizer.classes_]


def fit_tag_linear(X_train: np.ndarray, Y_train: np.ndarray, X_valid: np.ndarray, Y_valid: np.ndarray, *,
                   seed: int = 0) -> FittedHead:
    """One-vs-rest logistic regression on standardised ``X`` ``[n, dim]``, ``Y`` ``[n, tags]``, its C
    chosen by validation macro ROC-AUC (ties: smaller C). ``predict`` gives ``[n, tags]`` probabilities;
    a tag with one class in train gets that constant."""
    from embedstore.heads.metrics import tagging_metrics

    search, best = [], None
    for C in CS:
        model = OneVsRestClassifier(LogisticRegression(C=C, max_iter=1000, random_state=seed)).fit(X_train, Y_train)
        auc = tagging_metrics(Y_valid, model.predict_proba(X_valid), list(range(Y_train.shape[1])), n_boot=0)["macro_auc"]
        search.append({"C": C, "valid_macro_auc": auc})
        if best is None or np.nan_to_num(auc, nan=-1.0) > np.nan_to_num(best[0], nan=-1.0):
            best = (auc, model, C)
    assert best is not None
    return FittedHead(predict=best[1].predict_proba, hparams={"C": best[2]}, search=search, valid_score=best[0])
