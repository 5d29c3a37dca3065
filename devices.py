"""Choosing the torch device: one rule for every command (extract, probe, finetune, caption) and for
loading an encoder (:meth:`~embedstore.extract.encoders.registry.EncoderRequest.load`)."""

from __future__ import annotations

import torch

from embedstore.errors import ModelError

#: the ``--device`` values, as the CLI's help and the errors word them
DEVICE_CHOICES = "auto, cpu, cuda[:N] or mps"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a ``--device`` value names.

    ``"auto"`` is CUDA when a GPU is visible, else the CPU; ``"cpu"``, ``"cuda"``/``"cuda:N"`` and
    ``"mps"`` (Apple GPUs) are checked: asking for a device this machine lacks (no CUDA, no GPU N, no
    MPS) is a one-line :class:`~embedstore.errors.ModelError` (the device to run the model on), not a
    crash later. A ``torch.device`` is returned as is.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda", "mps") or (chosen.type != "cuda" and chosen.index):
        raise ModelError(f"--device must be {DEVICE_CHOICES}, got {device!r}")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"--device {device}: no CUDA device is visible (use --device cpu or auto)")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ModelError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {device}: MPS is not available on this machine (use --device cpu or auto)")
    return chosen
