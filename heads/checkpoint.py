"""Crash-safe run files of a training run (:func:`embedstore.heads.training.fit`): ``last.pt``,
``best.pt``, ``history.json``.

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a run killed at any moment leaves either the old or the new file, never a torn
one. Checkpoints hold only tensors and plain Python values (the RNG states are converted), so they
load with ``torch.load(weights_only=True)``.

``last.pt``: ``{"format", "epoch", "model" (encoder + head state dict), "optimizer", "scaler",
"rng", "best_key", "best_epoch", "since_best", "stopped", "history"}`` plus the run's own keys
(fine-tuning: ``"config", "labels"``);
``"optimizer"``/``"scaler"`` (AdamW's two moments: about twice the trained weights) are written
while training, so an interrupted run resumes exactly, and left out of the finished run's file
unless ``--keep-optimizer``.
``best.pt``: ``{"format", "epoch", "model", "valid"}`` plus the run's own keys (no optimizer state).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedstore.errors import ModelError

CHECKPOINT_FORMAT = "embedstore.finetune/1"
LAST = "last.pt"
BEST = "best.pt"


def _atomic(path: Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``state`` (plus the format tag) atomically to ``path``; returns ``path``."""
    return _atomic(Path(path), lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only`` safe loading).

    Raises:
        ModelError: missing, unreadable or not a fine-tuning checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torn, foreign or corrupt file
        raise ModelError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not an embedstore fine-tuning checkpoint")
    return state


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1)
    return _atomic(Path(path), write)


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python global RNG states as tensors and plain values.

    transformers' SpecAugment masks draw from numpy's global RNG and dropout from torch's, so all
    are saved for an exact resume.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
