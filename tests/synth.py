"""Test-side access to the synthetic datasets (they live in the package for ``embedstore demo``),
plus generators of the folder layouts users have (class folders under wrappers, any genre names)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from embedstore.extract.synthetic import *  # noqa: F401,F403
from embedstore.extract.synthetic import __all__ as _synthetic_all
from embedstore.extract.synthetic import ClipFormat, _write, render_genre

__all__ = [*_synthetic_all, "make_class_folders"]


def make_class_folders(
    base: str | Path,
    classes: Mapping[str, str],
    n_per_class: int = 3,
    *,
    name: str = "{i:03d}",
    formats: Sequence[ClipFormat] = (ClipFormat("wav", 8000),),
    seconds: float = 0.25,
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write ``base/<class>/<name>.<ext>`` clips and return ``{class: [files]}``.

    ``classes`` maps each folder name to the synthetic genre it sounds like (any folder name, e.g.
    ``{"drill": "hiphop"}``); ``name`` is formatted with ``cls`` (the folder name) and ``i`` (the
    clip's index), e.g. ``"{cls}.{i:05d}"`` for GTZAN's naming. Clip i uses ``formats[i % len]``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for cls, genre in classes.items():
        folder = Path(base) / cls
        folder.mkdir(parents=True, exist_ok=True)
        out[cls] = []
        for i in range(n_per_class):
            fmt = formats[i % len(formats)]
            path = folder / f"{name.format(cls=cls, i=i)}.{fmt.ext}"
            _write(path, render_genre(genre, fmt.sample_rate, seconds, rng), fmt)
            out[cls].append(path)
    return out
