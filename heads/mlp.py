"""The MLP probe head (the reference study's architecture), trained by the one loop (heads/training.fit).

``MLPHead`` is ``Linear(dim, 512) -> ReLU -> BatchNorm1d(512) -> [Dropout] -> Linear(512, classes)``,
trained with cross-entropy and Adam. ``LayerWeighting`` is the SUPERB/MARBLE learnable
softmax-weighted sum of all layers that feeds it for the ``weighted`` probe.

Two presets (:data:`MLP_PRESETS`):

- ``paper``: lr 1e-5, 10 epochs, no dropout, no weight decay, no early stopping: the reference
  study's recipe, kept for reproduction (it underfits).
- ``default``: a small lr x weight-decay grid chosen on validation accuracy, dropout 0.25, early
  stopping on validation (patience 10) within at most 100 epochs, mini-batches of 128.

Training is deterministic for a fixed seed on CPU (initialisation and batch order are seeded); it
runs on any torch device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import nn

from embedstore.devices import resolve_device
from embedstore.errors import ModelError
from embedstore.heads.base import FittedHead
from embedstore.heads.training import LoopHooks, LoopSettings, fit


class MLPHead(nn.Module):
    """Two-layer MLP classifier on pooled embeddings.

    ``forward(x [batch, dim]) -> logits [batch, n_classes]``. With ``dropout=0`` the module list is
    exactly ``Linear(dim, hidden) -> ReLU -> BatchNorm1d(hidden) -> Linear(hidden, n_classes)``.
    """

    def __init__(self, dim: int, n_classes: int, hidden: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim, hidden), nn.ReLU(), nn.BatchNorm1d(hidden)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LayerWeighting(nn.Module):
    """Learnable softmax-weighted sum over layers: ``[batch, layers, dim] -> [batch, dim]``.

    The logits start at zero (equal weights); :attr:`weights` are their softmax and sum to 1.
    """

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers))

    @property
    def weights(self) -> torch.Tensor:
        """Softmax weights ``[layers]``."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bld,l->bd", x, self.weights)


class WeightedLayerMLP(nn.Module):
    """``LayerWeighting`` followed by ``MLPHead``: ``[batch, layers, dim] -> logits [batch, n_classes]``."""

    def __init__(self, n_layers: int, dim: int, n_classes: int, hidden: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.weighting = LayerWeighting(n_layers)
        self.head = MLPHead(dim, n_classes, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.weighting(x))


@dataclass(frozen=True)
class MLPConfig:
    """Training protocol of the MLP head.

    Attributes:
        lrs, weight_decays: the grid searched on validation (Adam learning rate, L2 weight decay;
            weight decay never applies to the layer-weight logits).
        dropout: dropout before the output layer (0 = the exact reference architecture).
        hidden: hidden width.
        max_epochs: epochs at most.
        patience: stop after this many epochs without a validation-accuracy gain and restore the
            best epoch (highest accuracy, ties to lower loss); ``None`` trains exactly
            ``max_epochs`` and keeps the last epoch.
        batch_size: mini-batch size; ``None`` = full batch.
        layer_lr: Adam learning rate of the layer-weight logits (weighted head). Adam moves a
            parameter by about ``lr`` per step whatever its gradient, so the logits need a larger
            rate than the MLP to move within a few hundred steps; ``None`` = the MLP's ``lr``.
        cpu_threads: torch intra-op threads while training on CPU (restored afterwards). A probe
            head is small and overhead-bound, so one thread is fastest and does not fight other
            processes for cores; ``None`` leaves torch's setting alone.
    """

    lrs: tuple[float, ...] = (1e-3, 1e-4)
    weight_decays: tuple[float, ...] = (0.0, 1e-3)
    dropout: float = 0.25
    hidden: int = 512
    max_epochs: int = 100
    patience: int | None = 10
    batch_size: int | None = 128
    layer_lr: float | None = 1e-2
    cpu_threads: int | None = 1


MLP_PRESETS: dict[str, MLPConfig] = {
    "default": MLPConfig(),
    "paper": MLPConfig(
        lrs=(1e-5,), weight_decays=(0.0,), dropout=0.0, max_epochs=10, patience=None, batch_size=32, layer_lr=None
    ),
}


def mlp_config(preset: str) -> MLPConfig:
    """The :class:`MLPConfig` of a preset name (``default`` or ``paper``)."""
    try:
        return MLP_PRESETS[preset]
    except KeyError:
        raise ModelError(f"--preset {preset!r}: unknown; choose one of {', '.join(MLP_PRESETS)}") from None


@contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (no-op for None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` in eval mode on ``X [n, ...]``, ``y [n]``."""
    model.eval()
    logits = torch.cat([model(X[i : i + chunk]) for i in range(0, len(X), chunk)])
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return acc, loss


def _batches(n: int, batch_size: int | None, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches of one epoch; a trailing batch of one row joins the previous batch
    (BatchNorm needs at least two rows)."""
    perm = torch.randperm(n, generator=gen)
    if batch_size is None or batch_size >= n:
        return [perm]
    out = list(perm.split(batch_size))
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = torch.cat([out[-2], out.pop()])
    return out


def _mlp_hooks(model: nn.Module, X_train: torch.Tensor, y_train: torch.Tensor, X_valid: torch.Tensor,
               y_valid: torch.Tensor, config: MLPConfig, seed: int) -> LoopHooks:
    """The MLP probe's parts of :func:`~embedstore.heads.training.fit`: seeded shuffled batches of row
    indices, cross-entropy, validation (accuracy, loss) and selection by (accuracy, -loss) with
    patience on accuracy alone; without ``config.patience`` no validation and the last epoch is kept."""
    gen = torch.Generator().manual_seed(seed)

    def batches(epoch: int) -> list[torch.Tensor]:
        return [idx.to(X_train.device) for idx in _batches(len(X_train), config.batch_size, gen)]

    def loss(idx: torch.Tensor) -> tuple[torch.Tensor, float, list]:
        return nn.functional.cross_entropy(model(X_train[idx]), y_train[idx]), len(idx), []

    if config.patience is None:  # the paper recipe: train max_epochs, keep the last epoch
        return LoopHooks(batches, loss, dict, lambda row: (row["epoch"],))

    def validate() -> dict[str, float]:
        acc, valid_loss = _evaluate(model, X_valid, y_valid)
        return {"valid_accuracy": acc, "valid_loss": valid_loss}

    return LoopHooks(batches, loss, validate, lambda row: (row["valid_accuracy"], -row["valid_loss"]),
                     patience_key=lambda row: (row["valid_accuracy"],))


def train_mlp(
    model: nn.Module,
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_valid: torch.Tensor,
    y_valid: torch.Tensor,
    *,
    lr: float,
    weight_decay: float,
    config: MLPConfig,
    seed: int,
) -> dict[str, Any]:
    """Train ``model`` in place with Adam + cross-entropy in the one training loop (no files); keeps
    the best validation epoch when early stopping (``config.patience``) is on, else the last epoch.

    Args:
        X_train ``[n, ...]``, y_train ``[n]`` (long), X_valid, y_valid: tensors on the model's device.

    Returns:
        ``{"epochs": epochs kept, "epochs_run": int, "valid_accuracy": float, "valid_loss": float}``
        for the kept state.
    """
    head_params, layer_params = [], []
    for name, p in model.named_parameters():
        (layer_params if name.endswith("logits") else head_params).append(p)
    groups = [{"params": head_params, "weight_decay": weight_decay}]
    if layer_params:
        groups.append({"params": layer_params, "weight_decay": 0.0, "lr": config.layer_lr or lr})
    opt = torch.optim.Adam(groups, lr=lr)
    hooks = _mlp_hooks(model, X_train, y_train, X_valid, y_valid, config, seed)
    result = fit(model, opt, hooks, LoopSettings(epochs=config.max_epochs, patience=config.patience), None)
    acc, loss = _evaluate(model, X_valid, y_valid)
    return {"epochs": result.best_epoch, "epochs_run": result.epochs_run, "valid_accuracy": acc, "valid_loss": loss}


def fit_mlp(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    n_classes: int,
    *,
    config: MLPConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FittedHead:
    """Fit the MLP head (or the weighted-layer MLP when ``X`` is ``[n, layers, dim]``) over the
    config's lr x weight-decay grid, choosing by validation accuracy (ties: lower validation loss).

    Args:
        X_train: standardised features ``[n, dim]`` or ``[n, layers, dim]``; y_train: class codes ``[n]``.
        X_valid, y_valid: the validation set, same layout.
        n_classes: number of output classes.

    Returns:
        A :class:`FittedHead` whose ``predict`` returns class codes ``[n]``; ``hparams`` holds
        ``lr, weight_decay, dropout, epochs, batch_size``; ``layer_weights`` the softmax weights
        for the weighted head.
    """
    dev = resolve_device(device)
    Xt = torch.as_tensor(np.ascontiguousarray(X_train), dtype=torch.float32, device=dev)
    Xv = torch.as_tensor(np.ascontiguousarray(X_valid), dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y_train, dtype=torch.long, device=dev)
    yv = torch.as_tensor(y_valid, dtype=torch.long, device=dev)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        if Xt.ndim == 3:
            m = WeightedLayerMLP(Xt.shape[1], Xt.shape[2], n_classes, config.hidden, config.dropout)
        else:
            m = MLPHead(Xt.shape[1], n_classes, config.hidden, config.dropout)
        return m.to(dev)

    best_model, best_key, best_hp = None, None, None
    search = []
    for lr, wd in product(config.lrs, config.weight_decays):
        model = build()
        with _cpu_threads(config.cpu_threads if dev.type == "cpu" else None):
            log = train_mlp(model, Xt, yt, Xv, yv, lr=lr, weight_decay=wd, config=config, seed=seed)
        hp = {"lr": lr, "weight_decay": wd, "dropout": config.dropout, "epochs": log["epochs"],
              "batch_size": config.batch_size}
        search.append({**hp, "valid_accuracy": log["valid_accuracy"], "valid_loss": log["valid_loss"]})
        key = (log["valid_accuracy"], -log["valid_loss"])
        if best_key is None or key > best_key:
            best_model, best_key, best_hp = model, key, hp
    assert best_model is not None
    best_model.eval()

    @torch.no_grad()
    def predict(X: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32, device=dev)
        out = [best_model(x[i : i + 4096]).argmax(1) for i in range(0, len(x), 4096)]
        return torch.cat(out).cpu().numpy()

    weights = None
    if isinstance(best_model, WeightedLayerMLP):
        weights = [float(w) for w in best_model.weighting.weights.detach().cpu()]
    return FittedHead(predict=predict, hparams=best_hp, search=search, valid_score=best_key[0], layer_weights=weights)
