"""The one training loop of embedstore: :func:`fit`, used by every fine-tuning path.

One run::

    [resume: weights, AdamW, GradScaler, RNG states and the early-stopping counters from last.pt]
    for each epoch:  hooks.batches(epoch) -> train_epoch (loss -> GradScaler -> accumulate
                     ``grad_accum`` steps -> clip -> step; tqdm bar with loss and items/s)
                  -> hooks.validate() -> the epoch's validation numbers
                  -> hooks.select(row): a key of the epoch's history row; the epoch with the greatest
                     key is "best" (chosen on validation, never test) -> best.pt
                  -> last.pt (with AdamW/GradScaler while training) -> history.json
                  -> stop after ``patience`` epochs without a greater key (hooks.patience_key's, if set)
    reload best.pt into the network

Without a run folder (``run_dir=None``, the probe heads) nothing is written: the best epoch's weights
are kept in memory and loaded back at the end, and there is no resume.

What is trained, how a batch becomes a loss and what "better on validation" means belong to the
task (:class:`LoopHooks`); the bookkeeping above is the same for all.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedstore.errors import EmbedstoreError
from embedstore.heads.checkpoint import (
    BEST,
    LAST,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from tqdm.auto import tqdm

HISTORY = "history.json"

#: ``loss(items) -> (loss, weight, failures)``: the mean loss of a batch (None: nothing usable in it),
#: its weight in the epoch's mean (clips, tokens) and ``[(index, reason)]`` of items left out
LossFn = Callable[[list], tuple["torch.Tensor | None", float, list]]


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`fit` trains.

    Attributes:
        epochs: the most epochs (in total, counting epochs done before a resume).
        patience: stop after this many epochs without a greater selection key (None: never).
        grad_accum: batches whose gradients are summed per optimiser step.
        max_grad_norm: clip the gradient norm of all trained weights (None: no clipping).
        fp16: scale the loss with a GradScaler (float16 autocast); off for bf16/fp32.
        keep_optimizer: keep AdamW's state in the finished run's ``last.pt``.
        progress: a tqdm bar per epoch.
    """

    epochs: int
    patience: int | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = None
    fp16: bool = False
    keep_optimizer: bool = False
    progress: bool = False


@dataclass
class LoopHooks:
    """The task-specific parts of a run.

    Attributes:
        batches: ``epoch -> iterable of training batches`` (lists of items; with ``.dataset`` for
            the bar's total when it is a DataLoader); called once per epoch, it also puts the
            network in its training state.
        loss: see :data:`LossFn`.
        validate: ``() -> {"valid_<name>": float}`` the epoch's validation numbers (history columns).
        select: ``row -> key`` (a tuple; greater is better): the selection rule, given the epoch's
            history row (``epoch``, ``train_loss`` and the validation numbers).
        meta: extra keys written into both checkpoints (the run's config, class labels).
        check_resume: ``(last.pt state, path) -> None``, raising when the saved run cannot continue.
        patience_key: ``row -> key``: only a greater one resets the patience counter (None: the
            selection key; the MLP probe keeps the best (accuracy, -loss) but waits on accuracy).
    """

    batches: Callable[[int], Iterable[list]]
    loss: LossFn
    validate: Callable[[], dict[str, float]]
    select: Callable[[dict[str, Any]], tuple[float, ...]]
    meta: dict[str, Any] = field(default_factory=dict)
    check_resume: Callable[[dict[str, Any], Path], None] | None = None
    patience_key: Callable[[dict[str, Any]], tuple[float, ...]] | None = None


@dataclass
class FitResult:
    """What :func:`fit` did.

    ``history``: one dict per epoch (``epoch, train_loss, valid_*, items_per_s, seconds, skipped``);
    ``best_key``/``best_epoch``: the selection key and epoch of ``best.pt`` (None/0 when no epoch
    ran); ``skipped``: ``[(epoch, [(index, reason)])]`` of this call's epochs with failed items.
    The three paths are None for a run without a folder.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    best_key: tuple[float, ...] | None
    stopped: bool
    resumed_from: int | None
    last_has_optimizer: bool
    best_path: Path | None
    last_path: Path | None
    history_path: Path | None
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[int, list]] = field(default_factory=list)

    @property
    def epochs_run(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (all devices; SpecAugment draws from numpy's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_epoch(net: torch.nn.Module, loader: Iterable[list], opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                loss_fn: LossFn, *, grad_accum: int = 1, max_grad_norm: float | None = None, desc: str = "train",
                progress: bool = False) -> dict[str, Any]:
    """Train one epoch; returns ``train_loss`` (weighted mean of the batch losses), ``items``,
    ``items_per_s``, ``seconds`` and ``skipped`` (``[(index, reason)]``).

    Raises:
        EmbedstoreError: not one usable batch in the epoch.
    """
    net.train()
    params = [p for g in opt.param_groups for p in g["params"]]
    total, weight, seen, skipped, pending = 0.0, 0.0, 0, [], False
    steps = len(loader) if hasattr(loader, "__len__") else None
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    size = len(loader.dataset) if hasattr(loader, "dataset") else None
    bar = tqdm(total=size, desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
    try:
        for step, items in enumerate(loader):
            loss, w, bad = loss_fn(items)
            skipped += bad
            if loss is not None:
                scaler.scale(loss / grad_accum).backward()
                total, weight, seen, pending = total + float(loss.detach()) * w, weight + w, seen + len(items) - len(bad), True
            if pending and ((step + 1) % grad_accum == 0 or step + 1 == steps):
                if max_grad_norm is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                pending = False
            bar.update(len(items))
            if weight:
                bar.set_postfix(loss=f"{total / weight:.4f}", items_s=f"{seen / max(time.perf_counter() - start, 1e-9):.1f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    if not weight:
        raise EmbedstoreError("no training clip could be decoded in this epoch "
                              f"(first failure: {skipped[0][1] if skipped else 'none'})")
    return {"train_loss": total / weight, "items": seen, "items_per_s": seen / max(seconds, 1e-9),
            "seconds": seconds, "skipped": skipped}


@dataclass
class _Progress:
    """The early-stopping counters (saved in ``last.pt``)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_key: tuple[float, ...] | None = None
    best_epoch: int = 0
    since_best: int = 0
    patience_best: tuple[float, ...] | None = None
    stopped: bool = False
    start_epoch: int = 1
    resumed_from: int | None = None
    has_optimizer: bool = False
    best_state: dict[str, torch.Tensor] | None = None  # the best weights of a run without a folder


def _resume(net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, hooks: LoopHooks,
            settings: LoopSettings, last_path: Path, notes: list[str]) -> _Progress:
    """The counters, weights, optimiser and RNG states of ``last_path`` (loaded into ``net``/``opt``)."""
    state = load_checkpoint(last_path)  # on CPU: load_state_dict copies onto the device
    if hooks.check_resume is not None:
        hooks.check_resume(state, last_path)
    net.load_state_dict(state["model"])
    set_rng_state(state["rng"])
    key = tuple(state["best_key"]) if state["best_key"] is not None else None
    since = int(state["since_best"])
    done = int(state["epoch"])
    waited = state.get("patience_key", key)  # runs saved before patience_key existed waited on the selection key
    run = _Progress(list(state["history"]), key, int(state["best_epoch"]), since,
                    patience_best=tuple(waited) if waited is not None else None,
                    stopped=settings.patience is not None and since >= settings.patience,  # a larger --patience continues
                    start_epoch=done + 1, resumed_from=done, has_optimizer="optimizer" in state)
    lrs = [g["lr"] for g in opt.param_groups]  # the learning rates asked for now
    if run.has_optimizer:
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    elif run.start_epoch <= settings.epochs and not run.stopped:
        notes.append(f"--resume: {last_path} holds no optimizer state (the run had finished; --keep-optimizer "
                     "keeps it); AdamW's moments restart from zero, so this is not the uninterrupted run")
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr
    return run


def fit(net: torch.nn.Module, opt: torch.optim.Optimizer, hooks: LoopHooks, settings: LoopSettings,
        run_dir: str | Path | None, *, resume: bool = False) -> FitResult:
    """Train ``net`` with ``opt`` under ``settings``, keep the epoch chosen on validation, and load
    its weights back into ``net``.

    Files in ``run_dir``: ``best.pt`` (weights of the best epoch + ``{"valid": numbers}``),
    ``last.pt`` (the latest epoch, resumable) and ``history.json``. ``resume`` continues from
    ``last.pt`` at its next epoch. ``run_dir=None`` writes nothing: the best weights are kept in memory.

    Raises:
        EmbedstoreError: a training epoch with no usable batch, ``hooks.check_resume``'s error, or
            ``resume`` without a run folder.
        ModelError: an unreadable ``last.pt``.
    """
    if run_dir is None and resume:
        raise EmbedstoreError("--resume needs a run folder; this training run keeps no files")
    paths = (None, None, None) if run_dir is None else (Path(run_dir) / LAST, Path(run_dir) / BEST, Path(run_dir) / HISTORY)
    last_path, best_path, history_path = paths
    device_type = next(net.parameters()).device.type
    scaler = torch.amp.GradScaler(device_type, enabled=settings.fp16)
    notes: list[str] = []
    if resume and last_path.exists():
        run = _resume(net, opt, scaler, hooks, settings, last_path, notes)
    else:
        run = _Progress()
        if resume:
            notes.append(f"--resume: {last_path} does not exist; started from scratch")
        elif last_path is not None and last_path.exists():
            notes.append(f"{run_dir}: held an earlier run; its checkpoints were replaced (use --resume to continue one)")
    skipped = []
    for epoch in range(run.start_epoch, settings.epochs + 1):
        if run.stopped:
            break
        stats = train_epoch(net, hooks.batches(epoch), opt, scaler, hooks.loss, grad_accum=settings.grad_accum,
                            max_grad_norm=settings.max_grad_norm, desc=f"epoch {epoch}/{settings.epochs}",
                            progress=settings.progress)
        valid = hooks.validate()
        run.history.append({"epoch": epoch, "train_loss": stats["train_loss"], **valid,
                            "clips_per_s": stats["items_per_s"], "seconds": stats["seconds"],
                            "skipped": len(stats["skipped"])})
        if stats["skipped"]:
            skipped.append((epoch, stats["skipped"]))
        _end_epoch(net, opt, scaler, hooks, settings, run, valid, best_path, last_path)
        if history_path is not None:
            write_json(run.history, history_path)
    if run.best_state is not None:
        net.load_state_dict(run.best_state)
    elif best_path is not None and best_path.exists():
        net.load_state_dict(load_checkpoint(best_path)["model"])
    return FitResult(run.history, run.best_epoch, run.best_key, run.stopped, run.resumed_from, run.has_optimizer,
                     best_path, last_path, history_path, notes, skipped)


def _end_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, hooks: LoopHooks,
               settings: LoopSettings, run: _Progress, valid: dict[str, float], best_path: Path | None,
               last_path: Path | None) -> None:
    """Selection, early stopping and the checkpoints (in memory without a folder) of the epoch
    that ``run.history[-1]`` describes."""
    row = run.history[-1]
    epoch, key = row["epoch"], tuple(hooks.select(row))
    if run.best_key is None or key > run.best_key:
        run.best_key, run.best_epoch = key, epoch
        if best_path is None:
            run.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            save_checkpoint({"epoch": epoch, "model": net.state_dict(), **hooks.meta, "valid": dict(valid)}, best_path)
    waited = tuple(hooks.patience_key(row)) if hooks.patience_key is not None else key
    if run.patience_best is None or waited > run.patience_best:
        run.patience_best, run.since_best = waited, 0
    else:
        run.since_best += 1
    run.stopped = settings.patience is not None and run.since_best >= settings.patience and epoch < settings.epochs
    final = run.stopped or epoch == settings.epochs  # the finished run's last.pt keeps the weights only
    run.has_optimizer = settings.keep_optimizer or not final
    if last_path is None:
        return
    resumable = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict()} if run.has_optimizer else {}
    save_checkpoint({"epoch": epoch, "model": net.state_dict(), **hooks.meta, **resumable, "rng": rng_state(),
                     "best_key": run.best_key, "best_epoch": run.best_epoch, "since_best": run.since_best,
                     "patience_key": run.patience_best, "stopped": run.stopped, "history": run.history}, last_path)
