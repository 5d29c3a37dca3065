"""End-to-end captioning fine-tune (``finetune --task caption``): unfrozen encoder + T5 captioner.

One run::

    discover_dataset -> captioned train/valid/test tracks (valid held out of train when absent)
    load_encoder (unfrozen; LayerDrop off; conv feature encoder frozen by default)
    for each epoch: a random crop per train clip -> hidden states of every layer [B, F, D]
        -> mean over fixed blocks of ``block_seconds`` (coarse frames)  -> [B, layers, steps, D]
        -> AudioCaptioner (layer mix -> projection -> T5 inputs_embeds) -> teacher-forced cross-entropy
        -> AdamW with two groups (encoder lr, captioner + T5 lr)
        -> validation loss on the fixed centre crop of each valid clip; best epoch kept (in memory)
    best weights -> beam-search captions of the test centre crops -> caption_metrics
    -> a CaptionRecord (head ``t5-finetune``, model ``<model>+ft-<task>``) -> out/metrics.json
       (+ the store's results folder)

Only the centre ``crop_seconds`` of a valid/test clip is heard (crops are capped at the encoder's window).
"""

from __future__ import annotations

import math
import time
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
    make_loader,
    pad_batch,
)
from embedstore.heads.caption_metrics import DEFAULT_BERT
from embedstore.heads.captioner import AudioCaptioner, GenerationSettings, LayerMixMode
from embedstore.store.records import CaptionRecord, dump_record, save_record
from torch import nn

CAPTION_TASK = "caption"
HEAD = "t5-finetune"
METRICS = "metrics.json"
HISTORY = "history.json"
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
    if dataset.tasks.get(task) != CAPTION_TASK:
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


def _check_options(*, epochs: int, lr_encoder: float, lr_head: float, batch_size: int, crop_seconds: float,
                   block_seconds: float, patience: int | None, weight_decay: float,
                   max_grad_norm: float | None, resume: bool) -> None:
    """Raise :class:`EmbedstoreError` naming the first bad option."""
    checks = [
        (epochs >= 1, f"--epochs must be at least 1, got {epochs}"),
        (lr_encoder >= 0, f"--lr-encoder must be >= 0, got {lr_encoder}"),
        (lr_head >= 0, f"--lr-head must be >= 0, got {lr_head}"),
        (batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}"),
        (crop_seconds > 0, f"--crop-seconds must be positive, got {crop_seconds}"),
        (block_seconds > 0, f"--block-seconds must be positive, got {block_seconds}"),
        (patience is None or patience >= 1, f"--patience must be at least 1, got {patience}"),
        (weight_decay >= 0, f"--weight-decay must be >= 0, got {weight_decay}"),
        (max_grad_norm is None or max_grad_norm > 0, f"--max-grad-norm must be positive, got {max_grad_norm}"),
        (not resume, "--resume is not supported with --task caption (start a new run)"),
    ]
    for ok, message in checks:
        if not ok:
            raise EmbedstoreError(message)


def finetune_caption(
    dataset: DatasetRequest | str | Path,
    model: EncoderRequest | str = "mert",
    *,
    task: str = CAPTION_TASK,
    t5: str | Path = "t5-small",
    bert: str | Path = DEFAULT_BERT,
    sentence_model: str | Path | None = None,
    layer_mix: LayerMixMode = "softmax",
    epochs: int = 10,
    lr_encoder: float = 1e-5,
    lr_head: float = 1e-4,
    weight_decay: float = 0.01,
    batch_size: int = 8,
    crop_seconds: float = 10.0,
    block_seconds: float = 0.5,
    freeze_feature_encoder: bool = True,
    spec_augment: bool = True,
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
            :class:`~embedstore.extract.datasets.DatasetRequest`, or a folder (then
            ``DatasetRequest(folder, seed=seed)``).
        model: the encoder to start from: an :class:`~embedstore.extract.encoders.EncoderRequest`
            (its dtype is float32 here, its ``key`` unused), or a registry name (then
            ``EncoderRequest(name, seed=seed)``).
        task: the caption task of the dataset (``caption``).
        t5, bert, sentence_model: T5 checkpoint (trained), BERT and sentence model (metrics only).
        layer_mix: ``softmax`` or ``conv1x1`` mix of all encoder layers.
        epochs, patience: most epochs; stop after ``patience`` epochs without a lower validation loss.
        lr_encoder, lr_head: AdamW learning rates of the encoder and of the captioner (mix,
            projection and T5); weight_decay: both groups.
        batch_size: clips per step. crop_seconds: random crop per train clip and epoch, and the
            centre crop heard of valid/test clips (capped at the encoder's window).
        block_seconds: frames averaged into one T5 input step.
        freeze_feature_encoder, spec_augment, max_grad_norm: as in :func:`~embedstore.finetune.train.finetune`.
        max_target_tokens: caption tokens kept for teacher forcing.
        device: ``auto`` | ``cpu`` | ``cuda[:N]``. precision: only fp32 is run (a note says so otherwise).
        out: run folder (default ``finetune-<model>-caption``). store: a store whose results folder
            also receives the record. resume: not supported (an error).
        seed: seeds initialisation, crops, batch order and the held-out validation split.
        generation: beam-search settings for the test captions (None: the defaults).
        workers: decoding processes (None: as extraction).
        gain: the gain rule of decoding, as extraction's ``--gain`` (``"none"`` or ``"peak"``).

    Returns:
        A :class:`CaptionFinetuneReport` (print it with :func:`format_caption_finetune_report`).

    Raises:
        EmbedstoreError (DatasetError, ModelError): bad options, dataset, task, or checkpoints.
    """
    from embedstore.devices import resolve_device
    from embedstore.extract.pipeline import default_workers
    from embedstore.finetune.checkpoint import write_json
    from embedstore.finetune.model import disable_layerdrop, set_spec_augment
    from embedstore.finetune.model import freeze_feature_encoder as freeze_conv_features
    from embedstore.heads.caption_metrics import caption_metrics
    from embedstore.heads.caption_train import seed_everything, tokenize_captions
    from embedstore.heads.captioner import load_t5
    from embedstore.store.specs import finetuned_key

    _check_options(epochs=epochs, lr_encoder=lr_encoder, lr_head=lr_head, batch_size=batch_size,
                   crop_seconds=crop_seconds, block_seconds=block_seconds, patience=patience,
                   weight_decay=weight_decay, max_grad_norm=max_grad_norm, resume=resume)
    check_gain(gain)
    generation = generation or GenerationSettings()
    notes: list[str] = []
    encoder_request = replace(EncoderRequest.coerce(model, seed=seed), dtype="float32")
    model, checkpoint, weights = encoder_request.name, encoder_request.checkpoint, encoder_request.weights
    dataset = DatasetRequest.coerce(dataset, seed=seed).discover()
    tracks, split_protocol = caption_split_tracks(dataset, task, seed)
    dev = resolve_device(device)
    if precision not in ("auto", "fp32"):
        notes.append(f"--precision {precision}: captioning fine-tune runs fp32")
    workers = default_workers() if workers is None else int(workers)
    out_dir = Path(out if out is not None else f"finetune-{model}-{CAPTION_TASK}")
    out_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(seed)
    encoder = encoder_request.load(dev)
    if disable_layerdrop(encoder) > 0:
        notes.append("LayerDrop turned off (it would drop hidden states the captioner reads)")
    if freeze_feature_encoder and not freeze_conv_features(encoder):
        notes.append(f"{model}: no convolutional feature encoder to freeze; every weight is trained")
    set_spec_augment(encoder, spec_augment)
    crop = min(float(crop_seconds), float(encoder.window_seconds))
    if crop < crop_seconds:
        notes.append(f"--crop-seconds {crop_seconds:g} is longer than the encoder's {crop:g} s window; using {crop:g} s")
    t5_model, tokenizer = load_t5(t5)
    net = CaptionFinetuneModel(encoder, t5_model, block_seconds, layer_mix).to(dev)
    groups = [{"params": [p for p in net.encoder.parameters() if p.requires_grad], "lr": lr_encoder},
              {"params": list(net.captioner.parameters()), "lr": lr_head}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)
    params = [p for g in opt.param_groups for p in g["params"]]

    sr = encoder.sample_rate
    crop_samples = round(crop * sr)
    captions = {s: [t.caption for t in ts] for s, ts in tracks.items()}

    def batch_loss(items: list[Item], split: str) -> tuple[torch.Tensor, int]:
        waves, lengths, index = pad_batch(items)
        labels = tokenize_captions(tokenizer, [captions[split][i] for i in index.tolist()], max_target_tokens, dev)
        return net(waves, lengths, labels), int((labels != -100).sum())

    def eval_batches(split: str):
        data = ClipDataset(dataset.root, tracks[split], list(range(len(tracks[split]))), sr, gain)
        for items in make_loader(data, batch_size, workers):
            good = [it for it in items if it.wave is not None]
            for it in items:
                note = f"{split}: {tracks[split][it.index].path} failed to decode ({it.error}); left out"
                if it.wave is None and note not in notes:
                    notes.append(note)
            if good:
                yield _centre(good, crop_samples)

    def valid_loss() -> float:
        net.eval()
        net.encoder.frozen = True
        total, tokens = 0.0, 0
        with torch.no_grad():
            for items in eval_batches("valid"):
                loss, n_tok = batch_loss(items, "valid")
                total, tokens = total + float(loss) * n_tok, tokens + n_tok
        if not tokens:
            raise EmbedstoreError("no validation clip could be decoded")
        return total / tokens

    crops = CropDataset(dataset.root, tracks["train"], list(range(len(tracks["train"]))), sr, crop, seed, gain)
    history: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
    for epoch in range(1, epochs + 1):
        net.train()
        net.encoder.frozen = False
        crops.set_epoch(epoch)
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        start, total, tokens, skipped = time.perf_counter(), 0.0, 0, 0
        loader = make_loader(crops, batch_size, workers, shuffle=True, generator=order)
        for items in loader:
            good = [it for it in items if it.wave is not None]
            skipped += len(items) - len(good)
            if not good:
                continue
            loss, n_tok = batch_loss(good, "train")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            total, tokens = total + float(loss.detach()) * n_tok, tokens + n_tok
        if not tokens:
            raise EmbedstoreError(f"epoch {epoch}: no training clip could be decoded")
        vloss = valid_loss()
        history.append({"epoch": epoch, "train_loss": total / tokens, "valid_loss": vloss,
                        "seconds": time.perf_counter() - start, "skipped": skipped})
        if progress:
            print(f"epoch {epoch}/{epochs}: train loss {total / tokens:.4f}, valid loss {vloss:.4f}", flush=True)
        if vloss < best_loss:
            best_loss, best_epoch, stale = vloss, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        else:
            stale += 1
            if patience is not None and stale >= patience:
                break
        write_json(history, out_dir / HISTORY)
    net.load_state_dict(best_state)

    net.eval()
    net.encoder.frozen = True
    generated, refs, ids = [], [], []
    for items in eval_batches("test"):
        waves, lengths, index = pad_batch(items)
        x, mask = net.features(waves, lengths)
        tokens_out = net.captioner.generate(x, mask, generation)
        generated += [t.strip() for t in tokenizer.batch_decode(tokens_out, skip_special_tokens=True)]
        refs += [captions["test"][i] for i in index.tolist()]
        ids += [str(tracks["test"][i].id) for i in index.tolist()]
    if not generated:
        raise EmbedstoreError("no test clip could be decoded")
    metrics = caption_metrics(generated, refs, bert=str(bert), sentence_model=sentence_model, device=str(dev))
    predictions = [{"track_id": t, "generated": g, "reference": r} for t, g, r in zip(ids, generated, refs)]
    n_layers = encoder.num_layers
    record = CaptionRecord(
        task=CAPTION_TASK, dataset=dataset.name, model=finetuned_key(model, task, weights),
        checkpoint=checkpoint or get_spec(model).default_checkpoint, layer="weighted" if n_layers > 1 else 0,
        layer_name="weighted" if n_layers > 1 else encoder.layer_names[0], layers=list(range(n_layers)),
        head=HEAD, preset="default" if layer_mix == "softmax" else layer_mix, t5=str(t5), bert=str(bert),
        inputs=f"audio crops ({crop:g} s, {net.block} frames per step)", layer_mix=layer_mix,
        layer_weights=net.captioner.mix.weights().detach().cpu().tolist() if n_layers > 1 else None,
        hparams={"epochs": epochs, "batch_size": batch_size, "lr_encoder": lr_encoder, "lr_head": lr_head,
                 "weight_decay": weight_decay, "patience": patience, "crop_seconds": crop,
                 "block_seconds": block_seconds, "freeze_feature_encoder": freeze_feature_encoder,
                 "spec_augment": spec_augment, "weights": weights, "best_epoch": best_epoch, "gain": gain,
                 **asdict(generation)},
        seeds=[seed],
        protocol={**split_protocol, "selection": "best epoch by validation loss (centre crops)",
                  "n": {s: len(ts) for s, ts in tracks.items()}},
        history={"train_loss": [h["train_loss"] for h in history], "valid_loss": [h["valid_loss"] for h in history]},
        metrics={"test": {**metrics, "n": len(generated)}}, examples=predictions[:N_EXAMPLES], notes=notes,
    )
    write_json(history, out_dir / HISTORY)
    dump_record(record, out_dir / METRICS)
    path = save_record(store, record) if store is not None else None
    return CaptionFinetuneReport(record, history, predictions, out_dir, path, notes, net)


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
