"""2-D projections of stored embeddings (PCA, UMAP), one scatter panel per model and layer.

Points are coloured by label with one colour per label across all panels, so models and layers
can be compared side by side in one figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedstore.errors import EmbedstoreError

from . import data
from .layer_curves import best_layer
from .metrics import pca_project
from .plotting import add_label_legend, label_colors, new_figure, save_figure, scatter_labelled

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


@dataclass
class ProjectionResult:
    """What :func:`pca` / :func:`umap` computed and wrote."""

    method: str
    dataset: str
    split: str | list[str] | None
    seed: int
    panels: list[ProjectionPanel]
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
) -> ProjectionResult:
    """Shared body of :func:`pca` and :func:`umap` (``method`` is "pca" or "umap")."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose from {METHODS}")
    with data.open_for_reading(store_path) as store:
        ds = data.resolve_dataset(store, dataset)
        model_list = data.resolve_models(store, ds, models)
        grid: list[list[ProjectionPanel]] = []  # one list of panels per model
        for model in model_list:
            names = data.layer_names(store, ds, model)
            if layer == "best":
                choice = best_layer(store, store_path, ds, model, task, max_points=max_points, seed=seed)
                picks = [(choice.layer, choice.label, choice.selected_on)]
            else:
                picks = [(i, "given", None) for i in data.resolve_layers(names, layer, model)]
            row = []
            for idx, by, on in picks:
                view = data.load_view(store, ds, model, idx, split, max_points, seed, names)
                coords, evr = _embed_2d(method, view.X, seed, n_neighbors, min_dist, metric)
                row.append(ProjectionPanel(model, idx, view.layer_name, view.n, view.n_total, by, evr,
                                           coords, view.labels, view.track_ids, on))
            grid.append(row)
        res = ProjectionResult(method, ds, split, seed, [p for row in grid for p in row])
        legend_title = data.task_name(store, ds)

    out_dir = data.out_dir_for(store_path, out)
    stem = data.file_stem(method, ds, "_vs_".join(model_list), data.layer_tag(layer), data.split_tag(split))
    fig = _figure(res, grid, legend_title, max_points)
    res.figures = save_figure(fig, out_dir, stem, formats)
    res.json_path = data.write_json(out_dir / f"{stem}.json", {
        "analysis": method, "dataset": ds, "split": split, "layer": layer, "seed": seed,
        "max_points": max_points,
        "params": {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric} if method == "umap" else {},
        "panels": [{"model": p.model, "layer": p.layer, "layer_name": p.layer_name, "n": p.n,
                    "n_total": p.n_total, "layer_choice": p.layer_choice, "selected_on": p.selected_on,
                    "explained_variance_ratio": p.explained_variance_ratio} for p in res.panels],
    })
    return res


def _figure(res: ProjectionResult, grid: list[list[ProjectionPanel]], legend_title: str, max_points):
    """Models side by side (columns); several layers of a model go down its column (or wrap for one model)."""
    n_models, depth = len(grid), max(len(r) for r in grid)
    if n_models == 1:
        cells = [(0, k) for k in range(depth)]
        fig, axes = new_figure(depth, ncols=min(depth, 4))
    else:
        fig, axes = new_figure(n_models * depth, ncols=n_models)
        cells = [(m, k) for k in range(depth) for m in range(n_models)]  # row-major: layer k, model m
    colors = label_colors(np.concatenate([p.labels for p in res.panels]))
    split = data.split_tag(res.split)
    name = "PCA" if res.method == "pca" else "UMAP"
    for ax, (m, k) in zip(axes, cells):
        if k >= len(grid[m]):
            ax.set_visible(False)
            continue
        p = grid[m][k]
        scatter_labelled(ax, p.coords, p.labels, colors)
        count = f"n={p.n}" + (f" of {p.n_total}" if p.n < p.n_total else "")
        chosen = "" if p.layer_choice == "given" else f", best by {p.layer_choice}"
        ax.set_title(f"{p.model}\nlayer {p.layer} ({p.layer_name}{chosen}) · {split} · {count}", fontsize=9)
        if p.explained_variance_ratio is not None:
            r = p.explained_variance_ratio
            ax.set_xlabel(f"PC1 ({100 * r[0]:.1f}% of variance)")
            ax.set_ylabel(f"PC2 ({100 * r[1]:.1f}% of variance)" if len(r) > 1 else "PC2")
        else:
            ax.set_xlabel(f"{name} 1")
            ax.set_ylabel(f"{name} 2")
            ax.set_xticks([])
            ax.set_yticks([])
    sub = any(p.n < p.n_total for p in res.panels)
    caption = f" — seeded subsample of at most {max_points} points (seed {res.seed})" if sub else ""
    fig.suptitle(f"{name} of {res.dataset} embeddings ({split}){caption}", fontsize=11)
    add_label_legend(fig, colors, set(np.concatenate([p.labels for p in res.panels]).tolist()), legend_title)
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
) -> ProjectionResult:
    """2-D PCA scatter of each model's ``layer`` (int, name, "all" or "best"), coloured by label.

    Each panel's axes give the explained variance ratio of PC1/PC2 (of the plotted, possibly
    subsampled, rows). ``layer="best"`` takes the layer with the best stored probe validation
    accuracy (of ``task`` if given), else the best silhouette on the valid rows (train rows without
    a valid split), never a test score; panel titles and the JSON say which ("best by valid
    accuracy"). Writes ``pca_<dataset>_<models>_<layer>_<split>``
    figure(s) and ``.json`` into ``out`` (default ``<store>.analysis/``).
    """
    return project("pca", store_path, models, layer, split, dataset, out, formats, max_points, seed, task)


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
) -> ProjectionResult:
    """Like :func:`pca` with a UMAP embedding (umap-learn, ``random_state=seed``, single-threaded so
    repeated runs agree)."""
    return project("umap", store_path, models, layer, split, dataset, out, formats, max_points, seed, task,
                   n_neighbors, min_dist, metric)


def format_projection(res: ProjectionResult) -> str:
    """Terminal summary: one line per panel (rows, explained variance) and the written files."""
    lines = [f"{res.method.upper()} of {res.dataset} ({data.split_tag(res.split)}), seed {res.seed}"]
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
