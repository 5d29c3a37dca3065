"""embedstore: every layer of pretrained audio encoders in one chunked store.

Heavy sub-modules (torch, transformers) are imported lazily, so ``import embedstore`` and the
CLI's ``--help`` stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_embeddings": "embedstore.store",
    "open_store": "embedstore.store",
    "load_audio": "embedstore.extract.audio",
    "discover_dataset": "embedstore.extract.datasets",
    "DatasetRequest": "embedstore.extract.datasets",
    "EncoderRequest": "embedstore.extract.encoders.registry",
    "EmbedstoreError": "embedstore.errors",
    "run_extract": "embedstore.extract.pipeline",
    "run_probe": "embedstore.heads.probe",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedstore' has no attribute {name!r}")
