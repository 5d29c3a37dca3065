"""The task registry: what is predicted, and how each kind of task is probed and fine-tuned.

A :class:`Task` ties together, for one kind of target (class labels, captions; room for tagging
and regression), its splits and head (inside its probe and fine-tune functions), the rule that
chooses "best" on validation, the record it writes and the report it prints. ``probe`` and
``finetune`` (library and CLI) dispatch through :func:`task_for`; nothing else branches on the
task's name.

    task_for(None | "genre" | "label" | ...) -> CLASSIFICATION      (a class-label column)
    task_for("caption")                       -> CAPTION            (a caption column)
    task_for("tags", store=path)              -> TAG                (a stored tagging column)
    task_for("valence", store=path)           -> REGRESS            (a stored numeric column)
    task_for(name, kind="classify"|"tag"|"regress")                 (``--task-kind``: stated)

The fine-tune functions live in :mod:`embedstore.finetune` (which may import heads/, not the
reverse): importing it registers them with :func:`register_finetune`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedstore.errors import EmbedstoreError

#: the column name (and column kind) of captions in datasets and stores
CAPTION = "caption"
CLASSIFICATION = "classification"
TAG = "tag"
REGRESS = "regress"
#: ``--task-kind`` values -> registry names
TASK_KINDS = {"classify": CLASSIFICATION, "tag": TAG, "regress": REGRESS}


@dataclass
class Task:
    """One kind of task.

    Attributes:
        name: the registry name (``classification``, ``caption``).
        column_kind: the kind of dataset/store column it reads (``label``, ``caption``).
        selection: the rule that chooses the best epoch/hyper-parameters, always on validation
            (written into the records' ``protocol.selection``).
        probe: ``(store, task, **options) -> (report, text, json_text, warnings)``: train heads on
            stored embeddings and describe the result.
        finetune: ``(dataset_request, encoder_request, *, task, **options) -> report`` (registered
            by :mod:`embedstore.finetune`); finetune_format: ``report -> text``.
        finetune_unset: options of other tasks' fine-tune with the value that means "not given";
            another value is an error naming the option.
    """

    name: str
    column_kind: str
    selection: str
    probe: Callable[..., tuple[Any, str, str, list[str]]]
    finetune: Callable[..., Any] | None = None
    finetune_format: Callable[[Any], str] | None = None
    finetune_unset: dict[str, Any] = field(default_factory=dict)


def _probe_classification(store: str | Path, task: str | None, *, models: list[str] | None, dataset: str | None,
                          layer: int | str, head: str, preset: str, seeds: int, device: str, progress: bool,
                          table_format: str = "text", **_caption_options: Any) -> tuple[Any, str, str, list[str]]:
    """:func:`~embedstore.heads.probe.run_probe`, its table as ``table_format`` (see
    :func:`~embedstore.heads.tables.format_table`; the caption-only options are not used)."""
    from embedstore.heads.probe import run_probe
    from embedstore.heads.tables import check_table_format, format_table

    check_table_format(table_format)  # fail before any training
    report = run_probe(store, task, models=models, dataset=dataset, layer=layer, head=head, preset=preset,
                       seeds=seeds, device=device, progress=progress)
    text = format_table(report.records, table_format)
    if report.paths and table_format == "text":
        text += f"\nresults: {Path(report.paths[0]).parent}"
    return report, text, json.dumps([r.to_dict() for r in report.records], indent=2), list(report.warnings)


def _probe_caption(store: str | Path, task: str | None, *, models: list[str] | None, dataset: str | None,
                   layer: int | str, device: str, progress: bool, t5: str, bert: str, layer_mix: str, epochs: int,
                   batch_size: int, lr: float, seed: int, generation: Any = None,
                   **_label_options: Any) -> tuple[Any, str, str, list[str]]:
    """:func:`~embedstore.heads.caption_probe.run_caption_probe` on exactly one model; ``generation`` is a
    :class:`~embedstore.heads.captioner.GenerationSettings` or a dict of its fields (None: defaults)."""
    from embedstore.heads.caption_probe import format_caption_report, run_caption_probe
    from embedstore.heads.captioner import GenerationSettings

    if not models or len(models) != 1:
        raise EmbedstoreError("--task caption trains one captioner: give exactly one --model")
    report = run_caption_probe(store, model=models[0], dataset=dataset, layers=layer, t5=t5, bert=bert,
                               layer_mix=layer_mix, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                               device=device, progress=progress,
                               generation=GenerationSettings(**generation) if isinstance(generation, dict)
                               else generation or GenerationSettings())
    return report, format_caption_report(report), json.dumps(report.record.to_dict(), indent=2), []


def _probe_target(store: str | Path, task: str | None, *, models: list[str] | None, dataset: str | None,
                  layer: int | str, head: str, preset: str, seeds: int, device: str, kind: str | None = None,
                  **_other_options: Any) -> tuple[Any, str, str, list[str]]:
    """:func:`~embedstore.heads.target_probe.run_target_probe` (tagging or regression, ``kind`` or the
    column's stored kind) and its table."""
    from embedstore.heads.target_probe import format_target_table, run_target_probe

    if task is None:
        raise EmbedstoreError("--task: name the tagging or regression column to probe")
    records, paths, notes = run_target_probe(store, task, kind=kind, models=models, dataset=dataset, layer=layer,
                                             head=head, preset=preset, seeds=seeds, device=device)
    text = format_target_table(records) + (f"\nresults: {Path(paths[0]).parent}" if paths else "")
    return records, text, json.dumps([r.to_dict() for r in records], indent=2), notes


_REGISTRY: dict[str, Task] = {
    CLASSIFICATION: Task(CLASSIFICATION, "label", "best validation accuracy, then validation loss",
                         _probe_classification),
    CAPTION: Task(CAPTION, CAPTION, "lowest validation loss (teacher-forced, per token)", _probe_caption),
    TAG: Task(TAG, "tags", "best validation macro ROC-AUC (MLP: lowest validation BCE)", _probe_target),
    REGRESS: Task(REGRESS, "number", "best validation R² (MLP: lowest validation MSE)", _probe_target),
}


def tasks() -> dict[str, Task]:
    """Every registered task by name."""
    return dict(_REGISTRY)


def task_for(task: str | None, kind: str | None = None, store: str | Path | None = None) -> Task:
    """The :class:`Task` of a dataset/store column name: ``kind`` (``--task-kind``: ``classify``,
    ``tag``, ``regress``) when stated; else ``caption`` is captioning, a column stored as tags or
    numbers in ``store`` (its datasets' ``tasks``) is tagging or regression, and any other name (or
    None: the dataset's only class-label column) is classification.

    Raises:
        EmbedstoreError: an unknown ``kind`` (named as ``--task-kind``).
    """
    if kind is not None:
        if kind not in TASK_KINDS:
            raise EmbedstoreError(f"--task-kind {kind!r}: choose one of {', '.join(TASK_KINDS)}")
        return _REGISTRY[TASK_KINDS[kind]]
    if task == CAPTION:
        return _REGISTRY[CAPTION]
    if task is not None and store is not None and Path(store).exists():
        from embedstore.store import open_store
        from embedstore.store.specs import dataset_tasks

        with open_store(store, mode="r") as st:
            columns = {dataset_tasks(st, ds).get(task) for ds in st.datasets()}
        for name in (TAG, REGRESS):
            if _REGISTRY[name].column_kind in columns:
                return _REGISTRY[name]
    return _REGISTRY[CLASSIFICATION]


def register_finetune(name: str, run: Callable[..., Any], format_report: Callable[[Any], str],
                      unset: dict[str, Any] | None = None) -> None:
    """Attach the fine-tune function and its report formatter to the registered task ``name``;
    ``unset``: the options of the other tasks that this one does not take, with their "not
    given" values."""
    task = _REGISTRY[name]
    task.finetune, task.finetune_format, task.finetune_unset = run, format_report, dict(unset or {})


def dispatch_finetune(dataset: Any, model: Any, task: str | None, options: dict[str, Any]) -> Any:
    """Run the fine-tune of ``task_for(task)`` with ``options``.

    Raises:
        EmbedstoreError: an option of another task given a value (naming it as a CLI option).
    """
    entry = task_for(task)
    if entry.finetune is None:
        raise EmbedstoreError(f"no fine-tuning registered for {entry.name} tasks (import embedstore.finetune.tasks)")
    given = [name for name, unset in entry.finetune_unset.items() if name in options and options[name] != unset]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise EmbedstoreError(f"{flags} {'applies' if len(given) == 1 else 'apply'} to other tasks, "
                              f"not --task {task}")
    kept = {k: v for k, v in options.items() if k not in entry.finetune_unset}
    return entry.finetune(dataset, model, task=task, **kept)
