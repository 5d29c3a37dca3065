"""Heads trained on frozen embeddings from the store.

- :mod:`~embedstore.heads.probe`: :func:`run_probe` (layer sweeps, best layer, weighted layers) and
  :func:`format_comparison` (one table across models and layers).
- :mod:`~embedstore.heads.protocol`: :func:`probe_arrays`, the store-free core.
- :mod:`~embedstore.heads.mlp` (``MLPHead``), :mod:`~embedstore.heads.logreg`,
  :mod:`~embedstore.heads.metrics` (metrics, bootstrap CIs, McNemar).
- Result records (JSON beside the store) live in :mod:`embedstore.store.records`.
- :mod:`~embedstore.heads.torch_data`: :class:`StoreBatches` / :func:`store_loader`, shuffled
  ``(embeddings, label codes)`` batches read from the store in chunk-aligned blocks, for your own heads.

Names are imported lazily so that ``import embedstore.heads`` does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "run_probe": "embedstore.heads.probe",
    "format_comparison": "embedstore.heads.probe",
    "ProbeReport": "embedstore.heads.probe",
    "probe_arrays": "embedstore.heads.protocol",
    "ProbeResult": "embedstore.heads.protocol",
    "MLPHead": "embedstore.heads.mlp",
    "classification_metrics": "embedstore.heads.metrics",
    "bootstrap_ci": "embedstore.heads.metrics",
    "StoreBatches": "embedstore.heads.torch_data",
    "store_loader": "embedstore.heads.torch_data",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedstore.heads' has no attribute {name!r}")
