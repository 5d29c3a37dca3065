"""Headless, deterministic matplotlib helpers shared by the analysis figures.

Figures are built with the object-oriented :class:`~matplotlib.figure.Figure` API on an Agg canvas,
never through pyplot, so nothing here changes the caller's backend or global state. Saving strips
dates and software versions from the metadata and salts SVG ids, so the same inputs give the same
bytes on every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

UNLABELLED = ""
UNLABELLED_NAME = "(no label)"
UNLABELLED_COLOR = (0.6, 0.6, 0.6, 1.0)
PANEL_SIZE = (4.2, 3.8)  # inches per panel
DPI = 150
FIGURE_FORMATS = ("png", "svg", "pdf")

# metadata entries set to None are left out of the file: no dates, no version strings
_METADATA: dict[str, dict[str, None]] = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


def label_colors(labels: Iterable[str]) -> dict[str, tuple[float, float, float, float]]:
    """One RGBA colour per distinct label, from the sorted label set (so the same label always gets
    the same colour in every panel of a figure). Unlabelled (``""``) is grey."""
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


def new_figure(n_panels: int, ncols: int | None = None, panel_size: tuple[float, float] = PANEL_SIZE,
               legend_space: float = 0.0) -> tuple[Figure, list]:
    """A constrained-layout figure with ``n_panels`` axes in a grid (row-major); unused cells hidden.

    ``legend_space`` adds that many inches of width for a legend outside the panels.
    """
    ncols = ncols or min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols + legend_space, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


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


def save_figure(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.<fmt>`` for each format, byte-reproducibly; returns the paths."""
    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": "embedstore", "pdf.compression": 6}):
        for fmt in formats:
            fmt = fmt.lower().lstrip(".")
            if fmt not in FIGURE_FORMATS:
                raise ValueError(f"unknown figure format {fmt!r}; choose from {FIGURE_FORMATS}")
            path = out_dir / f"{stem}.{fmt}"
            fig.savefig(path, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
            paths.append(path)
    return paths


def scatter_labelled(ax, coords: np.ndarray, labels: np.ndarray, colors: dict[str, tuple]) -> None:
    """Scatter ``coords [n, 2]`` coloured by ``labels [n]``, one draw call per label (sorted order)."""
    n = coords.shape[0]
    size = float(np.clip(3000.0 / max(n, 1), 2.0, 25.0))
    for name in sorted(set(labels.tolist())):
        m = labels == name
        ax.scatter(coords[m, 0], coords[m, 1], s=size, color=colors[name], alpha=0.75,
                   linewidths=0, rasterized=True)
    ax.tick_params(labelsize=8)
