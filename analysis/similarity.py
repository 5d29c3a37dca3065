"""Similarity structure of the stored embeddings: cosine anisotropy and layer-to-layer linear CKA.

:func:`cosine` measures how similar embeddings are to each other on average (raw, where encoders
such as CLAP are strongly anisotropic, and after mean-centring, which removes the common direction),
and within- versus between-class. :func:`cka` compares the representations of every pair of layers
of one model, or of two models over the same tracks (e.g. a model and its fine-tuned version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

from embedstore.errors import StoreError
from embedstore.store import specs

from . import data
from .metrics import CosineStats, cka_matrix, cosine_stats, pairwise_cosine_values, subsample_indices
from .plotting import (LEGEND_WIDTH, add_series_legend, depth_ordered, layer_axis_groups, new_figure, plot_layers,
                       save_figure, set_axes_title, set_layer_axis, set_suptitle)

HIST_BINS = np.linspace(-1.0, 1.0, 81)


# ---- cosine --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CosineRow(CosineStats):
    """Cosine statistics (:class:`metrics.CosineStats`) of one model layer over all rows of the split."""

    model: str = field(kw_only=True)
    layer: int = field(kw_only=True)
    layer_name: str = field(kw_only=True)


@dataclass
class CosineHistogram:
    """Pairwise-cosine histogram of one model layer on a seeded subsample of ``n`` rows.

    ``raw``/``centered`` are counts ``[bins]`` over the edges :data:`HIST_BINS` ``[bins + 1]``.
    """

    model: str
    layer: int
    layer_name: str
    n: int
    n_total: int
    raw: np.ndarray
    centered: np.ndarray


@dataclass
class CosineResult:
    """What :func:`cosine` computed and wrote."""

    dataset: str
    split: str | list[str] | None
    rows: list[CosineRow]
    histograms: list[CosineHistogram]
    layer_names: dict[str, list[str]] = field(default_factory=dict)  # model -> all its layer names
    figures: list[Path] = field(default_factory=list)
    json_path: Path | None = None


def cosine(
    store_path: str | Path,
    models: Sequence[str] | str | None = None,
    layer: int | str = "all",
    split: str | list[str] | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png",),
    max_points: int | None = 2000,
    seed: int = 0,
) -> CosineResult:
    """Average pairwise cosine similarity per model and layer, raw and mean-centred, within/between class.

    The means are exact over all rows of ``split`` (O(n dim)); the histograms use a seeded subsample
    of ``max_points`` rows, of the chosen layer (the last one when ``layer="all"``). Writes
    ``cosine_hist_*`` (one panel per model), ``cosine_layers_*`` when several layers were measured,
    and a ``.json`` of the numbers into ``out``.
    """
    with data.open_for_reading(store_path) as store:
        ds = specs.resolve_dataset(store, dataset, models=models)
        model_list = specs.resolve_models(store, ds, models)
        rows: list[CosineRow] = []
        hists: list[CosineHistogram] = []
        for model in model_list:
            names = data.layer_names(store, ds, model)
            idxs = specs.resolve_layers(layer, names, model=model, words=("all",)).indices
            for i in idxs:
                view = data.load_view(store, ds, model, i, split, None, seed, names)
                st = cosine_stats(view.X, view.labels)
                rows.append(CosineRow(**asdict(st), model=model, layer=i, layer_name=view.layer_name))
                if i == idxs[-1]:
                    sub = subsample_indices(view.n, max_points, seed)
                    X = np.asarray(view.X, dtype=np.float64)
                    raw, _ = np.histogram(pairwise_cosine_values(X[sub]), HIST_BINS)
                    cen, _ = np.histogram(pairwise_cosine_values(X[sub] - X.mean(axis=0)), HIST_BINS)
                    hists.append(CosineHistogram(model, i, view.layer_name, sub.size, view.n, raw, cen))
        res = CosineResult(ds, split, rows, hists, {m: data.layer_names(store, ds, m) for m in model_list})

    out_dir = data.out_dir_for(store_path, out)
    tag = (data.file_stem(ds, "_vs_".join(model_list)),
           data.layer_tag(layer, [r.layer_name for r in rows]),
           data.split_tag(split))
    res.figures = save_figure(_hist_figure(res), out_dir, data.file_stem("cosine_hist", *tag), formats)
    if any(sum(r.model == m for r in rows) > 1 for m in model_list):
        res.figures += save_figure(_layer_figure(res), out_dir, data.file_stem("cosine_layers", *tag), formats)
    res.json_path = data.write_json(out_dir / f"{data.file_stem('cosine', *tag)}.json", {
        "analysis": "cosine", "dataset": ds, "split": split, "layer": layer, "seed": seed,
        "max_points": max_points, "centering": "subtract the mean embedding of the analysed rows",
        "rows": [asdict(r) for r in rows],
        "histograms": {"bin_edges": HIST_BINS,
                       "panels": [asdict(h) for h in hists]},
    })
    return res


def _hist_figure(res: CosineResult):
    fig, axes = new_figure(len(res.histograms), ncols=min(len(res.histograms), 3))
    split = data.split_tag(res.split)
    for ax, h in zip(axes, res.histograms):
        row = next(r for r in res.rows if r.model == h.model and r.layer == h.layer)
        pairs = max(h.n * (h.n - 1) // 2, 1)
        for counts, mean, name, style in ((h.raw, row.mean, "raw", COSINE_STYLES["raw"]),
                                          (h.centered, row.mean_centered, "mean-centred", COSINE_STYLES["centred"])):
            ax.stairs(counts / pairs, HIST_BINS, color=style["color"], linestyle=style["linestyle"], linewidth=1.5,
                      label=f"{name} (mean {mean:.3f})")
            ax.axvline(mean, color=style["color"], linestyle=":", linewidth=1)
        count = f"n={h.n}" + (f" of {h.n_total}" if h.n < h.n_total else "")
        set_axes_title(ax, f"{h.model}\nlayer {h.layer} ({h.layer_name}) · {split} · {count}")
        ax.set_xlabel("pairwise cosine similarity")
        ax.set_ylabel("fraction of pairs")
        ax.set_xlim(-1, 1)
        ax.legend(fontsize=8, loc="upper left", handlelength=3.0)
        ax.grid(alpha=0.3)
    set_suptitle(fig, f"Cosine similarity of {res.dataset} embeddings (means over all rows; histograms of a "
                      f"seeded subsample; dotted lines: the means)", fontsize=10)
    return fig


# how each cosine measure is drawn: marker and line style tell them apart, colour tells the models apart
COSINE_STYLES = {
    "raw": {"marker": "o", "linestyle": "-", "color": "tab:blue"},
    "centred": {"marker": "s", "linestyle": "--", "color": "tab:orange"},
    "within": {"marker": "^", "linestyle": "-"},
    "between": {"marker": "v", "linestyle": ":"},
}
COSINE_LABELS = {"raw": "raw", "centred": "mean-centred", "within": "within class (centred)",
                 "between": "between classes (centred)"}


def _layer_figure(res: CosineResult):
    """Per layer: mean cosine raw vs mean-centred (left), within vs between class after centring
    (right); one row of panels per group of models that share a layer axis."""
    models = list(dict.fromkeys(r.model for r in res.rows))
    names_of = {m: res.layer_names.get(m) or [r.layer_name for r in res.rows if r.model == m] for m in models}
    groups = layer_axis_groups(names_of)
    fig, axes = new_figure(2 * len(groups), ncols=2, panel_size=(5.0, 3.8), legend_space=LEGEND_WIDTH)
    cmap = matplotlib.colormaps["tab10"]
    split = data.split_tag(res.split)
    for g, (names, members) in enumerate(groups):
        left, right = axes[2 * g], axes[2 * g + 1]
        for model in members:
            rs = [r for r in res.rows if r.model == model]
            x = [r.layer for r in rs]
            c = cmap(models.index(model) % 10)
            for ax, key, values in ((left, "raw", [r.mean for r in rs]),
                                    (left, "centred", [r.mean_centered for r in rs]),
                                    (right, "within", [r.within_centered for r in rs]),
                                    (right, "between", [r.between_centered for r in rs])):
                style = {**COSINE_STYLES[key], "color": c}
                plot_layers(ax, names, x, values, ms=5, mfc="white" if key in ("centred", "between") else c,
                            label=f"{model}: {COSINE_LABELS[key]}", **style)
        n_txt = ", ".join(f"{m}: n={next(r.n for r in res.rows if r.model == m)}" for m in members)
        set_axes_title(left, f"{res.dataset} ({split}): mean pairwise cosine, raw and mean-centred; {n_txt}")
        set_axes_title(right, f"{res.dataset} ({split}): within vs between class, after mean-centring")
        for ax in (left, right):
            set_layer_axis(ax, names)
            ax.set_ylabel("mean cosine similarity")
            ax.grid(alpha=0.3)
    add_series_legend(fig, "model: measure (colour: model; marker and line: measure)")
    return fig


def format_cosine(res: CosineResult) -> str:
    """The cosine table: one row per model and layer, raw and centred, within and between class."""
    head = (f"{'model':<26} {'layer':>5} {'n':>6} {'raw':>7} {'centred':>8} {'within':>7} {'between':>8}"
            f" {'within_c':>9} {'between_c':>10}")
    lines = [f"mean pairwise cosine similarity, {res.dataset} ({data.split_tag(res.split)})", head, "-" * len(head)]
    for r in res.rows:
        lines.append(f"{r.model:<26} {r.layer:>5} {r.n:>6} {r.mean:>7.3f} {r.mean_centered:>8.3f} "
                     f"{r.within:>7.3f} {r.between:>8.3f} {r.within_centered:>9.3f} {r.between_centered:>10.3f}")
    lines += [f"figure: {f}" for f in res.figures] + ([f"numbers: {res.json_path}"] if res.json_path else [])
    return "\n".join(lines)


# ---- CKA -----------------------------------------------------------------------------------------


@dataclass
class CKAResult:
    """What :func:`cka` computed and wrote; ``matrix`` is ``[layers of model, layers of other]``."""

    dataset: str
    model: str
    other_model: str
    split: str | list[str] | None
    layer_names: list[str]
    other_layer_names: list[str]
    matrix: np.ndarray
    n: int
    n_total: int
    figures: list[Path] = field(default_factory=list)
    json_path: Path | None = None


def _aligned_layers(store, ds: str, models: list[str], split, max_points: int | None,
                    seed: int) -> tuple[list[list[np.ndarray]], int, int]:
    """Every layer of each model on the same tracks in the same order (common tracks, seeded subsample)."""
    first = {m: data.load_view(store, ds, m, 0, split) for m in dict.fromkeys(models)}
    common = first[models[0]].track_ids
    for m in models[1:]:
        common = common[np.isin(common, first[m].track_ids)]
    if common.size < 2:
        raise StoreError(f"models {models} share {common.size} tracks in {ds!r}; CKA needs at least 2")
    chosen = common[subsample_indices(common.size, max_points, seed)]
    out = []
    for m in models:
        ids = first[m].track_ids
        pos = {t: i for i, t in enumerate(ids)}
        rows = np.array([pos[t] for t in chosen])
        names = data.layer_names(store, ds, m)
        out.append([data.load_view(store, ds, m, i, split, names=names).X[rows] for i in range(len(names))])
    return out, int(chosen.size), int(common.size)


def cka(
    store_path: str | Path,
    model: str,
    other_model: str | None = None,
    split: str | list[str] | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png",),
    max_points: int | None = 1000,
    seed: int = 0,
) -> CKAResult:
    """Linear CKA between every pair of layers of ``model`` (or of ``model`` vs ``other_model``) as a heat map.

    Both models are compared on the tracks they share, a seeded subsample of ``max_points`` of them
    (memory grows as ``8 n^2`` bytes per layer). Writes ``cka_<dataset>_<model>[_vs_<other>]_<split>``
    figure(s) and ``.json`` into ``out``.
    """
    with data.open_for_reading(store_path) as store:
        other = other_model or model
        ds = specs.resolve_dataset(store, dataset, models=[model, other])
        specs.resolve_models(store, ds, [model, other])
        pair = [model] if other == model else [model, other]
        layers, n, n_total = _aligned_layers(store, ds, pair, split, max_points, seed)
        M = cka_matrix(layers[0], None if other == model else layers[1])
        res = CKAResult(ds, model, other, split, data.layer_names(store, ds, model),
                        data.layer_names(store, ds, other), M, n, n_total)

    out_dir = data.out_dir_for(store_path, out)
    stem = data.file_stem("cka", ds, model if other == model else f"{model}_vs_{other}", data.split_tag(split))
    res.figures = save_figure(_cka_figure(res), out_dir, stem, formats)
    res.json_path = data.write_json(out_dir / f"{stem}.json", {
        "analysis": "cka", "kind": "linear", "dataset": ds, "model": model, "other_model": other,
        "split": split, "seed": seed, "max_points": max_points, "n": n, "n_total": n_total,
        "layer_names": res.layer_names, "other_layer_names": res.other_layer_names, "matrix": M,
        "color_range": cka_color_range(M),
    })
    return res


def cka_color_range(matrix: np.ndarray) -> tuple[float, float]:
    """``(vmin, vmax)`` of the CKA heat map: ``(0, 1)``, unless every finite value is at least
    :data:`CKA_ZOOM_ABOVE`; then the values' own range (at least 0.01 wide), so that close values
    (all of 0.97-1.00, as for CLAP's stages or a model against its fine-tuned self) get distinct
    colours."""
    finite = matrix[np.isfinite(matrix)]
    if finite.size == 0 or finite.min() < CKA_ZOOM_ABOVE:
        return 0.0, 1.0
    hi = float(min(finite.max(), 1.0))
    lo = float(min(finite.min(), hi - 0.01))
    return lo, hi


CKA_ZOOM_ABOVE = 0.5


def _cka_figure(res: CKAResult):
    La, Lb = res.matrix.shape
    size = (float(np.clip(0.4 * Lb + 3.0, 4.5, 12.0)), float(np.clip(0.4 * La + 2.0, 3.5, 11.0)))
    fig, (ax,) = new_figure(1, ncols=1, panel_size=size)
    vmin, vmax = cka_color_range(res.matrix)
    im = ax.imshow(res.matrix, vmin=vmin, vmax=vmax, cmap="magma", origin="lower", interpolation="nearest",
                   aspect="auto")
    full = vmin == 0.0 and vmax == 1.0
    fig.colorbar(im, ax=ax, shrink=0.8,
                 label="linear CKA" + ("" if full else f" (colour scale {vmin:.3f} to {vmax:.3f}, not 0 to 1)"))
    if max(La, Lb) <= 16:
        fs = 9 if max(La, Lb) <= 6 else 7 if max(La, Lb) <= 12 else 5
        digits = 2 if vmax - vmin >= 0.1 else 3
        for i in range(La):
            for j in range(Lb):
                v = res.matrix[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=fs,
                            color="black" if im.norm(v) > 0.6 else "white")
    for axis, names, model in (("y", res.layer_names, res.model), ("x", res.other_layer_names, res.other_model)):
        set_layer_axis(ax, None if depth_ordered(names) else names, axis)
        (ax.yaxis if axis == "y" else ax.xaxis).set_label_text(f"{model} layer")
    count = f"n={res.n}" + (f" of {res.n_total}" if res.n < res.n_total else "")
    who = res.model if res.other_model == res.model else f"{res.model} vs {res.other_model}"
    set_axes_title(ax, f"Linear CKA between layers: {who}\n{res.dataset} · {data.split_tag(res.split)} · {count}")
    return fig


def format_cka(res: CKAResult) -> str:
    """The CKA matrix as a text table (rows: ``model`` layers, columns: ``other_model`` layers)."""
    who = res.model if res.other_model == res.model else f"{res.model} (rows) vs {res.other_model} (columns)"
    lines = [f"linear CKA, {who}, {res.dataset} ({data.split_tag(res.split)}), n={res.n}",
             "      " + "".join(f"{j:>6}" for j in range(res.matrix.shape[1]))]
    lo, hi = cka_color_range(res.matrix)
    digits = 2 if hi - lo >= 0.1 else 3
    for i, row in enumerate(res.matrix):
        lines.append(f"{i:>6}" + "".join(f"{v:>6.{digits}f}" for v in row))
    lines += [f"figure: {f}" for f in res.figures] + ([f"numbers: {res.json_path}"] if res.json_path else [])
    return "\n".join(lines)
