"""The confusion matrix of a stored probe result (see :mod:`embedstore.store.records`) as a figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedstore.errors import EmbedstoreError
from embedstore.store.records import load_records, record_selected_on

from . import data
from .plotting import new_figure, save_figure, set_axes_title


@dataclass
class ConfusionResult:
    """A probe's confusion matrix ``[classes, classes]`` (rows: true label, columns: predicted)."""

    dataset: str
    task: str
    model: str
    layer: int | str
    head: str
    split: str
    labels: list[str]
    confusion: np.ndarray
    accuracy: float | None
    macro_f1: float | None
    selected_on: str | None = None  # the rows that chose the probe's hyper-parameters (never test)
    figures: list[Path] = field(default_factory=list)
    json_path: Path | None = None

    @property
    def row_normalized(self) -> np.ndarray:
        """``[classes, classes]`` fractions per true class (the recall on the diagonal); 0 for empty rows."""
        c = self.confusion.astype(np.float64)
        tot = c.sum(axis=1, keepdims=True)
        return np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)


def _layer_key(layer: int | str) -> str:
    return str(int(layer)) if isinstance(layer, (int, np.integer)) or str(layer).lstrip("-").isdigit() else str(layer)


def find_result(results: list[dict], task: str, model: str, layer: int | str, head: str,
                dataset: str | None = None) -> dict:
    """The one stored result of (task, model, layer, head[, dataset]); a clear error listing what exists."""
    key = _layer_key(layer)
    hits = [r for r in results
            if r.get("task") == task and r.get("model") == model and r.get("head") == head
            and _layer_key(r.get("layer")) == key and (dataset is None or r.get("dataset") == dataset)]
    if not hits:
        have = sorted({f"{r.get('task')}/{r.get('model')}/layer {r.get('layer')}/{r.get('head')}" for r in results})
        shown = ", ".join(have[:12]) + (" ..." if len(have) > 12 else "") if have else "none"
        raise EmbedstoreError(f"no stored probe result for task {task!r}, model {model!r}, layer {layer!r}, "
                              f"head {head!r} (stored: {shown})")
    if len({r.get("dataset") for r in hits}) > 1:
        raise EmbedstoreError(f"probe results for {model!r} layer {layer!r} exist in several datasets; choose one "
                              f"with --dataset")
    default = [r for r in hits if r.get("preset", "default") == "default"]
    return (default or hits)[-1]


def _selected_on(record: dict) -> str | None:
    """The rows that chose the record's hyper-parameters (``valid``, ``train_cv``, ...), if recorded."""
    if record.get("selected_on") or record.get("protocol"):
        return record_selected_on(record)
    return None


def confusion(
    store_path: str | Path,
    task: str,
    model: str,
    layer: int | str,
    head: str,
    split: str = "test",
    dataset: str | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png",),
) -> ConfusionResult:
    """Plot the confusion matrix of the stored probe result (task, model, layer, head) on ``split``.

    Cells are coloured by the fraction of each true class (rows) and annotated with counts. Writes
    ``confusion_<task>_<model>_layer<layer>_<head>_<split>`` figure(s) and ``.json`` into ``out``.
    """
    result = find_result(load_records(store_path, dataset=dataset, task=task), task, model, layer, head, dataset)
    metrics = result.get("metrics", {})
    if split not in metrics or "confusion" not in metrics[split]:
        raise EmbedstoreError(f"probe result {task}/{model}/layer {layer}/{head} has no confusion matrix for "
                              f"split {split!r} (splits: {sorted(metrics)})")
    m = metrics[split]
    res = ConfusionResult(
        dataset=str(result.get("dataset")), task=task, model=model, layer=result.get("layer"), head=head,
        split=split, labels=[str(x) for x in m.get("labels") or range(len(m["confusion"]))],
        confusion=np.asarray(m["confusion"], dtype=np.int64), accuracy=m.get("accuracy"),
        macro_f1=m.get("macro_f1"), selected_on=_selected_on(result),
    )
    out_dir = data.out_dir_for(store_path, out)
    stem = data.file_stem("confusion", res.dataset, task, model, f"layer{res.layer}", head, split)
    res.figures = save_figure(_figure(res), out_dir, stem, formats)
    res.json_path = data.write_json(out_dir / f"{stem}.json", {
        "analysis": "confusion", "dataset": res.dataset, "task": task, "model": model, "layer": res.layer,
        "head": head, "split": split, "labels": res.labels, "confusion": res.confusion,
        "row_normalized": res.row_normalized, "accuracy": res.accuracy, "macro_f1": res.macro_f1,
        "selected_on": res.selected_on,
    })
    return res


def _figure(res: ConfusionResult):
    k = len(res.labels)
    side = float(np.clip(0.55 * k + 2.5, 4.5, 14.0))
    fig, (ax,) = new_figure(1, ncols=1, panel_size=(side + 1.2, side))
    frac = res.row_normalized
    im = ax.imshow(frac, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")
    fs = 8 if k <= 12 else 6
    for i in range(k):
        for j in range(k):
            if res.confusion[i, j]:
                ax.text(j, i, str(res.confusion[i, j]), ha="center", va="center", fontsize=fs,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), res.labels, rotation=45, ha="right", fontsize=fs + 1)
    ax.set_yticks(range(k), res.labels, fontsize=fs + 1)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    scores = []
    if res.accuracy is not None:
        scores.append(f"accuracy {res.accuracy:.3f}")
    if res.macro_f1 is not None:
        scores.append(f"macro-F1 {res.macro_f1:.3f}")
    chosen = f" · chosen on {res.selected_on}" if res.selected_on else ""
    set_axes_title(ax, f"{res.task}: {res.model} · layer {res.layer} · {res.head} probe · {res.split}\n"
                       f"{res.dataset}, n={int(res.confusion.sum())}" + (f" · {', '.join(scores)}" if scores else "")
                       + chosen)
    return fig


def format_confusion(res: ConfusionResult) -> str:
    """The confusion matrix as a text table with per-class recall."""
    w = max([len(x) for x in res.labels] + [11])
    corner = "true/pred"
    lines = [f"{res.task} confusion ({res.split}): {res.model} layer {res.layer}, {res.head} head"
             + (f", accuracy {res.accuracy:.3f}" if res.accuracy is not None else "")
             + (f", selected on {res.selected_on}" if res.selected_on else ""),
             f"{corner:<{w}} " + " ".join(f"{x[:6]:>6}" for x in res.labels) + "  recall"]
    rec = np.diag(res.row_normalized)
    for i, name in enumerate(res.labels):
        lines.append(f"{name:<{w}} " + " ".join(f"{v:>6d}" for v in res.confusion[i]) + f"  {rec[i]:.3f}")
    lines += [f"figure: {f}" for f in res.figures] + ([f"numbers: {res.json_path}"] if res.json_path else [])
    return "\n".join(lines)
