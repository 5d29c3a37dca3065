"""Headless, deterministic matplotlib figures: the house style shared by every folder that draws
(analysis/ figures, fine-tuning's training curves).

Figures are built with the object-oriented :class:`~matplotlib.figure.Figure` API on an Agg canvas,
never through pyplot, so nothing here changes the caller's backend or global state. Saving strips
dates and software versions from the metadata and salts SVG ids, so the same inputs give the same
bytes on every run. Like ``errors`` and ``devices`` this module sits below every folder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "FIGURE_FORMATS", "PANEL_SIZE", "new_figure", "save_figure"]

PANEL_SIZE = (4.2, 3.8)  # inches per panel
DPI = 150
FIGURE_FORMATS = ("png", "svg", "pdf")

# metadata entries set to None are left out of the file: no dates, no version strings
_METADATA: dict[str, dict[str, None]] = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


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
