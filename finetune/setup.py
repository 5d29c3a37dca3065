"""The setup every fine-tuning path shares (classification and captioning).

    check_options (the shared option checks, naming the CLI option)
    -> seed_everything (heads.training) -> prepare_encoder (load unfrozen; LayerDrop off; conv feature encoder
       frozen; SpecAugment on/off; gradient checkpointing; crop capped at the encoder's window)
    -> adamw (one group for the encoder, one for the head, each with its learning rate)
    run_folder (the run's folder) and train (adamw, then the loop of :func:`embedstore.heads.training.fit`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embedstore.errors import EmbedstoreError
from embedstore.extract.encoders.registry import EncoderRequest
from embedstore.finetune.model import (
    disable_layerdrop,
    enable_gradient_checkpointing,
    set_spec_augment,
)
from embedstore.finetune.model import freeze_feature_encoder as freeze_conv_features
from embedstore.heads.training import FitResult, LoopHooks, LoopSettings, fit


def check_options(checks: list[tuple[bool, str]], *, epochs: int, lr_encoder: float, lr_head: float,
                  crop_seconds: float, patience: int | None, weight_decay: float,
                  max_grad_norm: float | None) -> None:
    """Raise :class:`EmbedstoreError` with the message of the first failed check: the shared ones
    (``--epochs``, ``--lr-encoder``, ``--lr-head``, ``--crop-seconds``, ``--patience``,
    ``--weight-decay``, ``--max-grad-norm``), then ``checks`` (``(ok, message)`` of the path's own)."""
    shared = [
        (epochs >= 1, f"--epochs must be at least 1, got {epochs}"),
        (lr_encoder >= 0, f"--lr-encoder must be >= 0, got {lr_encoder}"),
        (lr_head >= 0, f"--lr-head must be >= 0, got {lr_head}"),
        (crop_seconds > 0, f"--crop-seconds must be positive, got {crop_seconds}"),
        (patience is None or patience >= 1, f"--patience must be at least 1, got {patience}"),
        (weight_decay >= 0, f"--weight-decay must be >= 0, got {weight_decay}"),
        (max_grad_norm is None or max_grad_norm > 0, f"--max-grad-norm must be positive, got {max_grad_norm}"),
    ]
    for ok, message in shared + checks:
        if not ok:
            raise EmbedstoreError(message)


@dataclass
class PreparedEncoder:
    """An encoder ready to train: ``encoder`` (on the device), ``crop`` (the training crop in
    seconds, at most the encoder's window) and ``notes`` (what was changed or not possible)."""

    encoder: Any
    crop: float
    notes: list[str] = field(default_factory=list)


def prepare_encoder(request: EncoderRequest, device: str, *, crop_seconds: float, freeze_feature_encoder: bool,
                    spec_augment: bool, gradient_checkpointing: bool = False,
                    reader: str = "head") -> PreparedEncoder:
    """Load ``request`` on ``device`` for training: LayerDrop off (it would drop hidden states the
    ``reader`` reads), conv feature encoder frozen when asked, SpecAugment on/off, gradient
    checkpointing when asked, and the crop capped at the encoder's window.

    Raises:
        ModelError: the encoder cannot be loaded.
    """
    encoder = request.load(device)
    notes = []
    if disable_layerdrop(encoder) > 0:
        notes.append(f"LayerDrop turned off (it would drop hidden states the {reader} reads)")
    if freeze_feature_encoder and not freeze_conv_features(encoder):
        notes.append(f"{request.name}: no convolutional feature encoder to freeze; every weight is trained")
    set_spec_augment(encoder, spec_augment)
    if gradient_checkpointing and not enable_gradient_checkpointing(encoder):
        notes.append(f"{request.name}: gradient checkpointing is not supported; running without it")
    crop = float(crop_seconds)
    if crop > encoder.window_seconds:
        crop = float(encoder.window_seconds)
        notes.append(f"--crop-seconds {crop_seconds:g} is longer than the encoder's {crop:g} s window; "
                     f"using {crop:g} s")
    return PreparedEncoder(encoder, crop, notes)


def adamw(encoder: torch.nn.Module, head: torch.nn.Module, *, lr_encoder: float, lr_head: float,
          weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the encoder's trainable weights (group ``"encoder"``) and the head's (``"head"``),
    each group with its own learning rate; an empty group is left out."""
    groups = [{"params": [p for p in encoder.parameters() if p.requires_grad], "name": "encoder", "lr": lr_encoder},
              {"params": list(head.parameters()), "name": "head", "lr": lr_head}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)


def run_folder(out: str | Path | None, model: str, task: str) -> Path:
    """The run folder ``out`` (default ``finetune-<model>-<task>``), created if missing."""
    out_dir = Path(out if out is not None else f"finetune-{model}-{task}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def train(net: torch.nn.Module, head: torch.nn.Module, hooks: LoopHooks, settings: LoopSettings, out_dir: Path, *,
          lr_encoder: float, lr_head: float, weight_decay: float, resume: bool = False) -> FitResult:
    """Train ``net`` (its ``encoder`` and ``head`` are the two :func:`adamw` groups) with the shared
    loop :func:`~embedstore.heads.training.fit` in ``out_dir``, and return what it did."""
    opt = adamw(net.encoder, head, lr_encoder=lr_encoder, lr_head=lr_head, weight_decay=weight_decay)
    return fit(net, opt, hooks, settings, out_dir, resume=resume)
