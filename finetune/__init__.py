"""End-to-end fine-tuning of an encoder on raw audio (the unfrozen path).

Entry points: :func:`finetune` (one run of any registered task, see :mod:`embedstore.heads.tasks`),
:func:`format_finetune_report` (its text summary) and :func:`load_finetuned` (read a checkpoint back).
Sub-modules: ``data`` (crops, clips, splits), ``model`` (encoder + layer selection + pooling + MLP
head), ``setup`` (shared encoder/optimiser setup), ``train`` (classification), ``caption``, ``tasks``
(registration with the task registry), ``report``. The loop itself is :mod:`embedstore.heads.training`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "finetune": "embedstore.finetune.train",
    "finetune_classification": "embedstore.finetune.train",
    "load_finetuned": "embedstore.finetune.train",
    "FinetuneConfig": "embedstore.finetune.train",
    "LoadedFinetune": "embedstore.finetune.train",
    "FinetuneReport": "embedstore.finetune.report",
    "format_finetune_report": "embedstore.finetune.report",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedstore.finetune' has no attribute {name!r}")
