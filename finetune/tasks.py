"""Registers the fine-tuning paths with the task registry (:mod:`embedstore.heads.tasks`).

Importing this module attaches :func:`~embedstore.finetune.train.finetune_classification` to the
classification task and :func:`~embedstore.finetune.caption.finetune_caption` to the caption task;
:func:`dispatch_finetune` then runs the one that ``task`` names.
"""

from __future__ import annotations

from typing import Any

from embedstore.heads.caption_metrics import DEFAULT_BERT
from embedstore.heads.tasks import (
    CAPTION,
    CLASSIFICATION,
    dispatch_finetune,
    register_finetune,
)

__all__ = ["dispatch_finetune"]

#: the classification-only options and their "not given" values
_LABEL_ONLY = {"layer": "weighted", "head_hidden": 512, "head_dropout": 0.25, "limit": None, "train_eval": "auto",
               "keep_optimizer": False}
#: the caption-only options and their "not given" values
_CAPTION_ONLY = {"t5": "t5-small", "bert": DEFAULT_BERT, "sentence_model": None, "layer_mix": "softmax",
                 "block_seconds": 0.5, "max_target_tokens": 64, "generation": None}


def _classification(dataset: Any, model: Any, *, task: str | None, **options: Any) -> Any:
    from embedstore.finetune import train

    return train.finetune_classification(dataset, model, task=task, **options)


def _caption(dataset: Any, model: Any, *, task: str | None, export_to_store: Any = None, **options: Any) -> Any:
    from embedstore.finetune import (
        caption,  # the record goes to the store's results folder
    )

    return caption.finetune_caption(dataset, model, task=task or CAPTION, store=export_to_store, **options)


def _format_classification(report: Any) -> str:
    from embedstore.finetune.report import format_finetune_report

    return format_finetune_report(report)


def _format_caption(report: Any) -> str:
    from embedstore.finetune.caption import format_caption_finetune_report

    return format_caption_finetune_report(report)


register_finetune(CLASSIFICATION, _classification, _format_classification, _CAPTION_ONLY)
register_finetune(CAPTION, _caption, _format_caption, _LABEL_ONLY)
