"""Choosing the torch device: one rule for every command (extract, probe, finetune, caption)."""

from __future__ import annotations

import torch

from embedstore.errors import EmbedstoreError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a ``--device`` value names.

    ``"auto"`` is CUDA when a GPU is visible, else the CPU; ``"cpu"`` and ``"cuda"``/``"cuda:N"`` are
    checked (asking for CUDA on a machine without it is an :class:`EmbedstoreError`, not a crash later).
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EmbedstoreError(f"--device {device}: no CUDA device is visible (use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise EmbedstoreError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
