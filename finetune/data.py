"""Audio for fine-tuning: random training crops and full evaluation clips, decoded in DataLoader workers.

- :class:`CropDataset` yields one random crop of ``crop_seconds`` per training clip. The crop's start
  is drawn from ``numpy.random.default_rng((seed, epoch, index))``, so an epoch's crops are the same
  whatever the worker count and whether the run was resumed. Only the crop is decoded
  (``load_audio`` with ``offset``/``duration``) with the run's gain rule, the same as extraction's
  (``"none"``: the decoded amplitude; ``"peak"``: each crop peak-normalised on its own).
- :class:`ClipDataset` yields full clips (the track's own segment) for evaluation.
- :func:`label_task` names the class-label task to learn (the dataset's only one when ``--task`` is
  omitted); :func:`task_splits` picks the labelled tracks of a task and their train/valid/test split, holding
  out validation from train with the probes' carve-out (:func:`~embedstore.heads.protocol.carve_valid`)
  when the dataset has no valid split; :func:`limit_splits` caps each split at ``--limit`` clips with
  :func:`~embedstore.heads.protocol.stratified_subset` (seeded, stratified), as the training-split
  evaluation's subsample is drawn.

A clip that fails to decode, or that the encoder refuses as too short (:func:`usable_items`, with
the encoder's :attr:`~embedstore.extract.encoders.Encoder.min_samples` at the time, which for
wav2vec2/MERT grows in training mode with SpecAugment on), is dropped from its batch (and reported),
never stopping the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedstore.errors import AudioError, DatasetError, did_you_mean
from embedstore.extract.audio import DEFAULT_GAIN, audio_duration, load_audio
from embedstore.extract.datasets import Dataset, Track
from embedstore.extract.encoders import Encoder
from embedstore.extract.pipeline import leave_interrupts_to_main
from embedstore.heads.protocol import carve_valid, stratified_subset

SPLITS = ("train", "valid", "test")


@dataclass
class TaskSplits:
    """The tracks of one classification task, per split, and the class order.

    Attributes:
        tracks: ``{"train"|"valid"|"test": [Track, ...]}``.
        labels: class values; a track's class code is its label's index here.
        valid_source: ``"split"`` (the dataset's own) or ``"inner"`` (held out from train).
    """

    tracks: dict[str, list[Track]]
    labels: list[str]
    valid_source: str

    def codes(self, split: str) -> np.ndarray:
        """Class codes ``[n]`` (int64) of ``split``'s tracks."""
        index = {c: i for i, c in enumerate(self.labels)}
        return np.array([index[t.label] for t in self.tracks[split]], dtype=np.int64)


def label_task(dataset: Dataset, task: str | None) -> str:
    """``task`` itself, or (``None``) the dataset's only class-label task, e.g. ``genre`` for GTZAN.

    Raises:
        DatasetError: ``task`` is None and the dataset has no class-label task, or several (listed).
    """
    if task is not None:
        return task
    found = sorted(t for t, column in dataset.tasks.items() if column == "label")
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"--task: dataset {dataset.name!r} has no class labels to learn "
                           f"(tasks: {', '.join(dataset.tasks) or 'none'}); use --task caption for captions")
    raise DatasetError(f"--task: dataset {dataset.name!r} has several label tasks ({', '.join(found)}); "
                       "choose one with --task")


def task_splits(dataset: Dataset, task: str, seed: int = 0) -> TaskSplits:
    """Labelled train/valid/test tracks of ``task`` (a class-label task of ``dataset``).

    Classes are sorted as the probes sort them. Without a ``valid`` split, the probes' carve-out
    (:func:`~embedstore.heads.protocol.carve_valid`: 15 % of train, seeded, stratified) becomes
    validation (``valid_source`` ``"inner"``).

    Raises:
        DatasetError: unknown or non-class task, k-fold splits, no train/test clips, or too few
            train clips to hold out validation from.
    """
    column = dataset.tasks.get(task)
    have = ", ".join(dataset.tasks) or "none"
    if column is None:
        raise DatasetError(f"--task {task!r}: dataset {dataset.name!r} has no such labels"
                           f"{did_you_mean(task, dataset.tasks)} (tasks: {have})")
    if column != "label":
        raise DatasetError(f"--task {task!r}: dataset {dataset.name!r} stores it in column {column!r}, "
                           "not class labels; fine-tuning needs a class-label task")
    labelled = [t for t in dataset.tracks if t.label]
    found = sorted({t.split for t in labelled if t.split})
    if any(s.startswith("fold") for s in found):
        raise DatasetError(f"dataset {dataset.name!r} uses k-fold splits ({', '.join(found)}); fine-tuning "
                           "needs train/valid/test (use --split random-val or fault-filtered)")
    tracks = {s: [t for t in labelled if t.split == s] for s in SPLITS}
    if not tracks["train"] or not tracks["test"]:
        raise DatasetError(f"dataset {dataset.name!r}: fine-tuning needs labelled 'train' and 'test' clips, "
                           f"found splits {found or 'none'}")
    valid_source = "split"
    if not tracks["valid"]:
        valid_source = "inner"
        train = tracks["train"]
        try:
            keep, valid = carve_valid([t.label for t in train], seed)
        except DatasetError as exc:
            raise DatasetError(f"dataset {dataset.name!r}: {exc}") from None
        tracks["train"] = [train[i] for i in keep]
        tracks["valid"] = [train[i] for i in valid]
    labels = sorted({t.label for t in labelled}, key=str)
    return TaskSplits(tracks, labels, valid_source)


def limit_splits(splits: TaskSplits, limit: int | None, seed: int = 0) -> TaskSplits:
    """``splits`` with at most ``limit`` clips per split (seeded, stratified when the labels allow);
    ``None``: unchanged. The class list stays the task's."""
    if limit is None:
        return splits
    tracks = {}
    for split, items in splits.tracks.items():
        picked = stratified_subset([t.label for t in items], limit, seed)[1]
        tracks[split] = [items[i] for i in picked]
    return TaskSplits(tracks, splits.labels, splits.valid_source)


@dataclass
class Item:
    """One decoded clip or crop: ``index`` into the dataset, ``wave`` float32 ``[samples]`` (None on
    failure), class ``code``, and the decoding ``error``."""

    index: int
    wave: np.ndarray | None
    code: int
    error: str | None = None


class CropDataset(torch.utils.data.Dataset):
    """Random crops of training clips (map-style; call :meth:`set_epoch` before each epoch).

    Args:
        root: dataset root; tracks: the clips; codes: class code per track ``[n]``.
        sample_rate: the encoder's rate. crop_seconds: crop length (a shorter clip is used whole).
        seed: seed of the crop positions. gain: the gain rule of decoding (``"none"`` or ``"peak"``).
    """

    def __init__(self, root: Path, tracks: Sequence[Track], codes: Sequence[int], sample_rate: int,
                 crop_seconds: float, seed: int = 0, gain: str = DEFAULT_GAIN) -> None:
        self.root, self.tracks, self.codes = Path(root), list(tracks), [int(c) for c in codes]
        self.sample_rate, self.crop_seconds, self.seed = int(sample_rate), float(crop_seconds), int(seed)
        self.gain = gain
        self.epoch = 0
        self.available = [self._available(t) for t in self.tracks]

    def _available(self, track: Track) -> float:
        """Seconds of audio in the track's segment (header read; 0 when unreadable)."""
        try:
            total = audio_duration(self.root / track.path) - track.offset
        except AudioError:
            return 0.0
        return max(0.0, total if track.duration is None else min(track.duration, total))

    def set_epoch(self, epoch: int) -> None:
        """Choose the crops of ``epoch`` (deterministic per seed, epoch and clip)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, i: int) -> Item:
        track = self.tracks[i]
        span = self.available[i]
        crop = min(self.crop_seconds, span) if span > 0 else self.crop_seconds
        rng = np.random.default_rng((self.seed, self.epoch, i))
        start = float(rng.uniform(0.0, span - crop)) if span > crop else 0.0
        try:
            wave = load_audio(self.root / track.path, self.sample_rate, offset=track.offset + start, duration=crop,
                              gain=self.gain)
        except AudioError as exc:
            return Item(i, None, self.codes[i], exc.reason)
        return Item(i, wave[: int(round(self.crop_seconds * self.sample_rate))], self.codes[i])


class ClipDataset(torch.utils.data.Dataset):
    """Full clips (each track's own segment) at ``sample_rate`` with the ``gain`` rule, for evaluation
    and export checks."""

    def __init__(self, root: Path, tracks: Sequence[Track], codes: Sequence[int], sample_rate: int,
                 gain: str = DEFAULT_GAIN) -> None:
        self.root, self.tracks, self.codes, self.sample_rate = Path(root), list(tracks), list(codes), int(sample_rate)
        self.gain = gain

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, i: int) -> Item:
        track = self.tracks[i]
        try:
            wave = load_audio(self.root / track.path, self.sample_rate, offset=track.offset, duration=track.duration,
                              gain=self.gain)
        except AudioError as exc:
            return Item(i, None, int(self.codes[i]), exc.reason)
        return Item(i, wave, int(self.codes[i]))


def collate_items(items: list[Item]) -> list[Item]:
    """Keep a batch as a list of :class:`Item` (clips differ in length)."""
    return items


def usable_items(items: Sequence[Item], encoder: Encoder) -> tuple[list[Item], list[tuple[int, str]]]:
    """Split a batch into the items ``encoder`` can take and the failures ``[(index, reason)]``: clips
    that failed to decode, and clips shorter than ``encoder.min_samples`` (its current mode's)."""
    good: list[Item] = []
    failed: list[tuple[int, str]] = []
    for it in items:
        reason = it.error if it.wave is None else encoder.too_short(len(it.wave))
        if reason is None:
            good.append(it)
        else:
            failed.append((it.index, reason))
    return good, failed


def pad_batch(items: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-padded ``waveforms [B, max samples]`` float32, ``lengths [B]`` and ``codes [B]`` (int64)
    of decoded items (failed items must be dropped first)."""
    lengths = torch.tensor([len(it.wave) for it in items], dtype=torch.long)
    waves = torch.zeros(len(items), int(lengths.max()))
    for j, it in enumerate(items):
        waves[j, : len(it.wave)] = torch.from_numpy(it.wave)
    return waves, lengths, torch.tensor([it.code for it in items], dtype=torch.long)


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, workers: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Item` lists, decoding in ``workers`` processes (0: in this process)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        collate_fn=collate_items,
        drop_last=drop_last,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=leave_interrupts_to_main,
    )


def epoch_loader(crops: CropDataset, epoch: int, seed: int, batch_size: int, workers: int, *,
                 drop_last: bool = False) -> torch.utils.data.DataLoader:
    """The shuffled loader of epoch ``epoch``'s crops: crop positions and batch order depend only on
    ``(seed, epoch)``, so a resumed run draws what an uninterrupted one would."""
    crops.set_epoch(epoch)
    order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return make_loader(crops, batch_size, workers, shuffle=True, generator=order, drop_last=drop_last)
