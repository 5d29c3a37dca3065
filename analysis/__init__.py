"""Analyses of a store's embeddings: projections, cosine anisotropy, layer curves, CKA, confusion.

Each user-facing operation is one function returning a result dataclass with its numbers and the
paths of the figures and JSON it wrote (default folder: ``<store>.analysis/``), plus a ``format_*``
function giving the terminal summary. Figures are headless and byte-reproducible.
"""

from __future__ import annotations

from .confusion_figure import ConfusionResult, confusion, format_confusion
from .layer_curves import LayerCurve, LayerCurvesResult, format_layers, layers
from .projection import ProjectionPanel, ProjectionResult, format_pca, format_projection, format_umap, pca, umap
from .similarity import CKAResult, CosineResult, CosineRow, cka, cosine, format_cka, format_cosine

__all__ = [
    "CKAResult", "ConfusionResult", "CosineResult", "CosineRow", "LayerCurve", "LayerCurvesResult",
    "ProjectionPanel", "ProjectionResult", "cka", "confusion", "cosine", "format_cka", "format_confusion",
    "format_cosine", "format_layers", "format_pca", "format_projection", "format_umap", "layers", "pca", "umap",
]
