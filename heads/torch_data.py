"""PyTorch data loading from the store, for training your own heads on stored embeddings.

:class:`StoreBatches` is an ``IterableDataset`` of whole batches ``(X, y)``: ``X`` ``[batch, dim]`` (one
layer) or ``[batch, layers, dim]`` (several), ``y`` ``[batch]`` int64 label codes (indices into
:attr:`StoreBatches.classes`). It reads the store in chunk-aligned **blocks** (``block_chunks`` chunks
of track-table rows, so every read is whole chunks, read once per epoch) and shuffles at two levels:
the order of the blocks, and the rows of ``blocks_in_memory`` blocks at a time, so a batch mixes rows
of several blocks. Memory holds ``blocks_in_memory`` blocks, never the whole layer.

Every row of the split is yielded exactly once per epoch. The shuffle is seeded: in the loading
process epoch ``k`` uses ``(seed, k)`` (the k-th iteration); with ``num_workers > 0`` the workers share
the DataLoader's per-epoch base seed, drawn from its ``generator`` (:func:`store_loader` seeds it with
``seed``), and each worker reads its own share of the blocks. :meth:`StoreBatches.set_epoch` pins the
epoch instead.

    loader = store_loader("embedstore.zarr", model="mert", layers=6, split="train", batch_size=64,
                          num_workers=2, seed=0)
    for epoch in range(10):
        for X, y in loader:
            ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from embedstore.errors import StoreError
from embedstore.store import Store, open_store
from embedstore.store.load import is_one_layer, layer_indices, read_stacked, select_rows
from embedstore.store.specs import resolve_entry


class StoreBatches(IterableDataset):
    """Shuffled batches ``(X, y)`` of one split of a model entry, read in chunk-aligned blocks.

    Args:
        store: path of the store (each process opens it read-only).
        dataset, model: as in :func:`~embedstore.store.load_embeddings` (``None``: the only one).
        layers: one layer (index or name; ``X`` ``[batch, dim]``), a list of layers or ``"all"``
            (``X`` ``[batch, layers, dim]``, equal widths).
        split: split name(s) whose finished rows are served (``None``: every finished row).
        batch_size: rows per batch; the last batch of each worker may be shorter (``drop_last``
            drops it).
        shuffle: shuffle blocks and rows (``False``: track-table order, e.g. for evaluation).
        seed: seed of the shuffles.
        block_chunks: chunks of the store per block.
        blocks_in_memory: blocks whose rows are shuffled together.

    Attributes:
        classes: ``list[str]``, the dataset's labels in sorted order; ``y`` indexes it. The codes
            cover every label of the dataset, so they agree between splits.
        rows: ``[n]`` track-table rows served per epoch (sorted).
    """

    def __init__(self, store: str | Path, dataset: str | None = None, model: str | None = None,
                 layers: int | str | Sequence[int | str] = -1, split: str | list[str] | None = "train", *,
                 batch_size: int = 64, shuffle: bool = True, seed: int = 0, block_chunks: int = 1,
                 blocks_in_memory: int = 4, drop_last: bool = False) -> None:
        super().__init__()
        if batch_size < 1 or block_chunks < 1 or blocks_in_memory < 1:
            raise StoreError("batch_size, block_chunks and blocks_in_memory must be at least 1")
        self.path = Path(store)
        with open_store(self.path) as st, st.snapshot():
            self.dataset, self.model = resolve_entry(st, dataset, model)
            self.layers = layer_indices(st, self.dataset, self.model, layers)
            self.rows = select_rows(st, self.dataset, self.model, split)
            labels = st.tracks(self.dataset).labels
            block_rows = int(st.model_attrs(self.dataset, self.model)["chunk_rows"]) * block_chunks
        unlabelled = self.rows[labels[self.rows] == ""]
        if unlabelled.size:
            raise StoreError(f"{self.path}: {unlabelled.size} rows of split {split!r} have no label "
                             f"(first: row {int(unlabelled[0])}); StoreBatches needs a label per row")
        self.classes: list[str] = sorted(set(labels.tolist()) - {""})
        self._codes = np.searchsorted(np.asarray(self.classes), labels).astype(np.int64)
        self._one_layer = is_one_layer(layers)
        # the served rows of each block (block_rows track-table rows) that holds any
        edges = np.flatnonzero(np.diff(self.rows // block_rows)) + 1
        self._blocks = np.split(self.rows, edges) if self.rows.size else []
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.blocks_in_memory, self.drop_last = blocks_in_memory, drop_last
        self._epoch = 0
        self._pinned: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use ``(seed, epoch)`` for the shuffles of the following iterations (all workers)."""
        self._pinned = int(epoch)

    def _epoch_key(self) -> int:
        if self._pinned is not None:
            return self._pinned
        info = get_worker_info()
        if info is not None:  # the loader's base seed of this epoch, the same in every worker
            return int(info.seed - info.id) % (2**63)
        self._epoch += 1
        return self._epoch - 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self._epoch_key()])
        order = rng.permutation(len(self._blocks)) if self.shuffle else np.arange(len(self._blocks))
        info = get_worker_info()
        if info is not None:
            order = order[info.id :: info.num_workers]
        carry: tuple[torch.Tensor, torch.Tensor] | None = None  # rows short of a batch, kept in memory
        with open_store(self.path) as st:
            for start in range(0, len(order), self.blocks_in_memory):
                rows = np.concatenate([self._blocks[b] for b in order[start : start + self.blocks_in_memory]])
                X, y = self._read(st, rng.permutation(rows) if self.shuffle else rows)
                if carry is not None:
                    X, y = torch.cat([carry[0], X]), torch.cat([carry[1], y])
                full = len(y) - len(y) % self.batch_size
                for i in range(0, full, self.batch_size):
                    yield X[i : i + self.batch_size], y[i : i + self.batch_size]
                carry = (X[full:], y[full:]) if full < len(y) else None
        if carry is not None and not self.drop_last:
            yield carry

    def _read(self, st: Store, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, y)`` of ``rows``, in the order given."""
        X = read_stacked(st, self.dataset, self.model, self.layers, rows, stack=not self._one_layer)
        return torch.from_numpy(X), torch.from_numpy(self._codes[rows])


def store_loader(store: str | Path, dataset: str | None = None, model: str | None = None,
                 layers: int | str | Sequence[int | str] = -1, split: str | list[str] | None = "train", *,
                 batch_size: int = 64, shuffle: bool = True, seed: int = 0, num_workers: int = 0,
                 **options) -> DataLoader:
    """A ``DataLoader`` over :class:`StoreBatches` (``options``: its other arguments) with
    ``num_workers`` reading processes and a generator seeded with ``seed``, so the epochs' shuffles
    are reproducible with workers too. Iterating it yields ``(X, y)`` batches."""
    data = StoreBatches(store, dataset, model, layers, split, batch_size=batch_size, shuffle=shuffle,
                        seed=seed, **options)
    return DataLoader(data, batch_size=None, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))
