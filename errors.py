"""The exception types of embedstore.

Every error a user can cause (bad file, bad option, incompatible store) is an
:class:`EmbedstoreError`; the CLI prints its message as one line and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class EmbedstoreError(Exception):
    """Base class of all errors embedstore reports to the user as one line."""


class AudioError(EmbedstoreError):
    """An audio file could not be decoded into usable samples.

    The message always names the file and the reason, e.g.
    ``"gtzan/jazz/jazz.00054.wav: truncated or corrupt header"``.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(EmbedstoreError):
    """A dataset folder, split list or manifest is missing or malformed."""


class StoreError(EmbedstoreError):
    """A store is missing, malformed, or incompatible with what was asked of it."""


class ModelError(EmbedstoreError):
    """An encoder name, checkpoint, layer or option is unknown or unusable."""
