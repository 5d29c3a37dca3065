"""2-D projections of stored embeddings (PCA, UMAP), one scatter panel per model and layer.

Features are standardised first by default (each dimension centred and scaled by the mean and
standard deviation of the dataset's train rows), so that no dimension dominates by its unit alone
(MFCC's spectral centroid is in Hz, its chroma in [0, 1]). Points are coloured by label with one
colour per label of the dataset, the same in every panel and every figure of that dataset.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.colors
import numpy as np

from embedstore.errors import EmbedstoreError
from embedstore.store import specs

from . import data
from .layer_curves import best_layer
from .metrics import pca_project
from .metrics import standardize as standardize_rows
from .plotting import add_label_legend, label_colors, new_figure, save_figure, scatter_labelled, set_axes_title, \
    set_suptitle

METHODS = ("pca", "umap")


@dataclass
class ProjectionPanel:
    """One scatter panel: which rows were projected and how.

    Attributes:
        coords: ``[n, 2]`` projected points (not written to the JSON).
        labels: ``[n]`` str labels of the points ("" = unlabelled).
        explained_variance_ratio: ``[2]`` for PCA, None for UMAP.
        layer_choice: "given", or how ``layer="best"`` picked the layer, e.g. "valid accuracy" or
            "silhouette on valid rows" (:class:`~embedstore.analysis.layer_curves.BestLayer`).
        selected_on: the rows that chose the layer (``valid``, ``train_cv``, ...), None when given.
        standardized_on: the rows whose mean and std standardised the features before projecting
            (``"train"``, or ``"plotted rows"`` when the dataset has no train split); None when the
            features were projected as stored.
    """

    model: str
    layer: int
    layer_name: str
    n: int
    n_total: int
    layer_choice: str
    explained_variance_ratio: list[float] | None
    coords: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    track_ids: np.ndarray = field(repr=False)
    selected_on: str | None = None
    standardized_on: str | None = None


@dataclass
class ProjectionResult:
    """What :func:`pca` / :func:`umap` computed and wrote.

    ``label_colors`` maps every label of the dataset (not only those drawn) to its RGBA colour.
    """

    method: str
    dataset: str
    split: str | list[str] | None
    seed: int
    panels: list[ProjectionPanel]
    label_colors: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    standardize: bool = True
    figures: list[Path] = field(default_factory=list)
    json_path: Path | None = None


def _embed_2d(method: str, X: np.ndarray, seed: int, n_neighbors: int, min_dist: float,
              metric: str) -> tuple[np.ndarray, list[float] | None]:
    if method == "pca":
        p = pca_project(X, 2)
        return p.coords, p.explained_variance_ratio.tolist()
    with warnings.catch_warnings():  # umap-learn warns at import that TensorFlow (ParametricUMAP) is absent
        warnings.simplefilter("ignore", ImportWarning)
        from umap import UMAP  # imported late: umap/numba take seconds to import

    if X.shape[0] < 4:
        raise EmbedstoreError(f"UMAP needs at least 4 points, got {X.shape[0]}")
    reducer = UMAP(n_components=2, n_neighbors=min(n_neighbors, X.shape[0] - 1), min_dist=min_dist,
                   metric=metric, random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(np.asarray(X, dtype=np.float32)), dtype=np.float64), None


def _features(store, ds: str, view: data.View, standardize: bool) -> tuple[np.ndarray, str | None]:
    """The rows to project ``[n, dim]``, standardised with the train rows' statistics when asked, and
    which rows gave those statistics (None: not standardised)."""
    if not standardize:
        return view.X, None
    on = data.statistics_split(store, ds)
    if on is None:
        return standardize_rows(view.X), "plotted rows"
    same = data.split_tag(view.split) == on and not view.subsampled
    ref = view.X if same else data.load_view(store, ds, view.model, view.layer, on).X
    return standardize_rows(view.X, ref), on


def project(
    method: str,
    store_path: str | Path,
    models: Sequence[str] | str | None = None,
    layer: int | str = -1,
    split: str | list[str] | None = "train",
    dataset: str | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png",),
    max_points: int | None = 2000,
    seed: int = 0,
    task: str | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    standardize: bool = True,
) -> ProjectionResult:
    """Shared body of :func:`pca` and :func:`umap` (``method`` is "pca" or "umap")."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose from {METHODS}")
    with data.open_for_reading(store_path) as store:
        ds = specs.resolve_dataset(store, dataset, models=models)
        model_list = specs.resolve_models(store, ds, models)
        panels: list[ProjectionPanel] = []
        for model in model_list:
            names = data.layer_names(store, ds, model)
            picked = specs.resolve_layers(layer, names, model=model, words=("all", "best"))
            if picked.mode == "best":
                choice = best_layer(store, store_path, ds, model, task, max_points=max_points, seed=seed)
                picks = [(choice.layer, choice.label, choice.selected_on)]
            else:
                picks = [(i, "given", None) for i in picked.indices]
            for idx, by, on in picks:
                view = data.load_view(store, ds, model, idx, split, max_points, seed, names)
                X, stats_on = _features(store, ds, view, standardize)
                coords, evr = _embed_2d(method, X, seed, n_neighbors, min_dist, metric)
                panels.append(ProjectionPanel(model, idx, view.layer_name, view.n, view.n_total, by, evr,
                                              coords, view.labels, view.track_ids, on, stats_on))
        res = ProjectionResult(method, ds, split, seed, panels, label_colors(data.dataset_labels(store, ds)),
                               standardize)
        legend_title = data.task_name(store, ds)

    out_dir = data.out_dir_for(store_path, out)
    tag = data.layer_tag(layer, [p.layer_name for p in panels])
    stem = data.file_stem(method, ds, "_vs_".join(model_list), tag, data.split_tag(split),
                          None if standardize else "raw")
    res.figures = save_figure(_figure(res, legend_title, max_points), out_dir, stem, formats)
    res.json_path = data.write_json(out_dir / f"{stem}.json", {
        "analysis": method, "dataset": ds, "split": split, "layer": layer, "seed": seed,
        "max_points": max_points, "standardize": standardize,
        "params": {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric} if method == "umap" else {},
        "label_colors": {k: matplotlib.colors.to_hex(v) for k, v in res.label_colors.items()},
        "panels": [{"model": p.model, "layer": p.layer, "layer_name": p.layer_name, "n": p.n,
                    "n_total": p.n_total, "layer_choice": p.layer_choice, "selected_on": p.selected_on,
                    "standardized_on": p.standardized_on,
                    "explained_variance_ratio": p.explained_variance_ratio} for p in res.panels],
    })
    return res


def _caption(res: ProjectionResult, max_points: int | None) -> str:
    """The figure title: method, dataset, split, how the features were scaled, any subsampling."""
    name = "PCA" if res.method == "pca" else "UMAP"
    ons = sorted({p.standardized_on or "" for p in res.panels})
    if not res.standardize:
        scaling = "features as stored (not standardised)"
    elif ons == ["train"]:
        scaling = "features standardised with the train rows' mean and std"
    else:
        scaling = f"features standardised with the mean and std of the {' / '.join(ons)}"
    text = f"{name} of {res.dataset} embeddings ({data.split_tag(res.split)}), {scaling}"
    if any(p.n < p.n_total for p in res.panels):
        text += f"; seeded subsample of at most {max_points} points (seed {res.seed})"
    return text


def _figure(res: ProjectionResult, legend_title: str, max_points: int | None):
    """Models side by side (columns); several layers of a model go down its column (or wrap for one model)."""
    grid: dict[str, list[ProjectionPanel]] = {}
    for p in res.panels:
        grid.setdefault(p.model, []).append(p)
    columns = list(grid.values())
    n_models, depth = len(columns), max(len(c) for c in columns)
    if n_models == 1:
        cells = [(0, k) for k in range(depth)]
        fig, axes = new_figure(depth, ncols=min(depth, 4))
    else:
        fig, axes = new_figure(n_models * depth, ncols=n_models)
        cells = [(m, k) for k in range(depth) for m in range(n_models)]  # row-major: layer k, model m
    split = data.split_tag(res.split)
    name = "PCA" if res.method == "pca" else "UMAP"
    for ax, (m, k) in zip(axes, cells):
        if k >= len(columns[m]):
            ax.set_visible(False)
            continue
        p = columns[m][k]
        scatter_labelled(ax, p.coords, p.labels, res.label_colors)
        count = f"n={p.n}" + (f" of {p.n_total}" if p.n < p.n_total else "")
        chosen = "" if p.layer_choice == "given" else f", best by {p.layer_choice}"
        set_axes_title(ax, f"{p.model}\nlayer {p.layer} ({p.layer_name}{chosen}) · {split} · {count}")
        if p.explained_variance_ratio is not None:
            r = p.explained_variance_ratio
            ax.set_xlabel(f"PC1 ({100 * r[0]:.1f}% of variance)")
            ax.set_ylabel(f"PC2 ({100 * r[1]:.1f}% of variance)" if len(r) > 1 else "PC2")
        else:
            ax.set_xlabel(f"{name} 1")
            ax.set_ylabel(f"{name} 2")
            ax.set_xticks([])
            ax.set_yticks([])
    add_label_legend(fig, res.label_colors, set(np.concatenate([p.labels for p in res.panels]).tolist()),
                     legend_title)
    set_suptitle(fig, _caption(res, max_points))
    return fig


def pca(
    store_path: str | Path,
    models: Sequence[str] | str | None = None,
    layer: int | str = -1,
    split: str | list[str] | None = "train",
    dataset: str | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png",),
    max_points: int | None = 2000,
    seed: int = 0,
    task: str | None = None,
    standardize: bool = True,
) -> ProjectionResult:
    """2-D PCA scatter of each model's ``layer`` (int, name, "all" or "best"), coloured by label.

    With ``standardize`` (default) each feature is first centred and scaled by the mean and std of
    the dataset's train rows (of the plotted rows when it has no train split), whichever split is
    drawn; the title says so. Each panel's axes give the explained variance ratio of PC1/PC2 (of
    the plotted, possibly subsampled, rows). ``layer="best"`` takes the layer with the best stored probe validation
    accuracy (of ``task`` if given), else the best silhouette on the valid rows (train rows without
    a valid split), never a test score; panel titles and the JSON say which ("best by valid
    accuracy"). Writes ``pca_<dataset>_<models>_<layer>_<split>[_raw]`` figure(s) and ``.json`` into
    ``out`` (default ``<store>.analysis/``); ``<layer>`` is the drawn layer's name (``all``, ``best``),
    ``_raw`` marks unstandardised features.
    """
    return project("pca", store_path, models, layer, split, dataset, out, formats, max_points, seed, task,
                   standardize=standardize)


def umap(
    store_path: str | Path,
    models: Sequence[str] | str | None = None,
    layer: int | str = -1,
    split: str | list[str] | None = "train",
    dataset: str | None = None,
    out: str | Path | None = None,
    formats: Sequence[str] = ("png",),
    max_points: int | None = 2000,
    seed: int = 0,
    task: str | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    standardize: bool = True,
) -> ProjectionResult:
    """Like :func:`pca` with a UMAP embedding (umap-learn, ``random_state=seed``, single-threaded so
    repeated runs agree) of the (by default standardised) features."""
    return project("umap", store_path, models, layer, split, dataset, out, formats, max_points, seed, task,
                   n_neighbors, min_dist, metric, standardize)


def format_projection(res: ProjectionResult) -> str:
    """Terminal summary: one line per panel (rows, explained variance) and the written files."""
    ons = sorted({p.standardized_on for p in res.panels if p.standardized_on})
    scaling = f"standardised on {' / '.join(ons)} rows" if ons else "not standardised"
    lines = [f"{res.method.upper()} of {res.dataset} ({data.split_tag(res.split)}), seed {res.seed}, "
             f"features {scaling}"]
    for p in res.panels:
        evr = ""
        if p.explained_variance_ratio:
            evr = "  explained variance " + " / ".join(f"{100 * r:.1f}%" for r in p.explained_variance_ratio)
        chosen = "" if p.layer_choice == "given" else f" [best by {p.layer_choice}]"
        lines.append(f"  {p.model} layer {p.layer} ({p.layer_name}){chosen}: n={p.n}"
                     + (f" of {p.n_total}" if p.n < p.n_total else "") + evr)
    lines += [f"figure: {f}" for f in res.figures] + ([f"numbers: {res.json_path}"] if res.json_path else [])
    return "\n".join(lines)


format_pca = format_umap = format_projection
