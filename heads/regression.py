"""The ridge regression head: alpha chosen on validation."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from embedstore.heads.base import FittedHead

#: the regularisation grid
ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def fit_ridge(X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray) -> FittedHead:
    """Ridge on standardised ``X`` ``[n, dim]`` and targets ``[n]``, alpha chosen by validation R²
    (ties: larger alpha). ``predict`` gives ``[n]``."""
    search, best = [], None
    for alpha in ALPHAS:
        model = Ridge(alpha=alpha).fit(X_train, y_train)
        r2 = float(r2_score(y_valid, model.predict(X_valid)))
        search.append({"alpha": alpha, "valid_r2": r2})
        if best is None or r2 >= best[0]:
            best = (r2, model, alpha)
    assert best is not None
    return FittedHead(predict=best[1].predict, hparams={"alpha": best[2]}, search=search, valid_score=best[0])
