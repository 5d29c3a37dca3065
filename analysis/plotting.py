"""Headless, deterministic matplotlib helpers shared by the analysis figures.

Figures are built with the object-oriented :class:`~matplotlib.figure.Figure` API on an Agg canvas,
never through pyplot, so nothing here changes the caller's backend or global state. Saving strips
dates and software versions from the metadata and salts SVG ids, so the same inputs give the same
bytes on every run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from embedstore.figures import DPI, FIGURE_FORMATS, PANEL_SIZE, new_figure, save_figure  # noqa: F401 (re-exported)

UNLABELLED = ""
UNLABELLED_NAME = "(no label)"
UNLABELLED_COLOR = (0.6, 0.6, 0.6, 1.0)


def label_colors(labels: Iterable[str]) -> dict[str, tuple[float, float, float, float]]:
    """One RGBA colour per distinct label, from the sorted label set; unlabelled (``""``) is grey.

    A colour depends only on the label and the set passed in, so pass the dataset's full label set
    (:func:`embedstore.analysis.data.dataset_labels`), not the labels one figure happens to show:
    then a label has the same colour in every figure of the dataset, whatever split or subsample.
    """
    names = sorted({str(x) for x in labels} - {UNLABELLED})
    k = len(names)
    if k <= 10:
        cmap, pos = matplotlib.colormaps["tab10"], [i / 10 + 0.05 for i in range(k)]
    elif k <= 20:
        cmap, pos = matplotlib.colormaps["tab20"], [i / 20 + 0.025 for i in range(k)]
    else:
        cmap, pos = matplotlib.colormaps["turbo"], list(np.linspace(0.05, 0.95, k))
    colors = {name: tuple(float(c) for c in cmap(p)) for name, p in zip(names, pos)}
    colors[UNLABELLED] = UNLABELLED_COLOR
    return colors


def add_label_legend(fig: Figure, colors: dict[str, tuple], present: Iterable[str], title: str) -> None:
    """A figure-level legend outside the panels, one marker per label in ``present`` (sorted)."""
    present = set(present)
    names = [n for n in sorted(colors) if n in present and n != UNLABELLED]
    if UNLABELLED in present:
        names.append(UNLABELLED)
    if not names:
        return
    handles = [
        Line2D([], [], linestyle="", marker="o", markersize=7, color=colors[n],
               label=UNLABELLED_NAME if n == UNLABELLED else n)
        for n in names
    ]
    fig.legend(handles=handles, loc="outside right upper", title=title, frameon=False,
               ncols=1 if len(handles) <= 25 else 2)


def scatter_labelled(ax, coords: np.ndarray, labels: np.ndarray, colors: dict[str, tuple]) -> None:
    """Scatter ``coords [n, 2]`` coloured by ``labels [n]``, one draw call per label (sorted order)."""
    n = coords.shape[0]
    size = float(np.clip(3000.0 / max(n, 1), 2.0, 25.0))
    for name in sorted(set(labels.tolist())):
        m = labels == name
        ax.scatter(coords[m, 0], coords[m, 1], s=size, color=colors[name], alpha=0.75,
                   linewidths=0, rasterized=True, label=UNLABELLED_NAME if name == UNLABELLED else name)
    ax.tick_params(labelsize=8)


# ---- titles that fit -----------------------------------------------------------------------------


def wrap_text(fig: Figure, text: str, fontsize: float, width_in: float) -> str:
    """``text`` with its lines broken at spaces so that each, drawn at ``fontsize`` points, is at most
    ``width_in`` inches wide (measured with the figure's renderer; a single over-long word stays whole)."""
    renderer = fig.canvas.get_renderer()
    prop = FontProperties(size=fontsize)
    max_px = width_in * fig.dpi

    def fits(line: str) -> bool:
        return renderer.get_text_width_height_descent(line, prop, ismath=False)[0] <= max_px

    lines = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            trial = f"{current} {word}" if current else word
            if current and not fits(trial):
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return "\n".join(lines)


def set_suptitle(fig: Figure, text: str, fontsize: float = 11) -> None:
    """The figure title, wrapped to the width the figure leaves it.

    With a figure-level legend outside the panels on the right (:func:`add_label_legend`), the
    title is left-aligned and wrapped to end before the legend's column, so the two never overlap,
    however narrow the figure; otherwise it is centred and wrapped to the figure's width.
    """
    width_in = fig.get_figwidth() - 0.2
    legends = [leg for leg in fig.legends if leg.get_visible()]
    if legends:
        renderer = fig.canvas.get_renderer()
        width_in -= max(leg.get_window_extent(renderer).width for leg in legends) / fig.dpi + 0.2
        fig.suptitle(wrap_text(fig, text, fontsize, width_in), fontsize=fontsize, x=0.02, ha="left")
    else:
        fig.suptitle(wrap_text(fig, text, fontsize, width_in), fontsize=fontsize)


def set_axes_title(ax, text: str, fontsize: float = 9) -> None:
    """An axes title wrapped to (about) the width of its panel: the figure's width over its columns,
    less room for the y axis labels."""
    fig = ax.get_figure()
    ncols = ax.get_subplotspec().get_gridspec().ncols if ax.get_subplotspec() else 1
    width_in = max(fig.get_figwidth() / ncols - 0.9, 1.5)
    ax.set_title(wrap_text(fig, text, fontsize, width_in), fontsize=fontsize)


LEGEND_WIDTH = 2.8  # inches that figures with a figure legend of named lines add for it


def add_series_legend(fig: Figure, title: str | None = None, fontsize: float = 8) -> None:
    """One figure-level legend, outside the panels on the right, naming every labelled line of every
    panel once (first-seen order): it hides no data and stays clear of the panel titles."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return
    fig.legend(list(entries.values()), list(entries), loc="outside right upper", frameon=False, fontsize=fontsize,
               title=wrap_text(fig, title, fontsize, LEGEND_WIDTH - 0.3) if title else None,
               title_fontsize=fontsize, handlelength=3.0)


# ---- layer axes ----------------------------------------------------------------------------------

_NUMBERED = re.compile(r"(?:layer)?[_-]?\d+", re.IGNORECASE)


def depth_ordered(names: Sequence[str]) -> bool:
    """True when a model's layer names are just numbers (``layer_00``, ``layer3``, ``7``): blocks of
    one stack, ordered by depth. Named layers (MFCC's ``mfcc, delta, chroma, spectral, combined``,
    CLAP's ``patch_embed, stage_1, ..., projection``) are categories instead."""
    return all(_NUMBERED.fullmatch(str(n)) for n in names)


def layer_axis_groups(names_by_model: Mapping[str, Sequence[str]]) -> list[tuple[list[str] | None, list[str]]]:
    """Models that can share one layer axis: ``[(names, models)]``, first-seen order.

    Depth-ordered models all share one numeric axis (``names`` None: x is the layer index); models with
    named layers share an axis only with models that have the very same names (x: those categories).
    """
    groups: dict[tuple[str, ...] | None, list[str]] = {}
    for model, names in names_by_model.items():
        key = None if depth_ordered(names) else tuple(str(n) for n in names)
        groups.setdefault(key, []).append(model)
    return [(None if key is None else list(key), models) for key, models in groups.items()]


def set_layer_axis(ax, names: Sequence[str] | None, axis: str = "x") -> None:
    """Label ``ax``'s ``axis`` ("x" or "y") with layers: integer indices when ``names`` is None, else
    one tick per named layer showing its name."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    if names is None:
        target.set_major_locator(MaxNLocator(integer=True))
        target.set_label_text("layer index")
        return
    long = axis == "x" and (sum(len(str(n)) for n in names) > 45 or max(len(str(n)) for n in names) > 12)
    target.set_ticks(range(len(names)), [str(n) for n in names],
                     **({"rotation": 30, "ha": "right", "rotation_mode": "anchor"} if long else {}))
    target.set_label_text("layer")


def plot_layers(ax, names: Sequence[str] | None, xs: Sequence[int], ys: Sequence[float], **kwargs) -> None:
    """``ys`` at layer indices ``xs``: joined by a line over depth-ordered layers (``names`` None),
    markers alone over named layers, which have no order to draw a line along."""
    if names is not None:
        kwargs["linestyle"] = ""
    ax.plot(xs, ys, **kwargs)
