"""End-to-end captioning fine-tune (``finetune --task caption``): unfrozen encoder + T5 captioner.

One run::

    discover_dataset -> captioned train/valid/test tracks (valid held out of train when absent)
    prepare_encoder (finetune.setup: unfrozen; LayerDrop off; conv feature encoder frozen by default)
    for each epoch: a random crop per train clip -> hidden states of every layer [B, F, D]
        -> mean over fixed blocks of ``block_seconds`` (coarse frames)  -> [B, layers, steps, D]
        -> AudioCaptioner (layer mix -> projection -> T5 inputs_embeds) -> teacher-forced cross-entropy
        -> AdamW with two groups (encoder lr, captioner + T5 lr)
        -> validation loss on the fixed centre crop of each valid clip
        (the loop of heads.training.fit: best.pt = the lowest validation loss, last.pt, history.json)
    best.pt's weights -> beam-search captions of the test centre crops -> caption_metrics
    -> a CaptionRecord (head ``t5-finetune``, model ``<model>+ft-<task>``) -> out/metrics.json
       (+ the store's results folder)

Only the centre ``crop_seconds`` of a valid/test clip is heard (crops are capped at the encoder's window).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedstore.errors import DatasetError, EmbedstoreError, ModelError
from embedstore.extract.audio import DEFAULT_GAIN, check_gain
from embedstore.extract.datasets import DatasetRequest
from embedstore.extract.encoders.registry import EncoderRequest
from embedstore.finetune.data import (
    ClipDataset,
    CropDataset,
    Item,
    epoch_loader,
    make_loader,
    pad_batch,
)
from embedstore.finetune.setup import check_options, prepare_encoder, run_folder, train
from embedstore.heads.caption_metrics import DEFAULT_BERT, caption_metrics
from embedstore.heads.captioner import AudioCaptioner, GenerationSettings, LayerMixMode
from embedstore.heads.tasks import CAPTION, task_for
from embedstore.heads.training import FitResult, LoopHooks, LoopSettings, seed_everything
from embedstore.store.records import CaptionRecord, dump_record, save_record
from torch import nn

HEAD = "t5-finetune"
METRICS = "metrics.json"
N_EXAMPLES = 5


@dataclass
class CaptionFinetuneReport:
    """What :func:`finetune_caption` did.

    Attributes:
        record: the :class:`~embedstore.store.records.CaptionRecord` (head ``t5-finetune``, model
            ``<model>+ft-<task>``).
        history: one dict per epoch (``epoch, train_loss, valid_loss, seconds, skipped``).
        predictions: every test clip ``{"track_id", "generated", "reference"}``.
        out: the run folder (``metrics.json``, ``history.json``); path: the record in the store's
            results folder, or None.
        notes: what the run changed or skipped.
        network: the trained encoder + captioner (best epoch's weights, eval mode).
    """

    record: CaptionRecord
    history: list[dict[str, Any]]
    predictions: list[dict[str, str]]
    out: Path
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    network: CaptionFinetuneModel | None = field(default=None, repr=False)


def block_pool(hidden: torch.Tensor, lengths: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the valid frames of each block of ``block`` consecutive frames.

    Args:
        hidden: ``[B, F, D]``; lengths: ``[B]`` valid frames per item; block: frames per step (>= 1).

    Returns:
        ``pooled [B, ceil(F / block), D]`` (0 for blocks with no valid frame) and ``steps [B]``
        = ``ceil(lengths / block)`` valid steps per item.
    """
    b, frames, dim = hidden.shape
    steps = max(1, math.ceil(frames / block))
    valid = (torch.arange(frames, device=hidden.device)[None] < lengths.to(hidden.device)[:, None]).to(hidden.dtype)
    padded = torch.zeros(b, steps * block, dim, dtype=hidden.dtype, device=hidden.device)
    padded[:, :frames] = hidden * valid[..., None]
    weight = torch.zeros(b, steps * block, dtype=hidden.dtype, device=hidden.device)
    weight[:, :frames] = valid
    sums = padded.reshape(b, steps, block, dim).sum(2)
    counts = weight.reshape(b, steps, block).sum(2)
    return sums / counts.clamp_min(1.0)[..., None], (lengths.to(hidden.device) + block - 1) // block


class CaptionFinetuneModel(nn.Module):
    """Encoder (gradients on) + block pooling of every layer + :class:`AudioCaptioner`.

    Args:
        encoder: an :class:`~embedstore.extract.encoders.base.Encoder` whose layers share one width
            and one frame rate. t5_model: a ``T5ForConditionalGeneration``.
        block_seconds: length of a coarse step (frames averaged per T5 input position).
        layer_mix: ``softmax`` or ``conv1x1`` (see :class:`~embedstore.heads.captioner.LayerMix`).
    """

    def __init__(self, encoder: nn.Module, t5_model: nn.Module, block_seconds: float = 0.5,
                 layer_mix: LayerMixMode = "softmax") -> None:
        super().__init__()
        if len(set(encoder.layer_widths)) > 1 or len(set(encoder.layer_frame_rates)) > 1:
            raise ModelError(f"--model {encoder.name}: captioning fine-tune needs layers of one width and frame "
                             "rate (got widths "
                             f"{sorted(set(encoder.layer_widths))}, rates {sorted(set(encoder.layer_frame_rates))})")
        self.encoder = encoder
        self.block = max(1, round(block_seconds * encoder.frame_rate))
        self.captioner = AudioCaptioner(t5_model, input_dim=encoder.layer_widths[0], num_layers=encoder.num_layers,
                                        layer_mix=layer_mix)

    def features(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Captioner inputs of a zero-padded batch ``waveforms [B, samples]``, ``lengths [B]``:
        ``x [B, layers, steps, D]`` and attention ``mask [B, steps]`` (long)."""
        out = self.encoder(waveforms, lengths)
        pooled, steps = zip(*(block_pool(h, out.lengths(i), self.block) for i, h in enumerate(out.hidden_states)))
        x = torch.stack(pooled, dim=1).float()
        n = steps[0].clamp_min(1)
        mask = (torch.arange(x.shape[2], device=x.device)[None] < n[:, None]).long()
        return x, mask

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean teacher-forced cross-entropy per target token (``labels [B, tokens]``, -100 = padding)."""
        x, mask = self.features(waveforms, lengths)
        return self.captioner(x, mask, labels).loss


def caption_split_tracks(dataset: Any, task: str, seed: int) -> tuple[dict[str, list], dict[str, Any]]:
    """Captioned tracks per split ``{"train"|"valid"|"test": [Track]}`` and how the split was made
    (the ``protocol`` of :func:`~embedstore.heads.caption_probe.split_indices`).

    Without a ``valid`` split the probes' carve-out of train is held out
    (:func:`~embedstore.heads.protocol.carve_valid`); k-fold splits use fold 0 as test.

    Raises:
        DatasetError: ``task`` is not a caption task of the dataset, or no train/test clips.
    """
    from embedstore.heads.caption_probe import split_indices

    have = ", ".join(dataset.tasks) or "none"
    if dataset.tasks.get(task) != CAPTION:
        raise DatasetError(f"--task {task!r}: dataset {dataset.name!r} has no such caption column (tasks: {have})")
    tracks = [t for t in dataset.tracks if t.caption]
    splits = np.asarray([str(t.split) for t in tracks], dtype=object)
    if "train" not in set(splits) and not any(s.startswith("fold") for s in splits):
        raise DatasetError(f"dataset {dataset.name!r}: captioning needs 'train' and 'test' clips "
                           f"(splits: {sorted(set(splits)) or 'none'})")
    train, valid, test, protocol = split_indices(splits, seed)
    out = {name: [tracks[i] for i in idx] for name, idx in (("train", train), ("valid", valid), ("test", test))}
    if not out["train"] or not out["test"]:
        raise DatasetError(f"dataset {dataset.name!r}: captioning needs captioned 'train' and 'test' clips")
    if not out["valid"]:
        raise DatasetError(f"dataset {dataset.name!r}: too few captioned train clips to hold out a validation set")
    return out, protocol


def _centre(items: list[Item], samples: int) -> list[Item]:
    """The centre ``samples`` of each decoded item (shorter items are kept whole)."""
    out = []
    for it in items:
        start = max(0, (len(it.wave) - samples) // 2)
        out.append(Item(it.index, it.wave[start:start + samples], it.code))
    return out


def _check_options(*, batch_size: int, block_seconds: float, grad_accum: int, resume: bool, **shared: Any) -> None:
    """Raise :class:`EmbedstoreError` naming the first bad option (``shared``: see
    :func:`~embedstore.finetune.setup.check_options`)."""
    check_options([
        (batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}"),
        (block_seconds > 0, f"--block-seconds must be positive, got {block_seconds}"),
        (grad_accum >= 1, f"--grad-accum must be at least 1, got {grad_accum}"),
        (not resume, "--resume is not supported with --task caption (start a new run)"),
    ], **shared)


@dataclass
class _CaptionRun:
    """What the training hooks, the test decoding and the record of a captioning run share
    (``dataset``: its name; ``protocol``: how the splits were made, see :func:`caption_split_tracks`)."""

    root: Path
    tracks: dict[str, list]
    net: CaptionFinetuneModel
    tokenizer: Any
    device: Any
    batch_size: int
    workers: int
    crop_samples: int
    gain: str
    max_target_tokens: int
    notes: list[str]
    out_dir: Path
    request: EncoderRequest
    dataset: str
    protocol: dict[str, Any]

    @property
    def crop_seconds(self) -> float:
        """The crop heard per clip, in seconds (capped at the encoder's window)."""
        return self.crop_samples / self.net.encoder.sample_rate

    def train_crops(self, seed: int) -> CropDataset:
        """One random crop of ``crop_seconds`` per train clip and epoch (positions fixed by ``seed``)."""
        train = self.tracks["train"]
        return CropDataset(self.root, train, list(range(len(train))), self.net.encoder.sample_rate,
                           self.crop_seconds, seed, self.gain)

    def caption(self, split: str, index: torch.Tensor) -> list[str]:
        return [self.tracks[split][i].caption for i in index.tolist()]

    def batch_loss(self, items: list[Item], split: str) -> tuple[torch.Tensor, int]:
        """Mean teacher-forced loss per token of decoded ``items`` and their number of target tokens."""
        from embedstore.heads.caption_train import tokenize_captions

        waves, lengths, index = pad_batch(items)
        labels = tokenize_captions(self.tokenizer, self.caption(split, index), self.max_target_tokens, self.device)
        return self.net(waves, lengths, labels), int((labels != -100).sum())

    def eval_batches(self, split: str) -> Iterator[list[Item]]:
        """The centre crops of ``split``'s decoded clips, in batches (failures become notes)."""
        tracks = self.tracks[split]
        data = ClipDataset(self.root, tracks, list(range(len(tracks))), self.net.encoder.sample_rate, self.gain)
        for items in make_loader(data, self.batch_size, self.workers):
            for it in items:
                note = f"{split}: {tracks[it.index].path} failed to decode ({it.error}); left out"
                if it.wave is None and note not in self.notes:
                    self.notes.append(note)
            good = [it for it in items if it.wave is not None]
            if good:
                yield _centre(good, self.crop_samples)

    @torch.no_grad()
    def valid_loss(self) -> dict[str, float]:
        """``{"valid_loss": mean loss per target token}`` over the validation centre crops."""
        self.net.eval()
        self.net.encoder.frozen = True
        total, tokens = 0.0, 0
        for items in self.eval_batches("valid"):
            loss, n_tok = self.batch_loss(items, "valid")
            total, tokens = total + float(loss) * n_tok, tokens + n_tok
        if not tokens:
            raise EmbedstoreError("no validation clip could be decoded")
        return {"valid_loss": total / tokens}

    def hooks(self, crops: CropDataset, seed: int) -> LoopHooks:
        """The captioning parts of the training loop (selection: the lowest validation loss)."""
        def batches(epoch: int) -> torch.utils.data.DataLoader:
            self.net.encoder.frozen = False
            return epoch_loader(crops, epoch, seed, self.batch_size, self.workers)

        def loss(items: list[Item]) -> tuple[torch.Tensor | None, float, list]:
            bad = [(it.index, it.error) for it in items if it.wave is None]
            good = [it for it in items if it.wave is not None]
            if not good:
                return None, 0, bad
            value, n_tok = self.batch_loss(good, "train")
            return value, n_tok, bad

        return LoopHooks(batches, loss, self.valid_loss, lambda v: (-v["valid_loss"],))

    def generate_test(self, generation: GenerationSettings) -> list[dict[str, str]]:
        """Beam-search captions of the test centre crops: ``[{"track_id", "generated", "reference"}]``."""
        self.net.eval()
        self.net.encoder.frozen = True
        out = []
        with torch.no_grad():
            for items in self.eval_batches("test"):
                waves, lengths, index = pad_batch(items)
                x, mask = self.net.features(waves, lengths)
                texts = self.tokenizer.batch_decode(self.net.captioner.generate(x, mask, generation),
                                                    skip_special_tokens=True)
                out += [{"track_id": str(self.tracks["test"][i].id), "generated": t.strip(), "reference": r}
                        for i, t, r in zip(index.tolist(), texts, self.caption("test", index))]
        if not out:
            raise EmbedstoreError("no test clip could be decoded")
        return out


def finetune_caption(
    dataset: DatasetRequest | str | Path,
    model: EncoderRequest | str = "mert",
    *,
    task: str = CAPTION,
    t5: str | Path = "t5-small",
    bert: str | Path = DEFAULT_BERT,
    sentence_model: str | Path | None = None,
    layer_mix: LayerMixMode = "softmax",
    epochs: int = 10,
    lr_encoder: float = 1e-5,
    lr_head: float = 1e-4,
    weight_decay: float = 0.01,
    batch_size: int = 8,
    grad_accum: int = 1,
    crop_seconds: float = 10.0,
    block_seconds: float = 0.5,
    freeze_feature_encoder: bool = True,
    spec_augment: bool = True,
    gradient_checkpointing: bool = False,
    max_grad_norm: float | None = 1.0,
    max_target_tokens: int = 64,
    patience: int | None = 3,
    device: str = "auto",
    precision: str = "auto",
    out: str | Path | None = None,
    store: str | Path | None = None,
    resume: bool = False,
    seed: int = 0,
    generation: GenerationSettings | None = None,
    workers: int | None = None,
    progress: bool = True,
    gain: str = DEFAULT_GAIN,
) -> CaptionFinetuneReport:
    """Fine-tune ``model`` end to end with a T5 captioner on a dataset's captions (e.g. MusicCaps).

    Args:
        dataset: the dataset with captions (MusicCaps CSV, or a manifest with a caption column): a
            :class:`~embedstore.extract.datasets.DatasetRequest`, or a folder (``DatasetRequest(folder, seed=seed)``).
        model: the encoder to start from: an :class:`~embedstore.extract.encoders.EncoderRequest` (run in
            float32, its ``key`` unused), or a registry name (``EncoderRequest(name, seed=seed)``).
        task: the caption task of the dataset (``caption``). t5, bert, sentence_model: T5 checkpoint
            (trained), BERT and sentence model (metrics only). layer_mix: ``softmax`` or ``conv1x1``.
        epochs, lr_encoder, weight_decay, batch_size, grad_accum, freeze_feature_encoder, spec_augment,
            gradient_checkpointing, max_grad_norm, device, workers, progress, gain: as the fields of
            :class:`~embedstore.finetune.train.FinetuneConfig`; lr_head: the captioner's (mix,
            projection and T5); patience: epochs without a lower validation loss before stopping.
        crop_seconds: the random crop per train clip and epoch, and the centre crop heard of valid/test
            clips (capped at the encoder's window). block_seconds: frames averaged into one T5 step.
        max_target_tokens: caption tokens kept for teacher forcing. precision: only fp32 is run (a
            note says so otherwise). resume: not supported (an error).
        out: run folder (default ``finetune-<model>-caption``); store: a store whose results folder
            also receives the record. seed: initialisation, crops, batch order, the validation carve-out.
        generation: beam-search settings for the test captions (None: the defaults).

    Returns:
        A :class:`CaptionFinetuneReport` (print it with :func:`format_caption_finetune_report`).

    Raises:
        EmbedstoreError (DatasetError, ModelError): bad options, dataset, task, or checkpoints.
    """
    _check_options(epochs=epochs, lr_encoder=lr_encoder, lr_head=lr_head, batch_size=batch_size,
                   crop_seconds=crop_seconds, block_seconds=block_seconds, patience=patience, grad_accum=grad_accum,
                   weight_decay=weight_decay, max_grad_norm=max_grad_norm, resume=resume)
    check_gain(gain)
    run = _prepare(dataset, model, task, t5, device=device, workers=workers, batch_size=batch_size,
                   crop_seconds=crop_seconds, block_seconds=block_seconds, layer_mix=layer_mix,
                   freeze_feature_encoder=freeze_feature_encoder, spec_augment=spec_augment,
                   gradient_checkpointing=gradient_checkpointing, max_target_tokens=max_target_tokens, gain=gain,
                   seed=seed, precision=precision, out=out)
    fitted = train(run.net, run.net.captioner, run.hooks(run.train_crops(seed), seed), LoopSettings(
        epochs=epochs, patience=patience, grad_accum=grad_accum, max_grad_norm=max_grad_norm, progress=progress),
        run.out_dir, lr_encoder=lr_encoder, lr_head=lr_head, weight_decay=weight_decay)
    options = {"epochs": epochs, "batch_size": batch_size, "lr_encoder": lr_encoder, "lr_head": lr_head,
               "weight_decay": weight_decay, "patience": patience, "crop_seconds": run.crop_seconds,
               "grad_accum": grad_accum, "block_seconds": block_seconds,
               "freeze_feature_encoder": freeze_feature_encoder, "spec_augment": spec_augment,
               "weights": run.request.weights}
    return _evaluate(run, fitted, task, options, generation or GenerationSettings(), store, t5=t5, bert=bert,
                     sentence_model=sentence_model, layer_mix=layer_mix, seed=seed)


def _evaluate(run: _CaptionRun, fitted: FitResult, task: str, options: dict[str, Any],
              generation: GenerationSettings, store: str | Path | None, *, t5: str | Path, bert: str | Path,
              sentence_model: str | Path | None, layer_mix: LayerMixMode, seed: int) -> CaptionFinetuneReport:
    """Caption the test centre crops with the trained network, score them, and write the record
    (``metrics.json`` in the run folder, and the results folder of ``store`` when given).

    ``options``: the run's training options, recorded as the hparams with the best epoch, the gain
    rule and the ``generation`` settings.
    """
    out_dir, notes = run.out_dir, run.notes
    notes += fitted.notes
    hparams = {**options, "best_epoch": fitted.best_epoch, "gain": run.gain, **asdict(generation)}
    predictions = run.generate_test(generation)
    metrics = caption_metrics([p["generated"] for p in predictions], [p["reference"] for p in predictions],
                              bert=str(bert), sentence_model=sentence_model, device=str(run.device))
    protocol = {**run.protocol, "selection": f"best epoch by {task_for(CAPTION).selection} (centre crops)",
                "n": {s: len(ts) for s, ts in run.tracks.items()}}
    record = _record(run.net, run.request, run.dataset, task, hparams, fitted.history, protocol=protocol,
                     metrics={"test": {**metrics, "n": len(predictions)}}, predictions=predictions, notes=notes,
                     t5=t5, bert=bert, layer_mix=layer_mix, crop=run.crop_seconds, seed=seed)
    dump_record(record, out_dir / METRICS)
    path = save_record(store, record) if store is not None else None
    return CaptionFinetuneReport(record, fitted.history, predictions, out_dir, path, notes, run.net)


def _prepare(dataset: DatasetRequest | str | Path, model: EncoderRequest | str, task: str, t5: str | Path, *,
             device: str, workers: int | None, batch_size: int, crop_seconds: float, block_seconds: float,
             layer_mix: LayerMixMode, freeze_feature_encoder: bool, spec_augment: bool, gradient_checkpointing: bool,
             max_target_tokens: int, gain: str, seed: int, precision: str, out: str | Path | None) -> _CaptionRun:
    """Discover and split the dataset (:func:`caption_split_tracks`), make the run folder, seed, load
    the encoder for training (:func:`~embedstore.finetune.setup.prepare_encoder`, float32) and T5,
    and build the network on the device."""
    from embedstore.devices import resolve_device
    from embedstore.extract.pipeline import default_workers
    from embedstore.heads.captioner import load_t5

    request = replace(EncoderRequest.coerce(model, seed=seed), dtype="float32")
    found = DatasetRequest.coerce(dataset, seed=seed).discover()
    tracks, protocol = caption_split_tracks(found, task, seed)
    notes = [f"--precision {precision}: captioning fine-tune runs fp32"] if precision not in ("auto", "fp32") else []
    out_dir = run_folder(out, request.name, CAPTION)
    dev = resolve_device(device)
    seed_everything(seed)
    ready = prepare_encoder(request, dev, crop_seconds=crop_seconds, freeze_feature_encoder=freeze_feature_encoder,
                            spec_augment=spec_augment, gradient_checkpointing=gradient_checkpointing,
                            reader="captioner")
    notes += ready.notes
    t5_model, tokenizer = load_t5(t5)
    net = CaptionFinetuneModel(ready.encoder, t5_model, block_seconds, layer_mix).to(dev)
    return _CaptionRun(found.root, tracks, net, tokenizer, dev, batch_size,
                       default_workers() if workers is None else int(workers),
                       round(ready.crop * ready.encoder.sample_rate), gain, max_target_tokens, notes, out_dir,
                       request, found.name, protocol)


def _record(net: CaptionFinetuneModel, request: EncoderRequest, dataset: str, task: str, hparams: dict[str, Any],
            history: list[dict[str, Any]], *, protocol: dict[str, Any], metrics: dict[str, Any],
            predictions: list[dict[str, str]], notes: list[str], t5: str | Path, bert: str | Path,
            layer_mix: LayerMixMode, crop: float, seed: int) -> CaptionRecord:
    """The run's :class:`~embedstore.store.records.CaptionRecord` (head ``t5-finetune``)."""
    from embedstore.extract.encoders.registry import get_spec
    from embedstore.store.specs import finetuned_key

    encoder, n_layers = net.encoder, net.encoder.num_layers
    return CaptionRecord(
        task=CAPTION, dataset=dataset, model=finetuned_key(request.name, task, request.weights),
        checkpoint=request.checkpoint or get_spec(request.name).default_checkpoint,
        layer="weighted" if n_layers > 1 else 0,
        layer_name="weighted" if n_layers > 1 else encoder.layer_names[0], layers=list(range(n_layers)),
        head=HEAD, preset="default" if layer_mix == "softmax" else layer_mix, t5=str(t5), bert=str(bert),
        inputs=f"audio crops ({crop:g} s, {net.block} frames per step)", layer_mix=layer_mix,
        layer_weights=net.captioner.mix.weights().detach().cpu().tolist() if n_layers > 1 else None,
        hparams=hparams, seeds=[seed], protocol=protocol,
        history={"train_loss": [h["train_loss"] for h in history], "valid_loss": [h["valid_loss"] for h in history]},
        metrics=metrics, examples=predictions[:N_EXAMPLES], notes=notes,
    )


def format_caption_finetune_report(report: CaptionFinetuneReport) -> str:
    """The caption probes' summary of the record, then the per-epoch losses, notes and files."""
    from embedstore.heads.caption_probe import format_caption_report

    lines = [format_caption_report(report.record).replace("head t5 ", f"head {HEAD} ", 1)]
    lines += [f"  epoch {h['epoch']}: train loss {h['train_loss']:.4f}  valid loss {h['valid_loss']:.4f}"
              for h in report.history]
    lines += [f"  note: {n}" for n in report.notes]
    lines.append(f"  run folder: {report.out}")
    if report.path is not None:
        lines.append(f"  saved: {report.path}")
    return "\n".join(lines)
