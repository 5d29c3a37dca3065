"""Dataset adapters: a folder on disk -> a :class:`Dataset` (a list of :class:`Track`).

One module per kind behind a registry (:mod:`~embedstore.extract.datasets.registry`), picked from the
folder's contents or named by ``--dataset-type``:

- ``gtzan`` (:mod:`.gtzan`): genre folders of ``<genre>.<digits>.<ext>`` files, task ``genre``.
- ``musiccaps`` (:mod:`.musiccaps`): ``musiccaps-public.csv`` plus ``<ytid>.<ext>`` clips, task ``caption``.
- ``folder`` (:mod:`.folder`): one sub-folder per class (optionally inside split folders), task ``label``.
- ``manifest`` (:mod:`.manifest`): a CSV ``path,label[,split][,caption]``.

:class:`DatasetRequest` says which dataset and how to split it (``--dataset-type``, ``--label-name``,
``--split-scheme``, ...); its ``discover()`` (or :func:`discover_dataset`) reads it. ``label_name``
names the class-label task (``--label-name genre``: a folder of genres answers to ``--task genre``).
Every audio file is checked at discovery (a header read,
:func:`~embedstore.extract.audio.audio_info`); unreadable or missing files go to ``Dataset.skipped`` as
``(path, reason)`` and never into ``tracks``. Split schemes are described in
:mod:`embedstore.extract.splits`; ``Dataset.split_reason`` says why ``auto`` chose the one it did.
Shared helpers live in :mod:`.common`, folder inspection in :mod:`.layout`, the report of
``embedstore datasets`` in :mod:`.summary`.
"""

from __future__ import annotations

from .base import Dataset, Track
from .gtzan import GTZAN_GENRES
from .musiccaps import MUSICCAPS_CSV
from .registry import DATASET_KINDS, KINDS, SPLIT_SCHEMES, DatasetKind, DatasetRequest, discover_dataset, get_kind
from .summary import format_dataset_summary, summarize_dataset

__all__ = [
    "DATASET_KINDS",
    "KINDS",
    "SPLIT_SCHEMES",
    "GTZAN_GENRES",
    "MUSICCAPS_CSV",
    "Dataset",
    "DatasetKind",
    "DatasetRequest",
    "Track",
    "discover_dataset",
    "format_dataset_summary",
    "get_kind",
    "summarize_dataset",
]
