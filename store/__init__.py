"""The embedding store: datasets, track tables and per-layer embeddings in Zarr v3 or HDF5.

No torch and no encoder code here; see ``docs/store-format.md`` for the on-disk layout.
"""

from embedstore.store.info import format_info, info
from embedstore.store.load import Embeddings, load_embeddings, load_frames
from embedstore.store.schema import IDENTITY_KEYS, SCHEMA_VERSION, TrackTable
from embedstore.store.store import DEFAULT_STORE, Store, open_store
from embedstore.store.writer import ModelWriter

__all__ = [
    "DEFAULT_STORE",
    "IDENTITY_KEYS",
    "SCHEMA_VERSION",
    "Embeddings",
    "ModelWriter",
    "Store",
    "TrackTable",
    "format_info",
    "info",
    "load_embeddings",
    "load_frames",
    "open_store",
]
