"""End-to-end fine-tuning of an encoder on raw audio: the library entry point :func:`finetune`
(dispatching through the task registry) and the classification run :func:`finetune_classification`.

One classification run::

    discover_dataset -> train/valid/test tracks of the task (valid held out from train if absent)
    prepare_encoder (finetune.setup: unfrozen; LayerDrop off; conv feature encoder frozen by default)
    + FinetuneModel head (weighted layer sum or one layer -> frame mean -> MLP)
    heads.training.fit: for each epoch random crops of the train clips (DataLoader workers decode)
        -> AdamW (encoder lr, head lr), grad accumulation, clipping, autocast (+GradScaler for fp16)
        -> validation on FULL clips (windows, frame mean per clip) -> best.pt / last.pt / history.json
           (best: the greatest validation accuracy, then the lowest validation loss)
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

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedstore.errors import EmbedstoreError, ModelError
from embedstore.extract.audio import DEFAULT_GAIN, LEGACY_GAIN, check_gain
from embedstore.extract.datasets import DatasetRequest
from embedstore.extract.encoders.registry import EncoderRequest
from embedstore.finetune.data import (
    ClipDataset,
    CropDataset,
    TaskSplits,
    epoch_loader,
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
)
from embedstore.finetune.report import FinetuneReport, plot_training_curve
from embedstore.finetune.setup import check_options, prepare_encoder, run_folder, train
from embedstore.heads.checkpoint import load_checkpoint
from embedstore.heads.protocol import VALID_FRACTION
from embedstore.heads.tasks import task_for
from embedstore.heads.training import (
    FitResult,
    LoopHooks,
    LoopSettings,
    seed_everything,
)
from embedstore.store.records import ProbeRecord, dump_record, save_record
from embedstore.store.specs import finetuned_key
from torch.nn import functional as F
from tqdm.auto import tqdm

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
    """The hyper-parameters of a run (saved in the checkpoints and the record); each field is the
    option of :func:`finetune_classification` of that name.

    Attributes:
        model, checkpoint, weights: the encoder's registry name, checkpoint and ``pretrained``/``random``
            weights. task: the class-label task; dataset: the dataset's name.
        layer: ``"weighted"`` (learned softmax-weighted sum of all layers) or a layer index/name.
        epochs: the most epochs to train (in total, counting epochs done before a resume).
        lr_encoder, lr_head: AdamW learning rates of the encoder and of the head (layer weights + MLP);
            weight_decay: AdamW weight decay (both groups).
        batch_size: clips per step (>= 2); grad_accum: steps accumulated per update (effective batch
            ``batch_size * grad_accum``).
        crop_seconds: the random training crop per clip per epoch (the one used: capped at the
            encoder's window).
        freeze_feature_encoder: keep the convolutional feature encoder frozen (recommended).
        gradient_checkpointing: recompute transformer activations in the backward pass (memory).
        spec_augment: keep the checkpoint's SpecAugment time/feature masking while training (off:
            no masking; short crops lose most of their frames to the minimum of 2 masks).
        precision: asked ``auto`` | ``bf16`` | ``fp16`` | ``fp32`` (autocast on CUDA; fp16 adds a
            GradScaler; CPU runs fp32); in a saved config the resolved one.
        patience: stop after this many epochs without a validation gain (None: never).
        seed: seeds the head's initialisation, crops, batch order, dropout and the inner validation split.
        head_hidden, head_dropout: the MLP head's hidden width and dropout.
        max_grad_norm: clip the gradient norm (None: no clipping).
        window_seconds: the encoder's window (full clips are evaluated in such windows).
        gain: the gain rule of decoding, as extraction's ``--gain`` (``"none"``: the decoded amplitude;
            ``"peak"``: peak-normalised); training, evaluation and the export all use it.
        limit: use at most this many clips of each split (seeded, stratified when the labels allow;
            a quick run; None: all). Recorded, and fixed across ``--resume``.
        train_eval: the training split's final evaluation: ``"auto"`` (a seeded, stratified
            subsample as large as the validation split, at most 64 clips), ``"full"``, or a number of
            clips. Validation and test are always evaluated whole, on full clips.
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


def _check_options(*, batch_size: int, grad_accum: int, precision: str, head_dropout: float, limit: int | None,
                   **shared: Any) -> None:
    """Raise :class:`EmbedstoreError` naming the first bad option (``shared``: see
    :func:`~embedstore.finetune.setup.check_options`)."""
    check_options([
        (batch_size >= 2, f"--batch-size must be at least 2 (the head's BatchNorm needs 2 clips), got {batch_size}"),
        (grad_accum >= 1, f"--grad-accum must be at least 1, got {grad_accum}"),
        (precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"),
        (0 <= head_dropout < 1, f"--head-dropout must be in [0, 1), got {head_dropout}"),
        (limit is None or limit >= 2, f"--limit must be at least 2 clips (a training batch needs 2), got {limit}"),
    ], **shared)


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


# ---- evaluation ---------------------------------------------------------------------------------


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
    from embedstore.heads.protocol import (
        split_metrics,  # the probes' per-split aggregation
    )

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


def finetune(dataset: DatasetRequest | str | Path, model: EncoderRequest | str = "mert", *, task: str | None = None,
             **options: Any) -> Any:
    """Fine-tune ``model`` end to end on ``task`` of ``dataset``: the library entry point.

    Dispatches through the task registry (:func:`embedstore.heads.tasks.task_for`): a class-label
    task (or None) runs :func:`finetune_classification`, ``task="caption"`` runs
    :func:`~embedstore.finetune.caption.finetune_caption`. ``options`` are theirs (named as the CLI's
    options); an option that only another task takes, given a value, is an error naming it.

    Returns:
        A :class:`~embedstore.finetune.report.FinetuneReport` (classification) or a
        :class:`~embedstore.finetune.caption.CaptionFinetuneReport` (captioning).
    """
    from embedstore.finetune.tasks import (
        dispatch_finetune,  # importing it registers the fine-tune paths
    )

    seed = options.get("seed", 0)
    return dispatch_finetune(DatasetRequest.coerce(dataset, seed=seed), EncoderRequest.coerce(model, seed=seed), task,
                             options)


def finetune_classification(
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
            :class:`~embedstore.extract.datasets.DatasetRequest`, or a folder (``DatasetRequest(folder, seed=seed)``).
        model: the encoder to start from: an :class:`~embedstore.extract.encoders.EncoderRequest` (dtype follows
            ``precision``; ``key`` unused: the entry is ``<model>+ft-<task>``), or a registry name (``seed`` seeds it).
        task: a class-label task of the dataset (``genre`` for GTZAN, ``label`` for folders/manifests);
            None = the dataset's only one (several: the error lists them).
        epochs, lr_encoder, lr_head, weight_decay, batch_size, grad_accum, crop_seconds, freeze_feature_encoder,
            layer, precision, patience, seed, gradient_checkpointing, spec_augment, head_hidden, head_dropout,
            max_grad_norm, gain, limit, train_eval: the run's :class:`FinetuneConfig` (see its fields).
        device: ``auto`` | ``cpu`` | ``cuda[:N]``. progress: tqdm bars. workers: decoding processes
            (None: as extraction, ``min(4, cpus - 1)``; 0: in-process).
        out: run folder of ``last.pt``, ``best.pt``, ``history.json``, ``metrics.json``, ``training_curve.png``
            (default ``finetune-<model>-<task>``). resume: continue from ``out/last.pt`` at its next epoch.
        export_to_store: a store path: extract every clip with the fine-tuned encoder into it as
            model entry ``<model>+ft-<task>``, and save the record in its results folder.
        keep_optimizer: keep the AdamW state in the final ``last.pt`` (about twice the weights' size), so that
            a later ``--resume`` with more epochs continues exactly (else only an interrupted run does).

    Returns:
        A :class:`~embedstore.finetune.report.FinetuneReport` (print it with ``format_finetune_report``).

    Raises:
        EmbedstoreError (DatasetError, ModelError, ...): bad options, dataset, task, layer or checkpoint.
    """
    _check_options(epochs=epochs, lr_encoder=lr_encoder, lr_head=lr_head, batch_size=batch_size,
                   grad_accum=grad_accum, crop_seconds=crop_seconds, precision=precision, patience=patience,
                   weight_decay=weight_decay, head_dropout=head_dropout, max_grad_norm=max_grad_norm, limit=limit)
    check_gain(gain)
    encoder_request = EncoderRequest.coerce(model, seed=seed)
    wanted = FinetuneConfig(
        model=encoder_request.name, checkpoint=encoder_request.checkpoint, weights=encoder_request.weights,
        task=task or "", dataset="", layer=layer, epochs=epochs, lr_encoder=lr_encoder, lr_head=lr_head,
        weight_decay=weight_decay, batch_size=batch_size, grad_accum=grad_accum, crop_seconds=crop_seconds,
        freeze_feature_encoder=freeze_feature_encoder, gradient_checkpointing=gradient_checkpointing,
        spec_augment=spec_augment, precision=precision, patience=patience, seed=seed, head_hidden=head_hidden,
        head_dropout=head_dropout, max_grad_norm=max_grad_norm, window_seconds=0.0, gain=gain, limit=limit,
        train_eval=str(train_eval).strip().lower())
    run = _prepare(DatasetRequest.coerce(dataset, seed=seed), encoder_request, wanted, device=device,
                   workers=workers, out=out)
    settings = LoopSettings(epochs=epochs, patience=patience, grad_accum=grad_accum, max_grad_norm=max_grad_norm,
                            fp16=run.config.precision == "fp16", keep_optimizer=keep_optimizer, progress=progress)
    fitted = train(run.net, run.net.head, _hooks(run), settings, run.out_dir, lr_encoder=lr_encoder, lr_head=lr_head,
                   weight_decay=weight_decay, resume=resume)
    return _finish(run, fitted, export_to_store, progress=progress)


def _finish(run: _Prepared, fitted: FitResult, export_to_store: str | Path | None, *,
            progress: bool) -> FinetuneReport:
    """Evaluate the trained network on every split (full clips), write the record (``metrics.json``
    in the run folder, and the store's results folder when exporting), export the fine-tuned
    encoder to ``export_to_store`` when given, draw the training curve, and report."""
    cfg, net = run.config, run.net
    notes = run.notes + fitted.notes
    for epoch, failed in fitted.skipped:
        notes.append(f"epoch {epoch}: {len(failed)} crop(s) failed (not decoded, or too short) "
                     f"(first: {run.splits.tracks['train'][failed[0][0]].path}: {failed[0][1]})")
    metrics, predictions = _split_record_metrics(net, run.splits, run.dataset.root, train_clips=run.train_clips,
                                                 batch_size=cfg.batch_size, workers=run.workers, progress=progress,
                                                 seed=cfg.seed, gain=cfg.gain, notes=notes)
    record = _record(run, fitted, metrics, predictions)
    key = record["model"]
    record_paths = [dump_record(record, run.out_dir / METRICS)]
    export = None
    if export_to_store is not None:
        export = _export(run, key, fitted.best_epoch, export_to_store, progress=progress)
        record_paths.append(save_record(export_to_store, record))
    curve = plot_training_curve(fitted.history, run.out_dir, fitted.best_epoch) if fitted.history else None
    return FinetuneReport(out_dir=run.out_dir, model_key=key, record=record, record_paths=record_paths,
                          history=fitted.history, best_epoch=fitted.best_epoch, epochs_run=fitted.epochs_run,
                          stopped_early=fitted.stopped, resumed_from=fitted.resumed_from, best_path=fitted.best_path,
                          last_path=fitted.last_path, history_path=fitted.history_path, curve_path=curve,
                          export=export, notes=notes, checkpoint_bytes=record["finetune"]["checkpoint_bytes"],
                          last_has_optimizer=fitted.last_has_optimizer)


@dataclass
class _Prepared:
    """A classification run ready to train: the dataset and its splits, the resolved config, the
    network on its device, the run folder, decoding workers, train clips evaluated at the end, notes."""

    dataset: Any
    splits: TaskSplits
    config: FinetuneConfig
    net: FinetuneModel
    out_dir: Path
    workers: int
    train_clips: int
    notes: list[str]


def _prepare(data_request: DatasetRequest, encoder_request: EncoderRequest, wanted: FinetuneConfig, *, device: str,
             workers: int | None, out: str | Path | None) -> _Prepared:
    """Discover and split the dataset, load the encoder for training and build the network."""
    from embedstore.devices import resolve_device
    from embedstore.extract.pipeline import default_workers

    dataset = data_request.discover()
    task = label_task(dataset, wanted.task or None)
    splits = limit_splits(task_splits(dataset, task, wanted.seed), wanted.limit, wanted.seed)
    train_clips = train_eval_size(wanted.train_eval, len(splits.tracks["train"]), len(splits.tracks["valid"]))
    dev = str(resolve_device(device))
    prec, note = resolve_precision(wanted.precision, dev)
    out_dir = run_folder(out, wanted.model, task)
    seed_everything(wanted.seed)
    ready = prepare_encoder(replace(encoder_request, dtype=_ENCODER_DTYPE[prec]), dev,
                            crop_seconds=wanted.crop_seconds, freeze_feature_encoder=wanted.freeze_feature_encoder,
                            spec_augment=wanted.spec_augment, gradient_checkpointing=wanted.gradient_checkpointing)
    net = FinetuneModel(ready.encoder, len(splits.labels), wanted.layer, hidden=wanted.head_hidden,
                        dropout=wanted.head_dropout).to(dev)
    config = replace(wanted, task=task, dataset=dataset.name, layer=net.layer, crop_seconds=ready.crop,
                     precision=prec, window_seconds=ready.encoder.window_seconds)
    return _Prepared(dataset, splits, config, net, out_dir, default_workers() if workers is None else int(workers),
                     train_clips, ([note] if note else []) + ready.notes)


def _hooks(run: _Prepared) -> LoopHooks:
    """The classification parts of the training loop: crops of the train clips, cross-entropy,
    validation accuracy and loss on full clips, selection by (accuracy, -loss)."""
    net, splits, cfg = run.net, run.splits, run.config
    sr = net.encoder.sample_rate
    crops = CropDataset(run.dataset.root, splits.tracks["train"], splits.codes("train"), sr, cfg.crop_seconds,
                        cfg.seed, cfg.gain)
    valid_codes = splits.codes("valid")
    valid = ClipDataset(run.dataset.root, splits.tracks["valid"], valid_codes, sr, cfg.gain)
    drop_last = len(crops) > cfg.batch_size and len(crops) % cfg.batch_size == 1  # never a lone clip for BatchNorm

    def batches(epoch: int) -> torch.utils.data.DataLoader:
        net.encoder.frozen = False
        return epoch_loader(crops, epoch, cfg.seed, cfg.batch_size, run.workers, drop_last=drop_last)

    def loss(items: list) -> tuple[torch.Tensor | None, float, list]:
        good, bad = usable_items(items, net.encoder)
        if len(good) < 2:  # the head's BatchNorm needs two clips
            return None, 0, bad
        waves, lengths, codes = pad_batch(good)
        return F.cross_entropy(net(waves, lengths), codes.to(net.device)), len(good), bad

    def validate() -> dict[str, float]:
        logits, ok, _ = predict_logits(net, valid, batch_size=cfg.batch_size, workers=run.workers)
        acc, vloss = _valid_scores(logits, ok, valid_codes)
        return {"valid_accuracy": acc, "valid_loss": vloss}

    return LoopHooks(batches, loss, validate, lambda v: (v["valid_accuracy"], -v["valid_loss"]),
                     {"config": asdict(cfg), "labels": list(splits.labels)},
                     lambda state, path: _check_resume(state, cfg, splits.labels, path))


def _record(run: _Prepared, fitted: FitResult, metrics: dict[str, Any], predictions: dict[str, Any]) -> ProbeRecord:
    """The run's :class:`~embedstore.store.records.ProbeRecord` (head ``finetune``)."""
    cfg, net, splits = run.config, run.net, run.splits
    n_train = len(splits.tracks["train"])
    rule = {"rule": cfg.train_eval, "clips": run.train_clips, "of": n_train}
    hparams = {"lr_encoder": cfg.lr_encoder, "lr_head": cfg.lr_head, "weight_decay": cfg.weight_decay,
               "epochs": fitted.best_epoch, "batch_size": cfg.batch_size * cfg.grad_accum,
               "crop_seconds": cfg.crop_seconds, "precision": cfg.precision,
               "frozen_conv": int(cfg.freeze_feature_encoder), "dropout": cfg.head_dropout}
    finetune_run = {"config": asdict(cfg), "run_dir": str(run.out_dir.absolute()), "best_epoch": fitted.best_epoch,
                    "epochs_run": fitted.epochs_run, "stopped_early": fitted.stopped, "history": fitted.history,
                    "train_eval": rule, "limit": cfg.limit,
                    "checkpoint_bytes": {p.name: p.stat().st_size for p in (fitted.best_path, fitted.last_path)},
                    "last_has_optimizer": fitted.last_has_optimizer}
    best_acc = fitted.best_key[0] if fitted.best_key else None
    weighted = net.layer == WEIGHTED
    return ProbeRecord(
        task=cfg.task, dataset=cfg.dataset, model=finetuned_key(cfg.model, cfg.task, cfg.weights),
        checkpoint=cfg.checkpoint or _default_checkpoint(cfg.model), layer=net.layer if weighted else int(net.layer),
        layer_name=WEIGHTED if weighted else net.encoder.layer_names[int(net.layer)], layers=net.layers,
        head=HEAD, hparams=hparams, selection_score=best_acc, seeds=[cfg.seed],
        protocol={"splits": "train/valid/test", "valid_source": splits.valid_source,
                  "valid_fraction": VALID_FRACTION if splits.valid_source == "inner" else None,
                  "train_input": f"one random {cfg.crop_seconds:g} s crop per clip per epoch",
                  "eval_input": f"full clips in {cfg.window_seconds:g} s windows, frame mean per clip",
                  "selection": f"epoch with the {task_for(cfg.task).selection}",
                  "train_eval": _describe_train_eval(rule),
                  "limit": f"at most {cfg.limit} clips per split (seeded, stratified)" if cfg.limit else "none",
                  "standardise": "none (end-to-end)", "confusion": "counts", "n_boot": N_BOOT},
        metrics=metrics, layer_weights=net.layer_weights(), finetune=finetune_run,
        runs=[{"seed": cfg.seed, "fold": "split", "hparams": hparams, "valid_accuracy": best_acc,
               "history": fitted.history}],
        predictions={"test": predictions},
    )


def _export(run: _Prepared, key: str, best_epoch: int, store: str | Path, *, progress: bool) -> Any:
    """Extract every clip with the fine-tuned encoder into ``store`` as model entry ``key``."""
    from embedstore.extract.pipeline import ExtractOptions, extract_dataset

    cfg, encoder = run.config, run.net.encoder
    run.net.eval()
    encoder.frozen = True
    provenance = {"run_dir": str(run.out_dir.absolute()), "task": cfg.task, "dataset": cfg.dataset,
                  "best_epoch": best_epoch, "base_checkpoint": cfg.checkpoint or _default_checkpoint(cfg.model),
                  "config": asdict(cfg)}
    return extract_dataset(run.dataset, [(key, FinetunedEncoder(encoder, provenance))], store,
                           ExtractOptions(batch_size=cfg.batch_size, workers=run.workers, progress=progress,
                                          gain=cfg.gain))


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
        ModelError: unreadable checkpoint or unavailable base model, or a ``hear:`` model (its module
            would be imported because a file names it; embedstore imports only modules named on the
            command line).
    """
    state = load_checkpoint(path)
    cfg = state["config"]
    if str(cfg["model"]).startswith("hear:"):
        raise ModelError(f"{path}: names the HEAR module {cfg['model'][5:]!r}; embedstore imports a module only "
                         f"when you name it with --model, never from a file")
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
