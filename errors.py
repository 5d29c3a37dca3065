"""The exception types of embedstore.

Every error a user can cause (bad file, bad option, incompatible store) is an
:class:`EmbedstoreError`; the CLI prints its message as one line and exits non-zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
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


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` naming the choice closest to ``word`` (difflib, case-insensitive), else ``""``.

    Appended to one-line messages about an unknown name, e.g. ``unknown model 'merrt' (did you mean 'mert'?)``.
    """
    names = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(names), n=1, cutoff=0.6)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def not_one_of(option: str, value: object, choices: Sequence[object], what: str = "value") -> str:
    """One line for a value outside a fixed set of choices, e.g.
    ``--head 'mpl': unknown head (did you mean 'mlp'?); use mlp, logreg``. ``option``: the CLI option;
    ``what``: what the value names."""
    return (f"{option} {str(value)!r}: unknown {what}{did_you_mean(value, choices)}; "
            f"use {', '.join(map(str, choices))}")
