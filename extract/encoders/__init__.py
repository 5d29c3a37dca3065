"""Audio encoders: one interface (:class:`Encoder`), one registry (:func:`load_encoder`).

Names are imported lazily so that listing encoders does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "Encoder": "base",
    "EncoderOutput": "base",
    "HearEncoder": "hear",
    "EncoderRequest": "registry",
    "EncoderSpec": "registry",
    "ENCODERS": "registry",
    "load_encoder": "registry",
    "list_encoders": "registry",
    "format_encoder_table": "registry",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
