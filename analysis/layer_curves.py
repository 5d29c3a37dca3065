"""Per-layer curves: which layer of each model carries the label information.

Two views per model: the stored probes' validation accuracy per layer (when probes were run) and a
training-free separability score computed from the embeddings (silhouette or Fisher ratio on
standardised features), so the best layer is visible even before any probe is trained.

The best layer is chosen on validation, never on test: by the probes' validation accuracy (the
dataset's valid split, or the train carve-out / inner CV the probe used without one), else by the
separability on the valid rows (train rows without a valid split). Only the chosen layer's test
accuracy is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

from embedstore.errors import EmbedstoreError
from embedstore.store import specs
from embedstore.store.records import SELECTED_ON, load_records, record_selected_on, selection_score

from . import data
from .metrics import separability
from .plotting import LEGEND_WIDTH, add_series_legend, layer_axis_groups, new_figure, plot_layers, save_figure, \
    set_axes_title, set_layer_axis


@dataclass(frozen=True)
class BestLayer:
    """A model's chosen layer and what chose it (never the test split).

    Attributes:
        layer: layer index >= 0.
        by: "probe accuracy", or the separability method ("silhouette", "fisher").
        selected_on: the rows whose score chose it: for probes a ``selected_on`` key of the records
            (``valid``, ``valid_fold``, ``train_carveout``, ``train_cv``); for separability the split
            tag of the rows scored (``valid``, ``train``, ``all`` when the dataset has no splits).
        score: the score that chose it (validation accuracy, or the separability).
        head: head (``/preset`` when not default) of the chosen probe record; None for separability.
        test_accuracy: the chosen probe's test accuracy, the one test number read; None otherwise.
    """

    layer: int
    by: str
    selected_on: str
    score: float
    head: str | None = None
    test_accuracy: float | None = None

    @property
    def label(self) -> str:
        """How the layer was chosen, for titles: "valid accuracy", "silhouette on valid rows"."""
        if self.by != "probe accuracy":
            return f"{self.by} on {self.selected_on} rows"
        return SELECTED_ON.get(self.selected_on, f"{self.selected_on} accuracy")


@dataclass
class LayerCurve:
    """One model's per-layer numbers.

    Attributes:
        separability: ``[layers]`` score per layer on the asked split (NaN where undefined).
        valid_accuracy: layer index -> validation accuracy of the stored probe chosen for that layer
            (per layer the head/preset with the best validation accuracy; may be empty). The rows
            it was measured on are ``choice.selected_on``.
        choice: the chosen best layer: the best ``valid_accuracy`` when there is any, else the best
            separability on the selection split (:func:`~embedstore.analysis.data.selection_split`);
            None when nothing can choose (``no_choice`` says why).
        mixed_valid_accuracy: e.g. ``{"weighted": acc}`` for probes over a learned mix of all layers.
    """

    model: str
    layer_names: list[str]
    separability: list[float]
    valid_accuracy: dict[int, float]
    choice: BestLayer | None
    n: int
    n_total: int
    mixed_valid_accuracy: dict[str, float] = field(default_factory=dict)
    no_choice: str = ""

    @property
    def best_layer(self) -> int:
        """The chosen layer's index, -1 when there is none."""
        return -1 if self.choice is None else self.choice.layer


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

    @property
    def selection(self) -> str:
        """How the curves' best layers were chosen, e.g. "valid accuracy" ("" when none was)."""
        return " / ".join(sorted({c.choice.label for c in self.curves if c.choice is not None}))


def separability_curve(store, dataset: str, model: str, names: Sequence[str], split, method: str,
                       metric: str, max_points: int | None, seed: int) -> tuple[list[float], int, int]:
    """Separability per layer of one model: (``[layers]`` scores, rows used, rows available)."""
    scores, n, n_total = [], 0, 0
    for i in range(len(names)):
        view = data.load_view(store, dataset, model, i, split, max_points, seed, names)
        scores.append(separability(view.X, view.labels, method, metric, max_points=None))
        n, n_total = view.n, view.n_total
    return scores, n, n_total


def _argmax(values: dict[int, float]) -> int | None:
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    return max(finite, key=lambda k: (finite[k], -k)) if finite else None


def probe_curve(results: list[dict], model: str) -> tuple[dict[int, float], dict[str, float], BestLayer | None]:
    """From stored probe records: ``(valid accuracy per int layer, per mixed layer such as
    "weighted", the layer with the best valid accuracy or None)``. Ties go to the lower layer; test
    metrics are read only for the chosen record."""
    scores = {k: selection_score(r) for k, r in specs.best_per_layer(results, model).items()}
    ints = {k: v for k, v in scores.items() if isinstance(k, int)}
    mixed = {str(k): v for k, v in scores.items() if not isinstance(k, int)}
    best = specs.best_layer(results, model)
    if best is None:
        return ints, mixed, None
    pick, rec = best
    head = rec.get("head", "?") + ("" if rec.get("preset", "default") == "default" else f"/{rec['preset']}")
    test = rec.get("metrics", {}).get("test", {}).get("accuracy")
    return ints, mixed, BestLayer(pick, "probe accuracy", record_selected_on(rec), ints[pick], head, test)


def separability_choice(store, dataset: str, model: str, method: str = "silhouette", metric: str = "cosine",
                        max_points: int | None = 2000, seed: int = 0,
                        known: tuple[str, list[float]] | None = None) -> BestLayer:
    """The layer with the best separability on the selection split (valid rows, else train; see
    :func:`~embedstore.analysis.data.selection_split`). ``known``: ``(split tag, scores)`` of a curve
    already computed with the same settings, reused when it is on that split.

    Raises:
        EmbedstoreError: no layer has a finite score (no labelled classes), or only test rows exist.
    """
    on = data.selection_split(store, dataset)
    tag = data.split_tag(on)
    if known is not None and known[0] == tag:
        scores = known[1]
    else:
        names = data.layer_names(store, dataset, model)
        scores, _, _ = separability_curve(store, dataset, model, names, on, method, metric, max_points, seed)
    pick = _argmax(dict(enumerate(scores)))
    if pick is None:
        raise EmbedstoreError(f"cannot choose a best layer for {model!r}: no probe results and no labelled "
                              f"classes to score on the {tag} rows")
    return BestLayer(pick, method, tag, float(scores[pick]))


def best_layer(store, store_path, dataset: str, model: str, task: str | None = None,
               method: str = "silhouette", metric: str = "cosine", max_points: int | None = 2000,
               seed: int = 0) -> BestLayer:
    """The layer of ``model`` that ``layer="best"`` means: the best stored probe by validation
    accuracy (:func:`probe_curve`), else the best separability on the selection split
    (:func:`separability_choice`). The test split never chooses."""
    _, _, choice = probe_curve(load_records(store_path, dataset=dataset, model=model, task=task), model)
    if choice is not None:
        return choice
    return separability_choice(store, dataset, model, method, metric, max_points, seed)


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
    """Per-layer validation accuracy of the stored probes (when there are any) and separability
    curves of each model, as one figure, with each model's best layer starred (:func:`best_layer`'s
    rule; the test accuracy of that layer alone is reported).

    Separability is computed on a seeded subsample of ``max_points`` rows of ``split``. Writes
    ``layers_<dataset>_<models>_<split>.<fmt>`` and a ``.json`` of the numbers into ``out``.
    """
    with data.open_for_reading(store_path) as store:
        ds = specs.resolve_dataset(store, dataset, models=models)
        names_of = {m: data.layer_names(store, ds, m) for m in specs.resolve_models(store, ds, models)}
        results = load_records(store_path, dataset=ds, task=task)
        curves = []
        for model, names in names_of.items():
            scores, n, n_total = separability_curve(store, ds, model, names, split, method, metric, max_points, seed)
            acc, mixed, choice = probe_curve(results, model)
            reason = ""
            if choice is None:
                try:
                    choice = separability_choice(store, ds, model, method, metric, max_points, seed,
                                                 known=(data.split_tag(split), scores))
                except EmbedstoreError as exc:
                    reason = str(exc)
            curves.append(LayerCurve(model, names, scores, acc, choice, n, n_total, mixed, reason))
        res = LayerCurvesResult(ds, split, method, metric, curves)

    out_dir = data.out_dir_for(store_path, out)
    stem = data.file_stem("layers", ds, "_vs_".join(names_of), data.split_tag(split))
    res.figures = save_figure(_figure(res), out_dir, stem, formats)
    res.json_path = data.write_json(out_dir / f"{stem}.json", {
        "analysis": "layers", "dataset": ds, "split": split, "method": method, "metric": metric,
        "max_points": max_points, "seed": seed, "task": task, "selection": res.selection,
        "models": [{"model": c.model, "layer_names": c.layer_names, "separability": c.separability,
                    "valid_accuracy": {str(k): v for k, v in sorted(c.valid_accuracy.items())},
                    "mixed_valid_accuracy": c.mixed_valid_accuracy, "best_layer": c.best_layer,
                    "best": asdict(c.choice) | {"label": c.choice.label} if c.choice else None,
                    "no_best": c.no_choice or None, "n": c.n, "n_total": c.n_total}
                   for c in curves],
    })
    return res


def _score_label(method: str, metric: str) -> str:
    return f"silhouette ({metric}, standardised)" if method == "silhouette" else "Fisher ratio tr(S_B)/tr(S_W)"


def _draw_curve(ax, names: list[str] | None, c: LayerCurve, values: dict[int, float], color, label: str) -> None:
    """One model's per-layer ``values`` on ``ax``, its chosen layer starred."""
    xs = sorted(i for i, v in values.items() if math.isfinite(v))
    if not xs:
        return
    plot_layers(ax, names, xs, [values[i] for i in xs], marker="o", markersize=5, color=color, label=label)
    if c.best_layer in xs:  # every panel marks the one chosen layer, whatever chose it
        ax.plot([c.best_layer], [values[c.best_layer]], marker="*", markersize=14, color=color,
                markeredgecolor="black", linestyle="")


def _figure(res: LayerCurvesResult):
    """Probe accuracy (top, when there are probes) and separability (bottom) per layer; one column per
    group of models sharing a layer axis (depth-ordered indices, or the same named layers)."""
    has_probe = any(c.valid_accuracy or c.mixed_valid_accuracy for c in res.curves)
    groups = layer_axis_groups({c.model: c.layer_names for c in res.curves})
    nrows, ncols = (2 if has_probe else 1), len(groups)
    fig, axes = new_figure(nrows * ncols, ncols=ncols, panel_size=(7.0 if ncols == 1 else 5.0, 3.4),
                           legend_space=LEGEND_WIDTH)
    cmap = matplotlib.colormaps["tab10"]
    split = data.split_tag(res.split)
    chosen_on = sorted({c.choice.selected_on for c in res.curves if c.choice and c.choice.by == "probe accuracy"})
    for g, (names, members) in enumerate(groups):
        probe_ax, sep_ax = (axes[g], axes[ncols + g]) if has_probe else (None, axes[g])
        curves = [c for c in res.curves if c.model in members]
        for c in curves:
            color = cmap(res.curves.index(c) % 10)
            label = c.model
            if c.choice is not None and c.choice.test_accuracy is not None:
                label += f" (★ layer {c.choice.layer}: test {c.choice.test_accuracy:.3f})"
            _draw_curve(sep_ax, names, c, dict(enumerate(c.separability)), color, label)
            if probe_ax is not None:
                _draw_curve(probe_ax, names, c, c.valid_accuracy, color, label)
                for name, acc in sorted(c.mixed_valid_accuracy.items()):
                    probe_ax.axhline(acc, color=color, linestyle="--", linewidth=1, label=f"{c.model} ({name})")
        n_txt = ", ".join(f"{c.model}: n={c.n}" + (f" of {c.n_total}" if c.n < c.n_total else "") for c in curves)
        if probe_ax is not None:
            probe_ax.set_ylabel("probe accuracy (selection split)")
            set_axes_title(probe_ax, f"{res.dataset}: probe accuracy per layer on the selection split (selected "
                                     f"on: {', '.join(chosen_on) or '-'})\nper layer the best head there; test "
                                     "accuracy only for the ★ layer")
        sep_ax.set_ylabel(_score_label(res.method, res.metric))
        set_axes_title(sep_ax, f"{res.dataset} ({split}): label separability per layer\n{n_txt}")
        for ax in (probe_ax, sep_ax):
            if ax is None:
                continue
            set_layer_axis(ax, names)
            ax.grid(alpha=0.3)
            if not ax.get_legend_handles_labels()[0]:
                ax.text(0.5, 0.5, "no stored probe results for these models" if ax is probe_ax else "no scores",
                        transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.4")
    add_series_legend(fig, f"model (★ best layer by {res.selection or '-'})")
    return fig


def _choice_line(c: LayerCurve) -> str:
    if c.choice is None:
        return f"{c.model}: no best layer ({c.no_choice or 'no labels'})"
    line = f"{c.model}: best layer {c.best_layer} ({c.layer_names[c.best_layer]}) by {c.choice.label}"
    if c.choice.head is not None:
        line += f" ({c.choice.head} head, selected on: {c.choice.selected_on})"
    if c.choice.test_accuracy is not None:
        line += f"; its test accuracy {c.choice.test_accuracy:.3f}"
    return line


def format_layers(res: LayerCurvesResult) -> str:
    """A terminal table: one row per model and layer (validation accuracy of the probes, separability),
    the best layer marked, and one line per model saying what chose it and its test accuracy."""
    head = f"{'model':<28} {'layer':>5}  {'name':<18} {'valid acc':>9}  {res.method:>10}"
    lines = [f"layer curves for {res.dataset} ({data.split_tag(res.split)}), {_score_label(res.method, res.metric)}",
             head, "-" * len(head)]
    for c in res.curves:
        for i, name in enumerate(c.layer_names):
            acc = c.valid_accuracy.get(i)
            acc_txt = f"{acc:9.3f}" if acc is not None else f"{'-':>9}"
            mark = "  <- best" if i == c.best_layer else ""
            lines.append(f"{c.model:<28} {i:>5}  {name:<18} {acc_txt}  {c.separability[i]:>10.4f}{mark}")
        for name, acc in sorted(c.mixed_valid_accuracy.items()):
            lines.append(f"{c.model:<28} {name:>5}  {'(all layers)':<18} {acc:9.3f}")
        lines.append(_choice_line(c))
    lines.append("valid acc: accuracy on each probe's selection split (its selected_on); test read only for the best")
    lines += [f"figure: {p}" for p in res.figures] + ([f"numbers: {res.json_path}"] if res.json_path else [])
    return "\n".join(lines)


__all__ = ["BestLayer", "LayerCurve", "LayerCurvesResult", "best_layer", "format_layers", "layers", "probe_curve",
           "separability_choice", "separability_curve"]
