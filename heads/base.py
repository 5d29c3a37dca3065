"""What every probe head returns after fitting: a predictor plus the choices made on validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FittedHead:
    """A trained probe head.

    Attributes:
        predict: maps standardised features (``[n, dim]``, or ``[n, layers, dim]`` for the weighted
            head) to class codes ``[n]`` (ints in ``range(n_classes)``).
        hparams: the hyper-parameters chosen on validation, e.g. ``{"C": 0.1}`` or
            ``{"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.25, "epochs": 37}``.
        search: one entry per candidate tried: its hyper-parameters and validation score.
        valid_score: validation accuracy of the chosen candidate (mean inner-CV accuracy for
            logreg without a validation split; NaN when nothing was validated).
        layer_weights: the learned softmax layer weights ``[layers]`` (weighted head only).
    """

    predict: Callable[[np.ndarray], np.ndarray]
    hparams: dict[str, Any]
    search: list[dict[str, Any]] = field(default_factory=list)
    valid_score: float = float("nan")
    layer_weights: list[float] | None = None
