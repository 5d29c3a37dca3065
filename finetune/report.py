"""What a fine-tuning run returns (:class:`FinetuneReport`), its text summary and its training curve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator
from tqdm import tqdm

from embedstore.figures import new_figure, save_figure
from embedstore.store.records import ProbeRecord

CURVE_STEM = "training_curve"


@dataclass
class FinetuneReport:
    """The outcome of :func:`~embedstore.finetune.train.finetune`.

    Attributes:
        out_dir: the run folder (checkpoints, history, figure, metrics).
        model_key: the result's model name, e.g. ``"mert+ft-genre"`` (also the store entry's key).
        record: the :class:`~embedstore.store.records.ProbeRecord` of the run (``head="finetune"``).
        record_paths: where the record was written (``out/metrics.json``, and the store's results folder).
        history: one dict per epoch: ``epoch, train_loss, valid_accuracy, valid_loss, clips_per_s,
            seconds, skipped``.
        best_epoch: the epoch whose weights were kept (highest validation accuracy, then lowest loss).
        epochs_run: epochs trained in total (over resumes).
        stopped_early: training stopped because validation stopped improving (``patience``).
        resumed_from: the epoch ``last.pt`` held when resuming, else None.
        best_path, last_path, history_path, curve_path: files in ``out_dir``.
        export: the :class:`~embedstore.extract.pipeline.ExtractSummary` of ``export_to_store``.
        notes: things the user should know (frozen modules, precision fallback, skipped clips).
        checkpoint_bytes: ``{"best.pt": bytes, "last.pt": bytes}`` at the end of the run.
        last_has_optimizer: whether ``last.pt`` holds the optimizer state (``--keep-optimizer``).
    """

    out_dir: Path
    model_key: str
    record: ProbeRecord
    record_paths: list[Path]
    history: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None
    best_path: Path
    last_path: Path
    history_path: Path
    curve_path: Path | None
    export: Any = None
    notes: list[str] = field(default_factory=list)
    checkpoint_bytes: dict[str, int] = field(default_factory=dict)
    last_has_optimizer: bool = False


def training_curve_figure(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> Figure:
    """Train and validation loss (left) and validation accuracy (right) per epoch; every line named in
    its panel's legend, the x ticks the epochs themselves (integers, however few epochs)."""
    epochs = [int(h["epoch"]) for h in history]
    fig, (ax_loss, ax_acc) = new_figure(2, ncols=2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax_loss.plot(epochs, [h["valid_loss"] for h in history], marker="s", linestyle="--", label="validation loss")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * h["valid_accuracy"] for h in history], marker="o", color="tab:green",
                label="validation accuracy")
    ax_acc.set(xlabel="epoch", ylabel="accuracy %", title="validation accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(FixedLocator(epochs) if len(epochs) <= 12 else MaxNLocator(integer=True))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.legend(frameon=False, fontsize=8)
    return fig


def plot_training_curve(history: Sequence[dict[str, Any]], out_dir: Path, best_epoch: int | None = None) -> Path:
    """:func:`training_curve_figure` saved as ``out_dir/training_curve.png``; returns its path."""
    return save_figure(training_curve_figure(history, best_epoch), out_dir, CURVE_STEM)[0]


def format_finetune_report(report: FinetuneReport) -> str:
    """Plain-text summary: per-epoch table, test metrics with 95% CI, layer weights and files written."""
    rec = report.record
    lines = [f"fine-tuned {rec['model']} on {rec['dataset']}/{rec['task']} (layer {rec['layer']})"]
    if report.resumed_from is not None:
        lines.append(f"resumed from {report.last_path} after epoch {report.resumed_from}")
    header = f"{'epoch':>5}  {'train loss':>10}  {'valid loss':>10}  {'valid acc %':>11}  {'clips/s':>8}"
    lines += [header, "-" * len(header)]
    for h in report.history:
        mark = "  *best" if h["epoch"] == report.best_epoch else ""
        lines.append(f"{h['epoch']:>5}  {h['train_loss']:>10.4f}  {h['valid_loss']:>10.4f}  "
                     f"{100 * h['valid_accuracy']:>11.1f}  {h['clips_per_s']:>8.1f}{mark}")
    if report.stopped_early:
        lines.append(f"stopped early after epoch {report.epochs_run} (no validation gain)")
    run = rec.get("finetune", {})
    if run.get("limit"):
        lines.append(f"--limit {run['limit']}: at most {run['limit']} clips per split (seeded, stratified)")
    for split in ("train", "valid", "test"):
        m = rec["metrics"].get(split)
        if m:
            lo, hi = m["ci95"]["accuracy"]
            lines.append(f"{split}: accuracy {100 * m['accuracy']:.1f}% [95% CI {100 * lo:.1f}, {100 * hi:.1f}], "
                         f"macro-F1 {100 * m['macro_f1']:.1f}% (n={m['n']}{_subsample(run, split)})")
    if rec.get("layer_weights"):
        lines.append("layer weights: " + " ".join(f"{w:.3f}" for w in rec["layer_weights"]))
    lines.append(f"best checkpoint: {report.best_path} (epoch {report.best_epoch})")
    if report.checkpoint_bytes:
        what = {"best.pt": "weights", "last.pt": "weights + optimizer state" if report.last_has_optimizer
                else "weights, no optimizer state"}
        lines.append("checkpoint sizes: " + ", ".join(f"{name} {tqdm.format_sizeof(size, 'B', 1000)} "
                                                      f"({what.get(name, '')})"
                                                      for name, size in report.checkpoint_bytes.items()))
    lines.append("files: " + ", ".join(str(p) for p in [*report.record_paths, report.history_path,
                                                          *([report.curve_path] if report.curve_path else [])]))
    if report.export is not None:
        ex = report.export
        written = sum(m.written for m in ex.models)
        lines.append(f"exported {report.model_key} to {ex.store}: {written} clips written, {len(ex.failures)} failed")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _subsample(run: dict[str, Any], split: str) -> str:
    """`` of N, subsample`` after the train split's n when only a subsample was evaluated."""
    rule = run.get("train_eval")
    if split != "train" or not rule or rule["clips"] >= rule["of"]:
        return ""
    return f" of {rule['of']}, seeded subsample; --train-eval full for all"
