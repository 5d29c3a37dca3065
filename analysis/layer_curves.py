"""Per-layer curves: which layer of each model carries the label information.

Two views per model: the stored probe accuracy per layer (when probes were run) and a training-free
separability score computed from the embeddings (silhouette or Fisher ratio on standardised
features), so the best layer is visible even before any probe is trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.ticker import MaxNLocator

from embedstore.errors import EmbedstoreError

from . import data
from .metrics import separability
from .plotting import new_figure, save_figure


@dataclass
class LayerCurve:
    """One model's per-layer numbers.

    Attributes:
        separability: ``[layers]`` score per layer (NaN where undefined).
        probe_accuracy: layer index -> best stored held-out probe accuracy (may be empty).
        mixed_probe_accuracy: e.g. ``{"weighted": acc}`` for probes over a learned mix of all layers.
        best_layer: argmax of the probe accuracy when there is any, else of the separability.
        best_by: "probe accuracy" or the separability method's name.
    """

    model: str
    layer_names: list[str]
    separability: list[float]
    probe_accuracy: dict[int, float]
    best_layer: int
    best_by: str
    n: int
    n_total: int
    mixed_probe_accuracy: dict[str, float] = field(default_factory=dict)


@dataclass
class LayerCurvesResult:
    """What :func:`layers` computed and wrote."""

    dataset: str
    split: str | list[str] | None
    method: str
    metric: str
    curves: list[LayerCurve]
    figures: list[Path] = field(default_factory=list)
    json_path: Path | None = None


def separability_curve(store, dataset: str, model: str, names: Sequence[str], split, method: str,
                       metric: str, max_points: int | None, seed: int) -> tuple[list[float], int, int]:
    """Separability per layer of one model: (``[layers]`` scores, rows used, rows available)."""
    scores, n, n_total = [], 0, 0
    for i in range(len(names)):
        view = data.load_view(store, dataset, model, i, split, max_points, seed, names)
        scores.append(separability(view.X, view.labels, method, metric, max_points=None))
        n, n_total = view.n, view.n_total
    return scores, n, n_total


def _int_layers(acc: dict[int | str, float]) -> dict[int, float]:
    return {k: v for k, v in acc.items() if isinstance(k, int)}


def _argmax(values: dict[int, float]) -> int | None:
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    return max(finite, key=lambda k: (finite[k], -k)) if finite else None


def best_layer(store, store_path, dataset: str, model: str, split=None, task: str | None = None,
               method: str = "silhouette", metric: str = "cosine", max_points: int | None = 2000,
               seed: int = 0) -> tuple[int, str]:
    """The layer index with the best stored probe accuracy, else the best separability; and which rule chose it."""
    acc = _int_layers(data.probe_accuracy_by_layer(data.probe_results(store_path, dataset, model, task), model))
    pick = _argmax(acc)
    if pick is not None:
        return pick, "probe accuracy"
    names = data.layer_names(store, dataset, model)
    scores, _, _ = separability_curve(store, dataset, model, names, split, method, metric, max_points, seed)
    pick = _argmax(dict(enumerate(scores)))
    if pick is None:
        raise EmbedstoreError(
            f"cannot choose a best layer for {model!r}: no probe results and no labelled classes to score")
    return pick, method


def layers(
    store_path: str | Path,
    models: Sequence[str] | str | None = None,
    split: str | list[str] | None = "train",
    dataset: str | None = None,
    task: str | None = None,
    method: str = "silhouette",
    metric: str = "cosine",
    out: str | Path | None = None,
    formats: Sequence[str] = ("png",),
    max_points: int | None = 2000,
    seed: int = 0,
) -> LayerCurvesResult:
    """Per-layer probe accuracy (when stored) and separability curves of each model, as one figure.

    Separability is computed on a seeded subsample of ``max_points`` rows of ``split``. Writes
    ``layers_<dataset>_<models>_<split>.<fmt>`` and a ``.json`` of the numbers into ``out``.
    """
    with data.open_for_reading(store_path) as store:
        ds = data.resolve_dataset(store, dataset)
        names_of = {m: data.layer_names(store, ds, m) for m in data.resolve_models(store, ds, models)}
        results = data.probe_results(store_path, ds, task=task)
        curves = []
        for model, names in names_of.items():
            scores, n, n_total = separability_curve(store, ds, model, names, split, method, metric, max_points, seed)
            all_acc = data.probe_accuracy_by_layer(results, model)
            acc = _int_layers(all_acc)
            mixed = {str(k): v for k, v in all_acc.items() if not isinstance(k, int)}
            pick, by = _argmax(acc), "probe accuracy"
            if pick is None:
                pick, by = _argmax(dict(enumerate(scores))), method
            curves.append(LayerCurve(model, names, scores, acc, -1 if pick is None else pick, by, n, n_total,
                                     mixed))
        res = LayerCurvesResult(ds, split, method, metric, curves)

    out_dir = data.out_dir_for(store_path, out)
    stem = data.file_stem("layers", ds, "_vs_".join(names_of), data.split_tag(split))
    res.figures = save_figure(_figure(res), out_dir, stem, formats)
    res.json_path = data.write_json(out_dir / f"{stem}.json", {
        "analysis": "layers", "dataset": ds, "split": split, "method": method, "metric": metric,
        "max_points": max_points, "seed": seed, "task": task,
        "models": [{"model": c.model, "layer_names": c.layer_names, "separability": c.separability,
                    "probe_accuracy": {str(k): v for k, v in sorted(c.probe_accuracy.items())},
                    "mixed_probe_accuracy": c.mixed_probe_accuracy, "best_layer": c.best_layer,
                    "best_by": c.best_by, "n": c.n, "n_total": c.n_total}
                   for c in curves],
    })
    return res


def _score_label(method: str, metric: str) -> str:
    return f"silhouette ({metric}, standardised)" if method == "silhouette" else "Fisher ratio tr(S_B)/tr(S_W)"


def _figure(res: LayerCurvesResult):
    has_probe = any(c.probe_accuracy or c.mixed_probe_accuracy for c in res.curves)
    fig, axes = new_figure(2 if has_probe else 1, ncols=1, panel_size=(7.0, 3.4))
    cmap = matplotlib.colormaps["tab10"]
    split = data.split_tag(res.split)
    for k, c in enumerate(res.curves):
        color = cmap(k % 10)
        panels = [(axes[-1], dict(enumerate(c.separability)))]
        if has_probe:
            panels.insert(0, (axes[0], c.probe_accuracy))
        for ax, values in panels:
            xs = sorted(i for i, v in values.items() if math.isfinite(v))
            if not xs:
                continue
            ys = [values[i] for i in xs]
            ax.plot(xs, ys, marker="o", markersize=4, color=color, label=c.model)
            top = _argmax(values)  # each panel marks its own curve's best layer
            ax.plot([top], [values[top]], marker="*", markersize=14, color=color, markeredgecolor="black",
                    linestyle="")
        if has_probe:
            for name, acc in sorted(c.mixed_probe_accuracy.items()):
                axes[0].axhline(acc, color=color, linestyle="--", linewidth=1, label=f"{c.model} ({name})")
    n_txt = ", ".join(f"{c.model}: n={c.n}" + (f" of {c.n_total}" if c.n < c.n_total else "") for c in res.curves)
    if has_probe:
        axes[0].set_ylabel("probe accuracy (held-out)")
        axes[0].set_title(f"{res.dataset}: stored probe accuracy per layer (best head, held-out split)", fontsize=9)
    axes[-1].set_ylabel(_score_label(res.method, res.metric))
    axes[-1].set_title(f"{res.dataset} ({split}): label separability per layer\n{n_txt}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("layer index")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title="model (★ best layer)", title_fontsize=8)
    return fig


def format_layers(res: LayerCurvesResult) -> str:
    """A terminal table: one row per model and layer, with the best layer marked."""
    head = f"{'model':<28} {'layer':>5}  {'name':<18} {'probe acc':>9}  {res.method:>10}"
    lines = [f"layer curves for {res.dataset} ({data.split_tag(res.split)}), {_score_label(res.method, res.metric)}",
             head, "-" * len(head)]
    for c in res.curves:
        for i, name in enumerate(c.layer_names):
            acc = c.probe_accuracy.get(i)
            acc_txt = f"{acc:9.3f}" if acc is not None else f"{'-':>9}"
            mark = "  <- best" if i == c.best_layer else ""
            lines.append(f"{c.model:<28} {i:>5}  {name:<18} {acc_txt}  {c.separability[i]:>10.4f}{mark}")
        for name, acc in sorted(c.mixed_probe_accuracy.items()):
            lines.append(f"{c.model:<28} {name:>5}  {'(all layers)':<18} {acc:9.3f}")
        lines.append(f"{c.model}: best layer {c.best_layer} ({c.layer_names[c.best_layer]}) by {c.best_by}"
                     if c.best_layer >= 0 else f"{c.model}: no best layer (no labels)")
    lines += [f"figure: {p}" for p in res.figures] + ([f"numbers: {res.json_path}"] if res.json_path else [])
    return "\n".join(lines)


__all__ = ["LayerCurve", "LayerCurvesResult", "best_layer", "format_layers", "layers", "separability_curve"]
