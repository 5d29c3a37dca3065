"""The MLP probe head for tagging (sigmoid outputs, binary cross-entropy) and regression (a linear
output, mean squared error), trained in the one loop :func:`~embedstore.heads.training.fit` (in
memory) over the preset's lr x weight-decay grid and chosen by the lowest validation loss."""

from __future__ import annotations

from itertools import product

import numpy as np
import torch
from torch import nn

from embedstore.devices import resolve_device
from embedstore.heads.base import FittedHead
from embedstore.heads.mlp import MLPConfig, MLPHead, _batches
from embedstore.heads.training import LoopHooks, LoopSettings, fit

#: loss of each kind (logits/outputs, float targets) and the map from outputs to predictions
LOSSES = {"tag": nn.functional.binary_cross_entropy_with_logits, "regress": nn.functional.mse_loss}
OUTPUTS = {"tag": torch.sigmoid, "regress": lambda out: out}


def _train(model: nn.Module, Xt: torch.Tensor, Yt: torch.Tensor, Xv: torch.Tensor, Yv: torch.Tensor, kind: str,
           lr: float, weight_decay: float, config: MLPConfig, seed: int) -> tuple[int, float]:
    """Train ``model`` in place; ``(epochs kept, validation loss)`` of the lowest-validation-loss epoch."""
    gen = torch.Generator().manual_seed(seed)
    loss_fn = LOSSES[kind]

    def batches(epoch: int) -> list[torch.Tensor]:
        model.train()
        return [idx.to(Xt.device) for idx in _batches(len(Xt), config.batch_size, gen)]

    @torch.no_grad()
    def validate() -> dict[str, float]:
        model.eval()
        return {"valid_loss": float(loss_fn(model(Xv), Yv))}

    hooks = LoopHooks(batches, lambda idx: (loss_fn(model(Xt[idx]), Yt[idx]), len(idx), []), validate,
                      lambda row: (-row["valid_loss"],))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    result = fit(model, opt, hooks, LoopSettings(epochs=config.max_epochs, patience=config.patience or 10), None)
    return result.best_epoch, validate()["valid_loss"]


def fit_target_mlp(X_train: np.ndarray, Y_train: np.ndarray, X_valid: np.ndarray, Y_valid: np.ndarray, kind: str, *,
                   config: MLPConfig, seed: int = 0, device: str = "cpu") -> FittedHead:
    """Fit the MLP for ``kind`` (``tag``: ``Y`` ``[n, tags]`` 0/1; ``regress``: ``Y`` ``[n]``
    standardised) on standardised ``X`` ``[n, dim]``. ``predict`` returns ``[n, tags]`` probabilities
    or ``[n]`` values; ``valid_score`` is minus the chosen validation loss."""
    dev = resolve_device(device)
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=dev)
    Yt2, Yv2 = (np.asarray(Y_train).reshape(len(Y_train), -1), np.asarray(Y_valid).reshape(len(Y_valid), -1))
    Xt, Xv, Yt, Yv = as_t(X_train), as_t(X_valid), as_t(Yt2), as_t(Yv2)
    best, search = None, []
    for lr, wd in product(config.lrs, config.weight_decays):
        torch.manual_seed(seed)
        model = MLPHead(Xt.shape[1], Yt.shape[1], config.hidden, config.dropout).to(dev)
        epochs, loss = _train(model, Xt, Yt, Xv, Yv, kind, lr, wd, config, seed)
        hp = {"lr": lr, "weight_decay": wd, "dropout": config.dropout, "epochs": epochs}
        search.append({**hp, "valid_loss": loss})
        if best is None or loss < best[0]:
            best = (loss, model, hp)
    assert best is not None
    loss, model, hp = best
    model.eval()

    @torch.no_grad()
    def predict(X: np.ndarray) -> np.ndarray:
        out = OUTPUTS[kind](model(as_t(X))).cpu().numpy()
        return out if kind == "tag" else out[:, 0]

    return FittedHead(predict=predict, hparams=hp, search=search, valid_score=-loss)
