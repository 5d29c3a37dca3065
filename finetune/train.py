"""End-to-end fine-tuning of an encoder on raw audio: the library entry point :func:`finetune`.

One run::

    discover_dataset -> train/valid/test tracks of the task (valid held out from train if absent)
    load_encoder (unfrozen; LayerDrop off; conv feature encoder frozen by default)
    + FinetuneModel head (weighted layer sum or one layer -> frame mean -> MLP)
    for each epoch: random crops of the train clips (DataLoader workers decode)
        -> AdamW (encoder lr, head lr), grad accumulation, clipping, autocast (+GradScaler for fp16)
        -> validation on FULL clips (windows, frame mean per clip) -> best.pt / last.pt / history.json
        -> early stop after ``patience`` epochs without validation gain
    reload best.pt -> metrics of valid/test (full splits) and train (a seeded subsample by default,
    ``train_eval``), all on full clips -> record (the probes' format, head "finetune")
    -> out/metrics.json (+ the store's results folder) -> training_curve.png
    optional: ``limit`` caps every split at N clips (seeded, stratified) for quick runs.
    optional: extract the dataset with the fine-tuned encoder into a store as ``<model>+ft-<task>``.

Reproducibility: the global torch/numpy/Python RNGs are seeded with ``seed`` at the start (and
restored from ``last.pt`` on resume); crop positions and batch order depend only on (seed, epoch),
so on CPU a resumed run reproduces an uninterrupted one exactly.

Checkpoint sizes: ``best.pt`` holds the weights only. ``last.pt`` also holds the AdamW state (two
moments per trained weight, about twice the weights) while training, so an interrupted run resumes
exactly; the last epoch writes it without that state unless ``keep_optimizer`` (then a ``--resume``
that extends a finished run restarts AdamW's moments, and says so). The report gives both sizes.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from embedstore.errors import EmbedstoreError, ModelError
from embedstore.extract.audio import DEFAULT_GAIN, LEGACY_GAIN, check_gain
from embedstore.extract.datasets import DatasetRequest
from embedstore.extract.encoders.registry import EncoderRequest
from embedstore.finetune.checkpoint import (
    BEST,
    LAST,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from embedstore.finetune.data import (
    ClipDataset,
    CropDataset,
    TaskSplits,
    label_task,
    limit_splits,
    make_loader,
    pad_batch,
    stratified_subset,
    task_splits,
    usable_items,
)
from embedstore.finetune.model import (
    WEIGHTED,
    FinetunedEncoder,
    FinetuneModel,
    disable_layerdrop,
    enable_gradient_checkpointing,
    set_spec_augment,
)
from embedstore.finetune.model import freeze_feature_encoder as freeze_conv_features
from embedstore.finetune.report import FinetuneReport, plot_training_curve
from embedstore.heads.protocol import VALID_FRACTION
from embedstore.store.specs import finetuned_key

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_ENCODER_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
HISTORY = "history.json"
METRICS = "metrics.json"
HEAD = "finetune"
N_BOOT = 1000
TRAIN_EVAL_MAX = 64  # "auto": as many training clips as the validation split, at most this many
# Options that must not change when resuming (they change the network, its classes or its data).
_RESUME_FIXED = ("model", "checkpoint", "weights", "task", "dataset", "layer", "head_hidden", "head_dropout",
                 "freeze_feature_encoder", "window_seconds", "gain", "limit")


@dataclass(frozen=True)
class FinetuneConfig:
    """The hyper-parameters of a run (saved in the checkpoints and the record).

    See :func:`finetune` for the meaning of each field; ``precision`` is the resolved one
    (``bf16``/``fp16``/``fp32``) and ``crop_seconds`` the crop actually used.
    """

    model: str
    checkpoint: str | None
    weights: str
    task: str
    dataset: str
    layer: int | str
    epochs: int
    lr_encoder: float
    lr_head: float
    weight_decay: float
    batch_size: int
    grad_accum: int
    crop_seconds: float
    freeze_feature_encoder: bool
    gradient_checkpointing: bool
    spec_augment: bool
    precision: str
    patience: int | None
    seed: int
    head_hidden: int
    head_dropout: float
    max_grad_norm: float | None
    window_seconds: float
    gain: str = DEFAULT_GAIN
    limit: int | None = None
    train_eval: str = "auto"


def _check_options(*, epochs: int, lr_encoder: float, lr_head: float, batch_size: int, grad_accum: int,
                   crop_seconds: float, precision: str, patience: int | None, weight_decay: float,
                   head_dropout: float, max_grad_norm: float | None, limit: int | None) -> None:
    """Raise :class:`EmbedstoreError` naming the first bad option."""
    checks = [
        (epochs >= 1, f"--epochs must be at least 1, got {epochs}"),
        (lr_encoder >= 0, f"--lr-encoder must be >= 0, got {lr_encoder}"),
        (lr_head >= 0, f"--lr-head must be >= 0, got {lr_head}"),
        (batch_size >= 2, f"--batch-size must be at least 2 (the head's BatchNorm needs 2 clips), got {batch_size}"),
        (grad_accum >= 1, f"--grad-accum must be at least 1, got {grad_accum}"),
        (crop_seconds > 0, f"--crop-seconds must be positive, got {crop_seconds}"),
        (precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"),
        (patience is None or patience >= 1, f"--patience must be at least 1, got {patience}"),
        (weight_decay >= 0, f"--weight-decay must be >= 0, got {weight_decay}"),
        (0 <= head_dropout < 1, f"--head-dropout must be in [0, 1), got {head_dropout}"),
        (max_grad_norm is None or max_grad_norm > 0, f"--max-grad-norm must be positive, got {max_grad_norm}"),
        (limit is None or limit >= 2, f"--limit must be at least 2 clips (a training batch needs 2), got {limit}"),
    ]
    for ok, message in checks:
        if not ok:
            raise EmbedstoreError(message)


def train_eval_size(train_eval: str | int, n_train: int, n_valid: int) -> int:
    """How many training clips the final evaluation reads under the rule ``train_eval``.

    ``"auto"``: as many as the validation split, at most :data:`TRAIN_EVAL_MAX` (the training split's
    metrics then cost no more than validation's); ``"full"``: all ``n_train``; a positive number N
    (int or digits): at most N. Never more than ``n_train``.

    Raises:
        EmbedstoreError: any other value (naming ``--train-eval``).
    """
    rule = str(train_eval).strip().lower()
    if rule == "auto":
        return min(n_train, n_valid, TRAIN_EVAL_MAX)
    if rule == "full":
        return n_train
    if rule.isdigit() and int(rule) > 0:
        return min(n_train, int(rule))
    raise EmbedstoreError(f"--train-eval must be auto, full or a positive number of clips, got {train_eval!r}")


def resolve_precision(precision: str, device: str) -> tuple[str, str | None]:
    """The precision a run uses on ``device`` and a note when it differs from the request.

    ``auto``: bf16 on a CUDA device that supports it, else fp16 on CUDA, fp32 on CPU. CPU always
    runs fp32 (the encoders autocast on CUDA only).
    """
    if not device.startswith("cuda"):
        note = None if precision in ("auto", "fp32") else f"--precision {precision}: CPU runs fp32"
        return "fp32", note
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), None
    return precision, None


# ---- one epoch, one evaluation ------------------------------------------------------------------


def _train_epoch(net: FinetuneModel, loader: torch.utils.data.DataLoader, opt: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, grad_accum: int, max_grad_norm: float | None,
                 desc: str, progress: bool) -> dict[str, Any]:
    """Train one epoch over ``loader``'s crops; returns ``train_loss`` (mean per clip),
    ``clips``, ``clips_per_s``, ``seconds`` and ``skipped`` (``[(track index, reason)]``)."""
    net.train()
    net.encoder.frozen = False
    params = [p for g in opt.param_groups for p in g["params"]]
    device = net.device
    total, seen, skipped = 0.0, 0, []
    pending = False  # gradients accumulated since the last update
    steps = len(loader)
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    bar = tqdm(total=len(loader.dataset), desc=desc, unit="clip", disable=not progress, dynamic_ncols=True)
    try:
        for step, items in enumerate(loader):
            good, bad = usable_items(items, net.encoder)
            skipped += bad
            if len(good) >= 2:  # the head's BatchNorm needs two clips
                waves, lengths, codes = pad_batch(good)
                loss = F.cross_entropy(net(waves, lengths), codes.to(device))
                scaler.scale(loss / grad_accum).backward()
                total += float(loss.detach()) * len(good)
                seen += len(good)
                pending = True
            if pending and ((step + 1) % grad_accum == 0 or step + 1 == steps):
                if max_grad_norm is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                pending = False
            bar.update(len(items))
            elapsed = max(time.perf_counter() - start, 1e-9)
            if seen:
                bar.set_postfix(loss=f"{total / seen:.4f}", clips_s=f"{seen / elapsed:.1f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    if not seen:
        raise EmbedstoreError("no training clip could be decoded in this epoch "
                              f"(first failure: {skipped[0][1] if skipped else 'none'})")
    return {"train_loss": total / seen, "clips": seen, "clips_per_s": seen / max(seconds, 1e-9),
            "seconds": seconds, "skipped": skipped}


@torch.inference_mode()
def predict_logits(net: FinetuneModel, data: ClipDataset, *, batch_size: int = 8, workers: int = 0,
                   desc: str = "eval", progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Logits of full clips (windows, frame mean per clip, head) in eval mode.

    Returns:
        ``logits [n, classes]`` float32 (NaN rows for clips that failed to decode or were too short), ``ok [n]`` bool,
        and the failures ``[(index, reason)]``.
    """
    net.eval()
    was_frozen = net.encoder.frozen
    net.encoder.frozen = True
    logits = np.full((len(data), net.n_classes), np.nan, dtype=np.float32)
    failed: list[tuple[int, str]] = []
    try:
        loader = make_loader(data, batch_size, workers)
        for items in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            good, bad = usable_items(items, net.encoder)
            failed += bad
            if good:
                feats = net.clip_features([it.wave for it in good], batch_size)
                logits[[it.index for it in good]] = net.head_logits(feats).float().cpu().numpy()
    finally:
        net.encoder.frozen = was_frozen
    return logits, ~np.isnan(logits).any(axis=1), failed


def _valid_scores(logits: np.ndarray, ok: np.ndarray, codes: np.ndarray) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` over the decoded clips."""
    if not ok.any():
        raise EmbedstoreError("no validation clip could be decoded")
    lg, y = torch.from_numpy(logits[ok]), torch.from_numpy(codes[ok])
    return float((lg.argmax(1) == y).float().mean()), float(F.cross_entropy(lg, y))


# ---- the run ------------------------------------------------------------------------------------


def _state(net: FinetuneModel, config: FinetuneConfig, labels: list[str], epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "model": net.state_dict(), "config": asdict(config), "labels": list(labels)}


def _check_resume(state: dict[str, Any], config: FinetuneConfig, labels: list[str], path: Path) -> None:
    saved = {"gain": LEGACY_GAIN, **state.get("config", {})}  # runs before --gain peak-normalised
    for key in _RESUME_FIXED:
        if saved.get(key) != getattr(config, key):
            raise EmbedstoreError(f"{path}: cannot resume, {key} was {saved.get(key)!r} and is now "
                                  f"{getattr(config, key)!r} (use a new --out folder)")
    if list(state.get("labels", [])) != list(labels):
        raise EmbedstoreError(f"{path}: cannot resume, the classes changed ({state.get('labels')} -> {labels})")


def _split_record_metrics(net: FinetuneModel, splits: TaskSplits, root: Path, *, train_clips: int, batch_size: int,
                          workers: int, progress: bool, seed: int, gain: str,
                          notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of every split (full clips) and the test predictions, in the probes' format.

    Valid and test are read whole; train only on ``train_clips`` clips (a seeded, stratified
    subsample when fewer than the split holds).
    """
    from embedstore.heads.protocol import split_metrics  # the probes' per-split aggregation

    metrics: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for split in ("train", "valid", "test"):
        tracks = splits.tracks[split]
        codes = splits.codes(split)
        if split == "train" and train_clips < len(tracks):
            pick = stratified_subset([t.label for t in tracks], train_clips, seed)[1]
            tracks, codes = [tracks[i] for i in pick], codes[pick]
        data = ClipDataset(root, tracks, codes, net.encoder.sample_rate, gain)
        logits, ok, failed = predict_logits(net, data, batch_size=batch_size, workers=workers,
                                            desc=f"eval {split}", progress=progress)
        if failed:
            notes.append(f"{split}: {len(failed)} clip(s) failed (not decoded, or too short) and are left out of the metrics "
                         f"(first: {tracks[failed[0][0]].path}: {failed[0][1]})")
        if not ok.any():
            continue
        pred = logits[ok].argmax(1)
        metrics[split] = split_metrics(codes[ok], pred[None], splits.labels, N_BOOT, seed)
        if split == "test":
            predictions = {"track_ids": [t.id for t, k in zip(tracks, ok) if k],
                           "y_true": codes[ok].tolist(), "y_pred": [pred.tolist()]}
    return metrics, predictions


def finetune(
    dataset: DatasetRequest | str | Path,
    model: EncoderRequest | str = "mert",
    *,
    task: str | None = None,
    epochs: int = 10,
    lr_encoder: float = 1e-5,
    lr_head: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 8,
    grad_accum: int = 1,
    crop_seconds: float = 5.0,
    freeze_feature_encoder: bool = True,
    layer: int | str = WEIGHTED,
    device: str = "auto",
    precision: str = "auto",
    out: str | Path | None = None,
    resume: bool = False,
    patience: int | None = 3,
    seed: int = 0,
    export_to_store: str | Path | None = None,
    gradient_checkpointing: bool = False,
    spec_augment: bool = True,
    head_hidden: int = 512,
    head_dropout: float = 0.25,
    max_grad_norm: float | None = 1.0,
    workers: int | None = None,
    progress: bool = True,
    gain: str = DEFAULT_GAIN,
    limit: int | None = None,
    train_eval: str | int = "auto",
    keep_optimizer: bool = False,
) -> FinetuneReport:
    """Fine-tune ``model`` end to end on the raw audio of a dataset's classification ``task``.

    Args:
        dataset: which dataset and how to split it (GTZAN, class folders, manifest): a
            :class:`~embedstore.extract.datasets.DatasetRequest`, or a folder (then
            ``DatasetRequest(folder, seed=seed)``).
        model: the encoder to start from: an :class:`~embedstore.extract.encoders.EncoderRequest`
            (name, checkpoint, ``pretrained``/``random`` weights, seed of a random init, window,
            trust_remote_code; its dtype follows ``precision``, and its ``key`` is not used: the
            fine-tuned entry is ``<model>+ft-<task>``), or a registry name (then
            ``EncoderRequest(name, seed=seed)``).
        task: a class-label task of the dataset (``genre`` for GTZAN, ``label`` for folders/manifests);
            None = the dataset's only class-label task (several: the error lists them).
        epochs: the most epochs to train (in total, counting epochs done before a resume).
        lr_encoder, lr_head: AdamW learning rates of the encoder and of the head (layer weights + MLP).
        weight_decay: AdamW weight decay (both groups).
        batch_size: clips per step (>= 2); grad_accum: steps accumulated per update (effective batch
            ``batch_size * grad_accum``).
        crop_seconds: length of the random training crop per clip per epoch (capped at the encoder's
            window).
        freeze_feature_encoder: keep the convolutional feature encoder frozen (recommended).
        layer: ``"weighted"`` (learned softmax-weighted sum of all layers) or a layer index/name.
        device: ``auto`` | ``cpu`` | ``cuda[:N]``. precision: ``auto`` | ``bf16`` | ``fp16`` | ``fp32``
            (autocast on CUDA; fp16 adds a GradScaler; CPU runs fp32).
        out: run folder for ``last.pt``, ``best.pt``, ``history.json``, ``metrics.json`` and
            ``training_curve.png`` (default ``finetune-<model>-<task>``).
        resume: continue from ``out/last.pt`` at its next epoch (the network options must match).
        patience: stop after this many epochs without a validation gain (None: never).
        seed: seeds the head's initialisation, crops, batch order, dropout and the inner validation split.
        export_to_store: a store path: extract every clip with the fine-tuned encoder into it as
            model entry ``<model>+ft-<task>``, and save the record in its results folder.
        gradient_checkpointing: recompute transformer activations in the backward pass (memory).
        spec_augment: keep the checkpoint's SpecAugment time/feature masking while training (off:
            no masking; short crops lose most of their frames to the minimum of 2 masks).
        head_hidden, head_dropout: the MLP head's hidden width and dropout.
        max_grad_norm: clip the gradient norm (None: no clipping).
        workers: decoding processes (None: as extraction, ``min(4, cpus - 1)``; 0: in-process).
        progress: tqdm bars.
        gain: the gain rule of decoding, as extraction's ``--gain`` (``"none"``: the decoded amplitude;
            ``"peak"``: peak-normalised); training, evaluation and the export all use it.
        limit: use at most this many clips of each split (seeded, stratified when the labels allow;
            a quick run; None: all). Recorded, and fixed across ``--resume``.
        train_eval: the training split's final evaluation: ``"auto"`` (a seeded, stratified
            subsample as large as the validation split, at most 64 clips), ``"full"``, or a number of
            clips. Validation and test are always evaluated whole, on full clips.
        keep_optimizer: keep the AdamW state in the final ``last.pt`` (about twice the weights' size),
            so that a later ``--resume`` with more epochs continues exactly; without it only an
            interrupted run resumes exactly.

    Returns:
        A :class:`~embedstore.finetune.report.FinetuneReport` (print it with
        :func:`~embedstore.finetune.report.format_finetune_report`).

    Raises:
        EmbedstoreError (DatasetError, ModelError, ...): bad options, dataset, task, layer or checkpoint.
    """
    data_request = DatasetRequest.coerce(dataset, seed=seed)
    encoder_request = EncoderRequest.coerce(model, seed=seed)
    if task == "caption":  # the captioning fine-tune (encoder + T5), see embedstore.finetune.caption
        from embedstore.finetune.caption import finetune_caption

        return finetune_caption(
            data_request, encoder_request, epochs=epochs, lr_encoder=lr_encoder,
            lr_head=lr_head, weight_decay=weight_decay, batch_size=batch_size, crop_seconds=crop_seconds,
            freeze_feature_encoder=freeze_feature_encoder, spec_augment=spec_augment, max_grad_norm=max_grad_norm,
            patience=patience, device=device, precision=precision, out=out, store=export_to_store, resume=resume,
            seed=seed, workers=workers, progress=progress, gain=gain)
    from embedstore.devices import resolve_device
    from embedstore.extract.pipeline import ExtractOptions, default_workers, extract_dataset
    from embedstore.store.records import ProbeRecord, dump_record, save_record

    _check_options(epochs=epochs, lr_encoder=lr_encoder, lr_head=lr_head, batch_size=batch_size,
                   grad_accum=grad_accum, crop_seconds=crop_seconds, precision=precision, patience=patience,
                   weight_decay=weight_decay, head_dropout=head_dropout, max_grad_norm=max_grad_norm, limit=limit)
    check_gain(gain)
    notes: list[str] = []
    model, checkpoint, weights = encoder_request.name, encoder_request.checkpoint, encoder_request.weights
    dataset = data_request.discover()
    task = label_task(dataset, task)
    splits = limit_splits(task_splits(dataset, task, seed), limit, seed)
    train_clips = train_eval_size(train_eval, len(splits.tracks["train"]), len(splits.tracks["valid"]))
    dev = str(resolve_device(device))
    prec, note = resolve_precision(precision, dev)
    notes += [note] if note else []
    workers = default_workers() if workers is None else int(workers)
    out_dir = Path(out if out is not None else f"finetune-{model}-{task}")
    out_dir.mkdir(parents=True, exist_ok=True)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    encoder = replace(encoder_request, dtype=_ENCODER_DTYPE[prec]).load(dev)
    if disable_layerdrop(encoder) > 0:
        notes.append("LayerDrop turned off (it would drop hidden states the head reads)")
    if freeze_feature_encoder and not freeze_conv_features(encoder):
        notes.append(f"{model}: no convolutional feature encoder to freeze; every weight is trained")
    set_spec_augment(encoder, spec_augment)
    if gradient_checkpointing and not enable_gradient_checkpointing(encoder):
        notes.append(f"{model}: gradient checkpointing is not supported; running without it")
    crop = float(crop_seconds)
    if crop > encoder.window_seconds:
        crop = encoder.window_seconds
        notes.append(f"--crop-seconds {crop_seconds:g} is longer than the encoder's {crop:g} s window; "
                     f"using {crop:g} s")
    net = FinetuneModel(encoder, len(splits.labels), layer, hidden=head_hidden, dropout=head_dropout).to(dev)
    config = FinetuneConfig(
        model=model, checkpoint=checkpoint, weights=weights, task=task, dataset=dataset.name, layer=net.layer,
        epochs=epochs, lr_encoder=lr_encoder, lr_head=lr_head, weight_decay=weight_decay, batch_size=batch_size,
        grad_accum=grad_accum, crop_seconds=crop, freeze_feature_encoder=freeze_feature_encoder,
        gradient_checkpointing=gradient_checkpointing, spec_augment=spec_augment, precision=prec,
        patience=patience, seed=seed, head_hidden=head_hidden, head_dropout=head_dropout,
        max_grad_norm=max_grad_norm, window_seconds=encoder.window_seconds, gain=gain, limit=limit,
        train_eval=str(train_eval).strip().lower(),
    )

    lrs = {"encoder": lr_encoder, "head": lr_head}
    groups = [{"params": [p for p in net.encoder.parameters() if p.requires_grad], "name": "encoder"},
              {"params": list(net.head.parameters()), "name": "head"}]
    groups = [dict(g, lr=lrs[g["name"]]) for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(torch.device(dev).type, enabled=prec == "fp16")

    last_path, best_path, history_path = out_dir / LAST, out_dir / BEST, out_dir / HISTORY
    history: list[dict[str, Any]] = []
    best_key: tuple[float, float] | None = None
    best_epoch, since_best, stopped, start_epoch, resumed_from = 0, 0, False, 1, None
    last_has_optimizer = False
    if resume and last_path.exists():
        state = load_checkpoint(last_path)  # on CPU: load_state_dict copies onto the device
        _check_resume(state, config, splits.labels, last_path)
        net.load_state_dict(state["model"])
        set_rng_state(state["rng"])
        history = list(state["history"])
        best_key = tuple(state["best_key"]) if state["best_key"] is not None else None
        best_epoch, since_best = int(state["best_epoch"]), int(state["since_best"])
        stopped = patience is not None and since_best >= patience  # a larger --patience continues
        start_epoch = resumed_from = int(state["epoch"])
        start_epoch += 1
        last_has_optimizer = "optimizer" in state
        if last_has_optimizer:
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        elif start_epoch <= epochs and not stopped:
            notes.append(f"--resume: {last_path} holds no optimizer state (the run had finished; --keep-optimizer "
                         "keeps it); AdamW's moments restart from zero, so this is not the uninterrupted run")
        for g in opt.param_groups:  # the learning rates asked for now
            g["lr"] = lrs[g["name"]]
    elif resume:
        notes.append(f"--resume: {last_path} does not exist; started from scratch")
    elif last_path.exists():
        notes.append(f"{out_dir}: held an earlier run; its checkpoints were replaced (use --resume to continue one)")

    crops = CropDataset(dataset.root, splits.tracks["train"], splits.codes("train"), encoder.sample_rate, crop, seed,
                        gain)
    valid_codes = splits.codes("valid")
    valid_data = ClipDataset(dataset.root, splits.tracks["valid"], valid_codes, encoder.sample_rate, gain)
    n_train = len(crops)
    drop_last = n_train > batch_size and n_train % batch_size == 1  # never a lone clip for BatchNorm
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs + 1):
        if stopped:
            break
        crops.set_epoch(epoch)
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        loader = make_loader(crops, batch_size, workers, shuffle=True, generator=order, drop_last=drop_last)
        stats = _train_epoch(net, loader, opt, scaler, grad_accum=grad_accum, max_grad_norm=max_grad_norm,
                             desc=f"epoch {epoch}/{epochs}", progress=progress)
        logits, ok, _ = predict_logits(net, valid_data, batch_size=batch_size, workers=workers)
        acc, vloss = _valid_scores(logits, ok, valid_codes)
        history.append({"epoch": epoch, "train_loss": stats["train_loss"], "valid_accuracy": acc,
                        "valid_loss": vloss, "clips_per_s": stats["clips_per_s"], "seconds": stats["seconds"],
                        "skipped": len(stats["skipped"])})
        if stats["skipped"]:
            i, reason = stats["skipped"][0]
            notes.append(f"epoch {epoch}: {len(stats['skipped'])} crop(s) failed (not decoded, or too short) "
                         f"(first: {splits.tracks['train'][i].path}: {reason})")
        if best_key is None or (acc, -vloss) > best_key:
            best_key, best_epoch, since_best = (acc, -vloss), epoch, 0
            save_checkpoint({**_state(net, config, splits.labels, epoch), "valid": {"accuracy": acc, "loss": vloss}},
                            best_path)
        else:
            since_best += 1
        stopped = patience is not None and since_best >= patience and epoch < epochs
        final = stopped or epoch == epochs  # the finished run's last.pt keeps the weights only
        last_has_optimizer = keep_optimizer or not final
        resumable = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict()} if last_has_optimizer else {}
        save_checkpoint({**_state(net, config, splits.labels, epoch), **resumable,
                         "rng": rng_state(), "best_key": best_key, "best_epoch": best_epoch,
                         "since_best": since_best, "stopped": stopped, "history": history}, last_path)
        write_json(history, history_path)
    epochs_run = history[-1]["epoch"] if history else 0

    best = load_checkpoint(best_path)
    net.load_state_dict(best["model"])
    metrics, predictions = _split_record_metrics(net, splits, dataset.root, train_clips=train_clips,
                                                 batch_size=batch_size, workers=workers, progress=progress, seed=seed,
                                                 gain=gain, notes=notes)
    train_eval_rule = {"rule": config.train_eval, "clips": train_clips, "of": n_train}
    key = finetuned_key(model, task, weights)
    hparams = {"lr_encoder": lr_encoder, "lr_head": lr_head, "weight_decay": weight_decay, "epochs": best_epoch,
               "batch_size": batch_size * grad_accum, "crop_seconds": crop, "precision": prec,
               "frozen_conv": int(freeze_feature_encoder), "dropout": head_dropout}
    run = {"config": asdict(config), "run_dir": str(out_dir.absolute()), "best_epoch": best_epoch,
           "epochs_run": epochs_run, "stopped_early": stopped, "history": history, "train_eval": train_eval_rule,
           "limit": limit, "checkpoint_bytes": {path.name: path.stat().st_size for path in (best_path, last_path)},
           "last_has_optimizer": last_has_optimizer}
    record = ProbeRecord(
        task=task, dataset=dataset.name, model=key, checkpoint=checkpoint or _default_checkpoint(model),
        layer=net.layer if net.layer == WEIGHTED else int(net.layer),
        layer_name=WEIGHTED if net.layer == WEIGHTED else encoder.layer_names[int(net.layer)], layers=net.layers,
        head=HEAD, hparams=hparams, selection_score=best_key[0] if best_key else None, seeds=[seed],
        protocol={"splits": "train/valid/test", "valid_source": splits.valid_source,
                  "valid_fraction": VALID_FRACTION if splits.valid_source == "inner" else None,
                  "train_input": f"one random {crop:g} s crop per clip per epoch",
                  "eval_input": f"full clips in {encoder.window_seconds:g} s windows, frame mean per clip",
                  "selection": "epoch with the best validation accuracy (then loss)",
                  "train_eval": _describe_train_eval(train_eval_rule),
                  "limit": f"at most {limit} clips per split (seeded, stratified)" if limit else "none",
                  "standardise": "none (end-to-end)", "confusion": "counts", "n_boot": N_BOOT},
        metrics=metrics, layer_weights=net.layer_weights(), finetune=run,
        runs=[{"seed": seed, "fold": "split", "hparams": hparams,
               "valid_accuracy": best_key[0] if best_key else None, "history": history}],
        predictions={"test": predictions},
    )
    sizes = run["checkpoint_bytes"]
    record_paths = [dump_record(record, out_dir / METRICS)]

    export = None
    if export_to_store is not None:
        net.eval()
        encoder.frozen = True
        provenance = {"run_dir": str(out_dir.absolute()), "task": task, "dataset": dataset.name,
                      "best_epoch": best_epoch, "base_checkpoint": checkpoint or _default_checkpoint(model),
                      "config": asdict(config)}
        export = extract_dataset(dataset, [(key, FinetunedEncoder(encoder, provenance))], export_to_store,
                                 ExtractOptions(batch_size=batch_size, workers=workers, progress=progress, gain=gain))
        record_paths.append(save_record(export_to_store, record))

    curve = plot_training_curve(history, out_dir, best_epoch) if history else None
    return FinetuneReport(out_dir=out_dir, model_key=key, record=record, record_paths=record_paths, history=history,
                          best_epoch=best_epoch, epochs_run=epochs_run, stopped_early=stopped,
                          resumed_from=resumed_from, best_path=best_path, last_path=last_path,
                          history_path=history_path, curve_path=curve, export=export, notes=notes,
                          checkpoint_bytes=sizes, last_has_optimizer=last_has_optimizer)


def _describe_train_eval(rule: dict[str, Any]) -> str:
    """The record's one-line account of the training split's evaluation."""
    if rule["clips"] >= rule["of"]:
        return f"all {rule['of']} train clips, full clips (--train-eval {rule['rule']})"
    return (f"{rule['clips']} of {rule['of']} train clips, a seeded stratified subsample, full clips "
            f"(--train-eval {rule['rule']})")


def _default_checkpoint(model: str) -> str | None:
    from embedstore.extract.encoders.registry import get_spec

    return get_spec(model).default_checkpoint


@dataclass
class LoadedFinetune:
    """A fine-tuned network read back from ``best.pt``/``last.pt``.

    Attributes:
        model: the :class:`FinetuneModel` in eval mode (encoder frozen for inference).
        labels: class values in code order. config: the run's :class:`FinetuneConfig` as a dict.
        epoch: the epoch the weights come from.
    """

    model: FinetuneModel
    labels: list[str]
    config: dict[str, Any]
    epoch: int


def load_finetuned(path: str | Path, device: str = "cpu") -> LoadedFinetune:
    """Rebuild the network of a fine-tuning checkpoint (``best.pt`` or ``last.pt``) and load its weights.

    The encoder's architecture comes from the run's checkpoint (its config only, when available
    offline); the weights all come from the file.

    Raises:
        ModelError: unreadable checkpoint or unavailable base model.
    """
    state = load_checkpoint(path)
    cfg = state["config"]
    request = EncoderRequest(cfg["model"], cfg["checkpoint"], weights=cfg["weights"], seed=cfg["seed"],
                             dtype=_ENCODER_DTYPE.get(cfg["precision"], "auto"), window_seconds=cfg["window_seconds"])
    try:  # the architecture alone: no need to read the base weights
        encoder = replace(request, weights="random").load(device)
    except ModelError:
        encoder = request.load(device)
    disable_layerdrop(encoder)
    net = FinetuneModel(encoder, len(state["labels"]), cfg["layer"], hidden=cfg["head_hidden"],
                        dropout=cfg["head_dropout"])
    net.load_state_dict(state["model"])
    return LoadedFinetune(net.to(device).eval(), list(state["labels"]), cfg, int(state["epoch"]))
