"""StoreBatches / store_loader: shuffled (embeddings, label codes) batches read from the store in blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.errors import StoreError
from embedstore.heads.torch_data import StoreBatches, store_loader
from embedstore.store import Store, TrackTable, load_embeddings, open_store

N, WIDTH, CHUNK = 46, 5, 4
LABELS = ["rock", "blues", "jazz"]  # codes follow sorted order: blues 0, jazz 1, rock 2
NOT_DONE = {7, 30}


def split_of(row: int) -> str:
    return "test" if row % 5 == 0 else "train"


def embedding(rows, layer: int) -> np.ndarray:
    """``[len(rows), WIDTH]``: column 0 is the row, the rest the layer and a fraction, so a batch
    names its rows."""
    rows = np.asarray(rows, dtype=np.float32)
    return np.stack([rows] + [layer * 100 + rows / 7 + k for k in range(1, WIDTH)], axis=1)


@pytest.fixture(params=["zarr", "h5"])
def store(request, tmp_path) -> Path:
    path = tmp_path / f"store.{request.param}"
    rows = np.arange(N)
    table = TrackTable(ids=[f"t{i}" for i in rows], paths=[f"{i}.wav" for i in rows],
                       labels=[LABELS[i % 3] for i in rows], splits=[split_of(i) for i in rows])
    done = np.array([i for i in rows if i not in NOT_DONE])
    with open_store(path, "a") as st:
        st.write_tracks("gtzan", table, {"tasks": {"genre": "label"}})
        with st.model_writer("gtzan", "enc", {}, [WIDTH] * 3, chunk_rows=CHUNK) as w:
            w.write(done, [embedding(done, layer) for layer in range(3)])
    return path


TRAIN = [i for i in range(N) if split_of(i) == "train" and i not in NOT_DONE]


def epoch_rows(batches) -> list[int]:
    return [int(r) for X, _ in batches for r in (X[:, 0] if X.ndim == 2 else X[:, 0, 0])]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_train_row_once_per_epoch_with_its_values_and_label(store, num_workers):
    loader = store_loader(store, layers=1, split="train", batch_size=8, num_workers=num_workers, seed=3)
    ref = load_embeddings(store, layer=1, split="train")
    row_of = {int(r): k for k, r in enumerate(ref.rows)}
    for _ in range(2):
        batches = list(loader)
        rows = epoch_rows(batches)
        assert sorted(rows) == TRAIN  # each finished train row exactly once
        sizes = [len(y) for _, y in batches]
        assert max(sizes) == 8 and sum(s < 8 for s in sizes) <= max(1, num_workers)
        for X, y in batches:
            assert X.dtype == torch.float32 and X.shape[1:] == (WIDTH,) and y.dtype == torch.int64
            picked = [row_of[int(r)] for r in X[:, 0]]
            np.testing.assert_array_equal(X.numpy(), ref.X[picked])
            np.testing.assert_array_equal(X.numpy(), embedding(X[:, 0].numpy(), 1))
            assert [LABELS[int(r) % 3] for r in X[:, 0]] == [["blues", "jazz", "rock"][c] for c in y.tolist()]
    assert loader.dataset.classes == ["blues", "jazz", "rock"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epochs_shuffle_differently_and_the_seed_reproduces_them(store, num_workers):
    def orders(seed: int) -> list[list[int]]:
        loader = store_loader(store, layers=0, batch_size=6, num_workers=num_workers, seed=seed)
        return [epoch_rows(loader) for _ in range(3)]

    first = orders(0)
    assert first[0] != first[1] != first[2] != first[0]
    assert all(sorted(rows) == TRAIN for rows in first)
    assert orders(0) == first
    assert orders(1)[0] != first[0]
    in_order = epoch_rows(StoreBatches(store, layers=0, batch_size=6, shuffle=False))
    assert in_order == TRAIN


def test_several_layers_stack_and_match_load_embeddings(store):
    data = StoreBatches(store, layers=[2, 0], split=["train", "test"], batch_size=16, seed=1)
    batches = list(data)
    ref = load_embeddings(store, layer=[2, 0], split=["train", "test"])
    got = np.concatenate([X.numpy() for X, _ in batches])
    assert got.shape == (N - len(NOT_DONE), 2, WIDTH)
    order = np.argsort(got[:, 0, 0])
    np.testing.assert_array_equal(got[order], ref.X)
    np.testing.assert_array_equal(got[order][:, 1], embedding(ref.rows, 0))


def test_reads_whole_blocks_and_shuffles_across_them(store, monkeypatch):
    """Each read asks for rows of at most ``blocks_in_memory`` blocks of ``block_chunks`` chunks;
    batches mix rows of different blocks."""
    reads: list[np.ndarray] = []
    original = Store.read_layers

    def spy(self, dataset, model, layers, rows=None):
        reads.append(np.asarray(rows))
        return original(self, dataset, model, layers, rows)

    monkeypatch.setattr(Store, "read_layers", spy)
    data = StoreBatches(store, layers=0, batch_size=5, seed=0, block_chunks=2, blocks_in_memory=2)
    batches = list(data)
    assert sorted(epoch_rows(batches)) == TRAIN
    assert len(reads) == 3  # 46 rows in blocks of 8 -> 6 blocks, read 2 at a time
    for rows in reads:
        blocks = set((rows // (2 * CHUNK)).tolist())
        assert len(blocks) == 2
        whole = [i for i in TRAIN if i // (2 * CHUNK) in blocks]
        assert sorted(rows.tolist()) == whole  # every train row of those blocks, nothing else
    mixed = [len({int(r) // (2 * CHUNK) for r in X[:, 0]}) for X, _ in batches]
    assert max(mixed) > 1


def test_pinned_epoch_and_bad_input(store, tmp_path):
    data = StoreBatches(store, layers=0, batch_size=4, seed=5)
    data.set_epoch(4)
    assert epoch_rows(data) == epoch_rows(data)
    with pytest.raises(StoreError, match="at least 1"):
        StoreBatches(store, batch_size=0)
    with pytest.raises(StoreError, match="no split 'valid'"):
        StoreBatches(store, split="valid")
    path = tmp_path / "nolabels.zarr"
    with open_store(path, "a") as st:
        st.write_tracks("d", TrackTable(ids=["a", "b"], paths=["a.wav", "b.wav"], labels=["x", ""],
                                        splits=["train", "train"]))
        with st.model_writer("d", "enc", {}, [2]) as w:
            w.write(np.arange(2), [np.zeros((2, 2), np.float32)])
    with pytest.raises(StoreError, match="1 rows of split 'train' have no label.*row 1"):
        StoreBatches(path)
