"""The dataset-kind registry: kind name -> :class:`DatasetKind`; :class:`DatasetRequest`, the one
description of which dataset to read and how to split it; and :func:`discover_dataset`.

Adding a kind = one module with ``marker(folder)``, ``detect(root)`` and
``discover(request, given, level) -> Dataset`` plus one entry in :data:`KINDS`:

- ``marker(folder) -> bool``: ``folder`` is the top of a dataset of this kind, so the descent through
  wrapper folders (:func:`~embedstore.extract.datasets.layout.descend_wrappers`) stops there;
- ``detect(root) -> bool``: ``root`` (wrappers descended; a CSV file for kinds read from one) holds
  this kind; kinds are tried in ``detect_order``;
- ``discover(request, given, level)``: the :class:`~embedstore.extract.datasets.base.Dataset` of the
  folder ``given`` by the user, read at ``level`` (``given`` with its wrappers descended).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType

from embedstore.errors import DatasetError, not_one_of

from .base import Dataset
from .layout import descend_wrappers


@dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset folder.

    Attributes:
        name: what ``--dataset-type`` calls it.
        module: module holding ``marker``, ``detect`` and ``discover`` (a leading dot: in this package).
        description: one line.
        detect_order: kinds are detected in increasing order (a MusicCaps CSV wins over GTZAN folders,
            which win over a manifest, which wins over plain class folders).
        from_file: the dataset may be given as its CSV file rather than a folder.
        descend: when the kind is named, wrapper folders above it are descended first.
    """

    name: str
    module: str
    description: str
    detect_order: int
    from_file: bool = False
    descend: bool = True

    def adapter(self) -> ModuleType:
        """The kind's module (``marker``, ``detect``, ``discover``)."""
        return import_module(self.module, __package__)


KINDS: dict[str, DatasetKind] = {
    kind.name: kind
    for kind in (
        DatasetKind("gtzan", ".gtzan", "genre folders of <genre>.<digits>.<ext> files", detect_order=1),
        DatasetKind("musiccaps", ".musiccaps", "musiccaps-public.csv and <ytid>.<ext> clips", detect_order=0,
                    from_file=True, descend=False),
        DatasetKind("folder", ".folder", "one sub-folder of audio per class (optionally in split folders)",
                    detect_order=3),
        DatasetKind("manifest", ".manifest", "a CSV of path,label[,split][,caption]", detect_order=2,
                    from_file=True, descend=False),
    )
}
DATASET_KINDS = tuple(KINDS)
#: every --split-scheme some dataset kind accepts (see :func:`discover_dataset` for which kind takes which)
SPLIT_SCHEMES = ("auto", "fault-filtered", "random", "random-val", "kfold", "audioset-eval", "manifest", "folders")
_LABEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def get_kind(name: str) -> DatasetKind:
    """The kind named ``name`` (any case); :class:`DatasetError` naming ``--dataset-type`` with a
    "did you mean" otherwise."""
    try:
        return KINDS[name.lower()]
    except KeyError:
        raise DatasetError(not_one_of("--dataset-type", name, tuple(KINDS), "dataset type")) from None


def _check_label_name(label_name: str | None) -> None:
    if label_name is not None and (not _LABEL_NAME.fullmatch(label_name) or label_name == "caption"):
        raise DatasetError(f"--label-name {label_name!r}: use a word of letters, digits, '_' or '-' "
                           "starting with a letter (not 'caption'), e.g. genre")


@dataclass(frozen=True)
class DatasetRequest:
    """Which dataset to read and how to split it: what ``DATASET_DIR``, ``--dataset-type``,
    ``--dataset-name``, ``--label-name``, ``--split-scheme``, ``--split-dir``, ``--seed`` and ``--folds``
    say. Checked when built (the kind, the label name); :meth:`discover` reads the folder.

    Attributes:
        root: dataset folder (or, for ``manifest``/``musiccaps``, the CSV file itself). Wrapper
            folders (no audio of their own, all of it in one sub-folder) are descended first.
        kind: ``gtzan`` | ``musiccaps`` | ``folder`` | ``manifest`` (:data:`KINDS`); None detects it
            (musiccaps CSV > GTZAN genre folders > manifest CSV > class sub-folders).
        name: dataset name in a store (default: ``gtzan``/``musiccaps``, else the folder's name).
        label_name: name of the class-label task (default ``genre`` for GTZAN, ``label`` for
            folders and manifests; a manifest with a column of this name reads its labels there).
        split_scheme: ``auto`` | ``fault-filtered`` (GTZAN) | ``random`` | ``random-val`` | ``kfold`` |
            ``audioset-eval`` (MusicCaps) | ``manifest`` (the CSV's split column) | ``folders``
            (class folders inside ``train/``, ``valid/``, ``test/``). ``auto`` means fault-filtered
            for GTZAN when the lists are local (``split_dir`` or the cache), the CSV's split column
            for a manifest that has one, the split folders where there are some, else ``random``.
            ``random`` is stratified 80/20 train/test for labelled data and 70/10/20
            train/valid/test for MusicCaps. ``Dataset.split_reason`` says which rule applied.
        split_dir: folder holding GTZAN's ``{train,valid,test}_filtered.txt``.
        seed: seed of the random and k-fold splits (same seed, same files -> same splits).
        folds: number of folds for ``kfold``.
        tag_separator: what separates the tags of one clip in a manifest's tagging column.
        task_kinds: ``((column, kind), ...)`` stating a manifest column's kind (``tag``, ``regress``)
            instead of inferring it.
    """

    root: Path
    kind: str | None = None
    name: str | None = None
    label_name: str | None = None
    split_scheme: str = "auto"
    split_dir: Path | None = None
    seed: int = 0
    folds: int = 5
    tag_separator: str = ";"
    task_kinds: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.split_dir is not None:
            object.__setattr__(self, "split_dir", Path(self.split_dir))
        if self.kind:
            object.__setattr__(self, "kind", get_kind(self.kind).name)
        _check_label_name(self.label_name)

    @classmethod
    def coerce(cls, value: DatasetRequest | str | os.PathLike, **defaults) -> DatasetRequest:
        """``value`` itself if it is a request, else the request for the folder ``value`` with ``defaults``."""
        return value if isinstance(value, cls) else cls(value, **defaults)

    def discover(self) -> Dataset:
        """Scan the folder into a :class:`~embedstore.extract.datasets.base.Dataset` of readable tracks
        with splits assigned.

        Raises:
            DatasetError: the folder is missing, of an unknown type, holds fewer than two class
                folders, or a CSV/split list is malformed.
        """
        root = self.root.expanduser().absolute()
        if not root.exists():
            raise DatasetError(f"{root}: dataset folder not found")
        if root.is_file() and self.kind is not None and not KINDS[self.kind].from_file:
            raise DatasetError(f"{root}: a {self.kind} dataset is a folder, not a file")
        level = _data_level(root, self.kind)
        kind = KINDS[self.kind] if self.kind else detect_kind(level)
        ds = kind.adapter().discover(self, root, level)
        if self.name:
            ds.name = self.name
        return ds


def _data_level(root: Path, kind: str | None) -> Path:
    """``root`` with its wrapper folders descended: the descent stops at a folder that some kind (or
    the kind named) marks as a dataset's top; none for kinds that are not ``descend``."""
    if not root.is_dir() or (kind is not None and not KINDS[kind].descend):
        return root
    adapters = [KINDS[kind].adapter()] if kind else [k.adapter() for k in KINDS.values()]
    return descend_wrappers(root, lambda d: any(adapter.marker(d) for adapter in adapters))


def detect_kind(root: Path) -> DatasetKind:
    """The kind of the dataset at ``root`` (wrappers descended): the first in ``detect_order`` whose
    ``detect`` accepts it. Raises :class:`DatasetError` when none does."""
    if root.is_file() and root.suffix.lower() != ".csv":
        raise DatasetError(f"{root}: a dataset is a folder or a CSV manifest, not a single file")
    for kind in sorted(KINDS.values(), key=lambda k: k.detect_order):
        if (kind.from_file or not root.is_file()) and kind.adapter().detect(root):
            return kind
    looked_for = "; ".join(f"{k.name}: {k.description}" for k in KINDS.values())
    raise DatasetError(f"{root}: cannot tell the dataset type (found none of {looked_for})")


def discover_dataset(
    root: str | os.PathLike,
    dataset_type: str | None = None,
    *,
    split: str = "auto",
    split_dir: str | os.PathLike | None = None,
    seed: int = 0,
    folds: int = 5,
    name: str | None = None,
    label_name: str | None = None,
) -> Dataset:
    """Scan ``root`` into a :class:`~embedstore.extract.datasets.base.Dataset`:
    ``DatasetRequest(root, dataset_type, name, label_name, split, split_dir, seed, folds).discover()``
    (see :class:`DatasetRequest` for each argument; ``split`` is its ``split_scheme``).

    Raises:
        DatasetError: ``root`` is missing, of an unknown type, holds fewer than two class folders,
            or a CSV/split list is malformed.
    """
    request = DatasetRequest(root, dataset_type, name=name, label_name=label_name, split_scheme=split,
                             split_dir=split_dir, seed=seed, folds=folds)
    return request.discover()
