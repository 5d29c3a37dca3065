"""Captioning on frozen stored embeddings: the library entry point :func:`run_caption_probe`
and its text summary :func:`format_caption_report`.

Input per clip: the stored frame sequences of the chosen layers ``[layers, frames, dim]`` (or,
when the model entry has no frames, e.g. CLAP's single pooled vector, the pooled embeddings as
one-frame sequences ``[layers, 1, dim]``). Captions come from the dataset's track table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from embedstore.errors import DatasetError, ModelError, StoreError
from embedstore.heads.caption_metrics import DEFAULT_BERT, caption_metrics
from embedstore.heads.caption_train import (
    CaptionData,
    TrainHistory,
    TrainSettings,
    generate_captions,
    train_captioner,
)
from embedstore.heads.captioner import AudioCaptioner, GenerationSettings, LayerMixMode, load_t5
from embedstore.heads.tasks import CAPTION as CAPTION_TASK
from embedstore.heads.training import seed_everything
from embedstore.store.records import CaptionRecord, save_record
from embedstore.store.specs import resolve_dataset, resolve_layers, resolve_models

N_EXAMPLES = 5
InputKind = Literal["auto", "frames", "pooled"]


@dataclass
class CaptionReport:
    """What :func:`run_caption_probe` did.

    Attributes:
        record: the :class:`~embedstore.store.records.CaptionRecord` (task ``caption``, dataset,
            model, layer, head ``t5``, ``metrics["test"]`` = bert_similarity, sentence_similarity,
            bleu, distinct_ratio, ``examples`` = a few generated vs reference captions, plus
            training details).
        path: the record file (in the store's results folder) or None when it was not saved.
        history: per-epoch train/valid losses and the kept epoch.
        predictions: every test clip ``{"track_id", "generated", "reference"}``.
    """

    record: CaptionRecord
    path: Path | None
    history: TrainHistory
    predictions: list[dict[str, str]] = field(default_factory=list)


def load_caption_data(store_path: str | Path, *, model: str, dataset: str | None = None,
                      layers: int | str | Sequence[int | str] = "all",
                      inputs: InputKind = "auto") -> tuple[CaptionData, np.ndarray, dict[str, Any]]:
    """Read the captioner's inputs from the store.

    Returns ``(data, splits, info)``: ``data.features`` ``[n, layers, frames, dim]`` with per-clip
    ``counts`` (``frames`` = 1 for pooled inputs), captions from the track table (clips without a
    caption are dropped), ``splits`` ``[n]``, and ``info`` = dataset, layer indices/names, input kind,
    checkpoint.
    """
    from embedstore.store import load_embeddings, load_frames, open_store

    if inputs not in ("auto", "frames", "pooled"):
        raise ModelError(f"--inputs {inputs!r}: choose auto, frames or pooled")
    with open_store(store_path, mode="r") as st:
        ds = resolve_dataset(st, dataset, task=CAPTION_TASK)
        resolve_models(st, ds, model)
        attrs = st.model_attrs(ds, model)
        names = [str(n) for n in attrs["layer_names"]]
        idx = resolve_layers(layers, names, model=model, option="--layers", words=("all",)).indices
        if len(set(idx)) != len(idx):
            raise ModelError(f"--layers {layers!r}: give each layer once")
        widths = [int(w) for w in attrs.get("layer_widths", [])]
        if len(idx) > 1 and widths and len({widths[i] for i in idx}) > 1:
            raise ModelError(f"--layers: layers {idx} of {model!r} differ in width "
                             f"{sorted({widths[i] for i in idx})}; pick layers of one width")
        frame_layers = {int(i) for i in attrs.get("frame_layers") or []}
        with_frames = set(idx) <= frame_layers
        if inputs == "frames" and not with_frames:
            raise StoreError(f"--inputs frames: model {model!r} of dataset {ds!r} stores frames only for layers "
                             f"{sorted(frame_layers) or 'none'}, not {idx}")
        use_frames = inputs == "frames" or (inputs == "auto" and with_frames)
        per_layer, counts = [], None
        for i in idx:  # one layer array at a time: [n, frames, dim] or [n, 1, dim]
            if use_frames:
                values, counts, meta = load_frames(st, ds, model, i)
                per_layer.append(values)
            else:
                meta = load_embeddings(st, dataset=ds, model=model, layer=i)
                per_layer.append(meta.X[:, None, :])
    captions = [str(c).strip() for c in meta.captions]
    keep = np.flatnonzero([bool(c) for c in captions])
    if not len(keep):
        raise DatasetError(f"dataset {ds!r}: no clip with a caption among the stored rows of {model!r}")
    features = np.empty((len(keep), len(per_layer), *per_layer[0].shape[1:]), dtype=per_layer[0].dtype)
    for j in range(len(per_layer)):  # [n, layers, frames, dim], freeing each layer once copied
        features[:, j] = per_layer[j][keep]
        per_layer[j] = None
    ids = [str(t) for t in meta.track_ids]
    data = CaptionData(features, None if counts is None else np.asarray(counts)[keep],
                       [captions[k] for k in keep], [ids[k] for k in keep])
    splits = np.asarray([str(s) for s in meta.splits], dtype=object)[keep]
    info = {"dataset": ds, "layers": idx, "layer_names": [names[i] for i in idx], "n_model_layers": len(names),
            "inputs": "frames" if use_frames else "pooled", "checkpoint": attrs.get("checkpoint")}
    return data, splits, info


def split_indices(splits: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(train, valid, test, protocol)``: row indices of each split and how they were made. Without a
    ``valid`` split, :func:`~embedstore.heads.protocol.carve_valid` holds out its seeded share of
    train; k-fold splits use fold 0 as test and fold 1 as valid.

    ``protocol``: ``splits`` (``train/valid/test`` or ``kfold``), ``valid_source`` (``split`` or
    ``inner``), ``valid_fraction`` (of a carve-out, else None) and ``split``, a sentence.

    Raises:
        DatasetError: no train/test rows, or too few train rows to carve validation from.
    """
    from embedstore.heads.protocol import VALID_FRACTION, carve_valid, make_folds

    fold = make_folds(list(splits))[0]
    train, valid = fold.train, fold.valid
    note = "train/valid/test splits" if fold.name == "split" else f"k-fold splits, test = {fold.name}"
    source = "split"
    if valid is None or not len(valid):
        keep, held = carve_valid(len(train), seed)
        train, valid, source = train[keep], train[held], "inner"
        note += f"; valid = {len(held)} clips held out of train ({100 * VALID_FRACTION:g} %, seed {seed})"
    protocol = {"splits": "train/valid/test" if fold.name == "split" else "kfold", "valid_source": source,
                "valid_fraction": VALID_FRACTION if source == "inner" else None, "split": note}
    return train, valid, fold.test, protocol


def _layer_field(idx: list[int], n_layers: int) -> int | str:
    if len(idx) == 1:
        return idx[0]
    if idx == list(range(n_layers)):
        return "weighted"
    return "weighted-" + "-".join(map(str, idx))


def run_caption_probe(
    store_path: str | Path,
    *,
    model: str,
    dataset: str | None = None,
    layers: int | str | Sequence[int | str] = "all",
    t5: str | Path = "t5-small",
    bert: str | Path = DEFAULT_BERT,
    sentence_model: str | Path | None = None,
    layer_mix: LayerMixMode = "softmax",
    inputs: InputKind = "auto",
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-4,
    patience: int = 5,
    seed: int = 0,
    device: str = "auto",
    generation: GenerationSettings = GenerationSettings(),
    out: str | Path | None = None,
    save: bool = True,
    progress: bool = True,
) -> CaptionReport:
    """Train a T5 captioner on stored embeddings of one model and evaluate it on the test split.

    Args:
        store_path: the store (Zarr directory or ``.h5``).
        model: the model entry; dataset: a dataset with captions (None: the only one).
        layers: ``"all"`` (mixed by ``layer_mix``), an index/name, or a list of them.
        t5: T5 checkpoint id or local directory. bert: BERT checkpoint for the BERT similarity.
        sentence_model: sentence-transformers model (None: the bundled all-MiniLM-L6-v2).
        layer_mix: ``softmax`` (learned softmax layer weights) or ``conv1x1`` (the study's Conv1d).
        inputs: ``auto`` (frames when stored, else pooled), ``frames`` or ``pooled``.
        epochs, batch_size, lr, patience, seed: training (AdamW; best epoch by validation loss).
        device: ``auto`` (cuda when available) or a torch device.
        generation: beam-search settings.
        out: a directory to also write the trained captioner (``captioner.pt``: projection and
            layer-mix weights, ``t5/``: the fine-tuned T5 and its tokenizer) and the test
            predictions (``predictions.jsonl``).
        save: write the JSON record to the store's results folder.

    Returns:
        A :class:`CaptionReport`.

    Raises:
        StoreError / DatasetError: missing dataset, model, frames or captions; no train/test split.
        ModelError: bad layers, layer mix or T5/BERT checkpoint.
    """
    data, splits, info = load_caption_data(store_path, model=model, dataset=dataset, layers=layers, inputs=inputs)
    train_idx, valid_idx, test_idx, split_protocol = split_indices(splits, seed)
    seed_everything(seed)
    t5_model, tokenizer = load_t5(t5)
    captioner = AudioCaptioner(t5_model, input_dim=data.features.shape[-1], num_layers=data.features.shape[1],
                               layer_mix=layer_mix)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed)
    train, valid, test = (data.subset(i) for i in (train_idx, valid_idx, test_idx))
    del data  # the subsets hold copies
    history = train_captioner(captioner, tokenizer, train, valid, settings, device=device, progress=progress)
    del train, valid
    generated = generate_captions(captioner, tokenizer, test, settings=generation, batch_size=batch_size)
    metrics = caption_metrics(generated, test.captions, bert=bert, sentence_model=sentence_model, device=device)
    predictions = [{"track_id": t, "generated": g, "reference": r}
                   for t, g, r in zip(test.track_ids, generated, test.captions)]
    protocol = {**split_protocol, "selection": "best epoch by validation loss",
                "n": {"train": len(train_idx), "valid": len(valid_idx), "test": len(test_idx)}}
    record = _record(model, info, captioner, history, protocol, {"test": {**metrics, "n": len(test_idx)}},
                     predictions, t5=t5, bert=bert, layer_mix=layer_mix, seed=seed, generation=generation,
                     hparams={"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience})
    path = save_record(store_path, record) if save else None
    if out is not None:
        _write_run(Path(out), captioner, tokenizer, layer_mix, info["layers"], predictions)
    return CaptionReport(record=record, path=path, history=history, predictions=predictions)


def _record(model: str, info: dict[str, Any], captioner: AudioCaptioner, history: TrainHistory,
            protocol: dict[str, Any], metrics: dict[str, Any], predictions: list[dict[str, str]], *,
            t5: str | Path, bert: str | Path, layer_mix: LayerMixMode, seed: int, generation: GenerationSettings,
            hparams: dict[str, Any]) -> CaptionRecord:
    """The probe's :class:`~embedstore.store.records.CaptionRecord` (head ``t5``): ``info`` is what
    :func:`load_caption_data` read, ``history`` the training's losses per epoch, ``hparams`` the
    training options (recorded with the best epoch and the ``generation`` settings)."""
    return CaptionRecord(
        task=CAPTION_TASK, dataset=info["dataset"], model=model, checkpoint=info["checkpoint"],
        layer=_layer_field(info["layers"], info["n_model_layers"]),
        layer_name=info["layer_names"][0] if len(info["layers"]) == 1 else "weighted", layers=info["layers"],
        head="t5", preset="default" if layer_mix == "softmax" else layer_mix, t5=str(t5), bert=str(bert),
        inputs=info["inputs"], layer_mix=layer_mix,
        layer_weights=captioner.mix.weights().detach().cpu().tolist() if len(info["layers"]) > 1 else None,
        hparams={**hparams, "best_epoch": history.best_epoch, **asdict(generation)},
        seeds=[seed], protocol=protocol,
        history={"train_loss": history.train_loss, "valid_loss": history.valid_loss},
        metrics=metrics, examples=predictions[:N_EXAMPLES],
    )


def _write_run(out: Path, captioner: AudioCaptioner, tokenizer: Any, layer_mix: str, layers: list[int],
               predictions: list[dict[str, str]]) -> None:
    """Write the trained captioner (``captioner.pt``: projection and layer-mix weights; ``t5/``: the
    fine-tuned T5 and its tokenizer) and the test predictions (``predictions.jsonl``) into ``out``."""
    import torch

    (out / "t5").mkdir(parents=True, exist_ok=True)
    captioner.t5.save_pretrained(out / "t5")
    tokenizer.save_pretrained(out / "t5")
    torch.save({"mix": captioner.mix.state_dict(), "proj": captioner.proj.state_dict(),
                "input_dim": captioner.input_dim, "num_layers": captioner.num_layers,
                "layer_mix": layer_mix, "layers": layers}, out / "captioner.pt")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(p) + "\n" for p in predictions)


def format_caption_report(report: CaptionReport | CaptionRecord) -> str:
    """A short text summary: what was trained, the test metrics, and a few generated captions."""
    rec = report.record if isinstance(report, CaptionReport) else report
    m = rec["metrics"]["test"]

    def num(key: str, scale: float = 1.0, digits: int = 3) -> str:
        return "n/a" if m.get(key) is None else f"{scale * m[key]:.{digits}f}"

    n = rec["protocol"]["n"]
    lines = [
        f"caption  {rec['dataset']}/{rec['model']}  layer {rec['layer']}  head t5 ({rec['t5']}, "
        f"mix {rec['layer_mix']}, inputs {rec['inputs']})",
        f"  clips: train {n['train']}, valid {n['valid']}, test {n['test']}; best epoch {rec['hparams']['best_epoch']}",
        f"  test: BERT sim {num('bert_similarity')}  sentence sim {num('sentence_similarity')}  "
        f"BLEU-4 {num('bleu', 100, 2)}/100  distinct {num('distinct_ratio')}",
    ]
    if rec.get("layer_weights"):
        lines.append("  layer weights: " + " ".join(f"{w:.2f}" for w in rec["layer_weights"]))
    for ex in rec.get("examples", []):
        lines.append(f"  [{ex['track_id']}] gen: {ex['generated']}")
        lines.append(f"  {' ' * (len(ex['track_id']) + 2)} ref: {ex['reference']}")
    if isinstance(report, CaptionReport) and report.path is not None:
        lines.append(f"  saved: {report.path}")
    return "\n".join(lines)
