"""End-to-end fine-tuning of an encoder on raw audio (the unfrozen path).

Entry points: :func:`finetune` (one run, returns a :class:`FinetuneReport`),
:func:`format_finetune_report` (its text summary) and :func:`load_finetuned` (read a checkpoint back).
Sub-modules: ``data`` (crops, clips, splits), ``model`` (encoder + layer selection + pooling + MLP
head), ``checkpoint`` (atomic run files), ``report``, ``train``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "finetune": "embedstore.finetune.train",
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
