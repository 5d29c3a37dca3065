"""Training (in the one loop, heads/training.fit) and decoding of the captioning head (teacher forcing,
AdamW, early stopping).

Works on in-memory arrays (:class:`CaptionData`), so it is independent of how the store is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from embedstore.devices import resolve_device
from embedstore.errors import ModelError
from embedstore.heads.captioner import AudioCaptioner, GenerationSettings, frame_mask
from embedstore.heads.training import LoopHooks, LoopSettings, fit, seed_everything


@dataclass
class CaptionData:
    """Clips for the captioner.

    ``features``: ``[n, layers, max_frames, dim]`` (any float dtype; cast per batch), or
    ``[n, frames, dim]`` (one layer) or ``[n, dim]`` (pooled vectors, one-frame sequences);
    ``counts``: ``[n]`` valid frames per clip (None: all frames; 0 is raised to 1, an all-zero frame);
    ``captions``: ``n`` reference texts;
    ``track_ids``: ``n`` ids.
    """

    features: np.ndarray
    counts: np.ndarray | None
    captions: list[str]
    track_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.features.ndim == 2:  # pooled vectors [n, dim] -> one-step sequences
            self.features = self.features[:, None, None]
        elif self.features.ndim == 3:  # [n, frames, dim] -> one layer
            self.features = self.features[:, None]
        if self.features.ndim != 4:
            raise ModelError(f"CaptionData: features must be [n, layers, frames, dim], got {self.features.shape}")
        n = self.features.shape[0]
        if self.counts is None:
            self.counts = np.full(n, self.features.shape[2])
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if self.counts.shape != (n,) or len(self.captions) != n:
            raise ModelError(f"CaptionData: {n} clips but {self.counts.shape} counts and {len(self.captions)} captions")
        if not self.track_ids:
            self.track_ids = [str(i) for i in range(n)]
        self.counts = np.clip(self.counts, 1, self.features.shape[2])

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, index: np.ndarray) -> CaptionData:
        """The clips at ``index`` (a new object holding a copy of their features)."""
        index = np.asarray(index)
        return CaptionData(self.features[index], self.counts[index], [self.captions[i] for i in index],
                           [self.track_ids[i] for i in index])

    def batch(self, index: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [b, layers, frames_b, dim] float32, mask [b, frames_b])`` trimmed to the longest
        clip of the batch, padding frames set to 0."""
        counts = torch.as_tensor(self.counts[index], device=device)
        frames = int(counts.max())
        x = torch.as_tensor(np.ascontiguousarray(self.features[index, :, :frames]), device=device).float()
        mask = frame_mask(counts, frames)
        # padding may hold anything (the store fills it with NaN); 0 * NaN would leak through attention
        x = torch.where(mask[:, None, :, None].bool(), x, torch.zeros((), device=device))
        return x, mask


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (the study used AdamW at lr 1e-4)."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    patience: int = 5
    max_target_tokens: int = 64
    seed: int = 0


@dataclass
class TrainHistory:
    """Per-epoch mean losses and the epoch whose weights were kept (best validation loss)."""

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_valid_loss: float = math.inf


def tokenize_captions(tokenizer, captions: list[str], max_tokens: int, device: torch.device) -> torch.Tensor:
    """Label ids ``[b, tokens]`` (ending in EOS) with ``-100`` at padding, as T5's loss expects."""
    enc = tokenizer(list(captions), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return labels.to(device)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [np.sort(order[i:i + batch_size]) for i in range(0, n, batch_size)]


def evaluate_loss(model: AudioCaptioner, tokenizer, data: CaptionData, *, batch_size: int = 16,
                  max_target_tokens: int = 64, device: torch.device | None = None) -> float:
    """Mean teacher-forced cross-entropy per target token over ``data``."""
    device = device or next(model.parameters()).device
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for index in _batches(len(data), batch_size, None):
            x, mask = data.batch(index, device)
            labels = tokenize_captions(tokenizer, [data.captions[i] for i in index], max_target_tokens, device)
            n_tok = int((labels != -100).sum())
            total += float(model(x, mask, labels).loss) * n_tok
            tokens += n_tok
    return total / max(tokens, 1)


def _caption_hooks(model: AudioCaptioner, tokenizer, train: CaptionData, valid: CaptionData | None,
                   settings: TrainSettings, dev: torch.device) -> LoopHooks:
    """The captioner's parts of :func:`~embedstore.heads.training.fit`: seeded shuffled batches,
    teacher-forced cross-entropy weighted by target tokens, and selection by the lowest validation
    loss (the training loss when ``valid`` is empty)."""
    rng = np.random.default_rng(settings.seed)

    def batches(epoch: int) -> list[np.ndarray]:
        return _batches(len(train), settings.batch_size, rng)

    def loss(index: np.ndarray) -> tuple[torch.Tensor, float, list]:
        x, mask = train.batch(index, dev)
        labels = tokenize_captions(tokenizer, [train.captions[i] for i in index], settings.max_target_tokens, dev)
        return model(x, mask, labels).loss, int((labels != -100).sum()), []

    if valid is None or not len(valid):
        return LoopHooks(batches, loss, dict, lambda row: (-row["train_loss"],))

    def validate() -> dict[str, float]:
        return {"valid_loss": evaluate_loss(model, tokenizer, valid, batch_size=settings.batch_size,
                                            max_target_tokens=settings.max_target_tokens, device=dev)}

    return LoopHooks(batches, loss, validate, lambda row: (-row["valid_loss"],))


def train_captioner(model: AudioCaptioner, tokenizer, train: CaptionData, valid: CaptionData | None,
                    settings: TrainSettings = TrainSettings(), *, device: str | torch.device = "auto",
                    progress: bool = False) -> TrainHistory:
    """Fit ``model`` in place with teacher-forced cross-entropy and AdamW, in the one training loop
    (:func:`~embedstore.heads.training.fit`, no files).

    After each epoch the validation loss is measured (the training loss when ``valid`` is empty);
    the best weights are kept and restored at the end; training stops after ``settings.patience``
    epochs without improvement. Returns the per-epoch history (``best_epoch`` counts from 0).
    """
    dev = resolve_device(device)
    seed_everything(settings.seed)
    model.to(dev)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    hooks = _caption_hooks(model, tokenizer, train, valid, settings, dev)
    result = fit(model, optimizer, hooks, LoopSettings(epochs=settings.epochs, patience=settings.patience,
                                                       progress=progress), None)
    model.eval()
    return TrainHistory(train_loss=[row["train_loss"] for row in result.history],
                        valid_loss=[row["valid_loss"] for row in result.history if "valid_loss" in row],
                        best_epoch=result.best_epoch - 1,
                        best_valid_loss=-result.best_key[0] if result.best_key is not None else math.inf)


def generate_captions(model: AudioCaptioner, tokenizer, data: CaptionData, *,
                      settings: GenerationSettings = GenerationSettings(), batch_size: int = 16,
                      device: str | torch.device | None = None) -> list[str]:
    """Decode one caption per clip of ``data`` (beam search; see :class:`GenerationSettings`)."""
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model.to(dev).eval()
    out: list[str] = []
    for index in _batches(len(data), batch_size, None):
        x, mask = data.batch(index, dev)
        ids = model.generate(x, mask, settings)
        out.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
    return out

