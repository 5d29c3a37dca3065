"""Result records: the one home of what a probe, captioner or fine-tune run reports.

A record is a typed dataclass (:class:`ProbeRecord` for classification, :class:`CaptionRecord` for
captioning), tagged on disk with a schema name and version (:data:`PROBE_SCHEMA`,
:data:`CAPTION_SCHEMA`). Records live as one JSON file each in a folder beside the store
(``embedstore.zarr`` -> ``embedstore.zarr.results/``), named by :func:`record_filename`, written
atomically by :func:`save_record` / :func:`dump_record` and read back by :func:`read_record` (one
file) or :func:`load_records` (a store's folder). No torch here: heads/, analysis/ and finetune/ all
import this module.

Fields every record has (:class:`Record`):

- ``task, dataset, model``: what was trained; ``model`` is the store entry's key (a fine-tuned
  encoder's is ``<model>+ft-<task>``, see :func:`embedstore.store.specs.finetuned_key`);
  ``checkpoint``: the encoder checkpoint.
- ``layer``: an index, ``"weighted"`` or ``"weighted-0-2"``; ``layer_name``; ``layers``: indices fed
  to the head. ``head`` (``mlp``, ``logreg``, ``finetune``, ``t5``, ``t5-finetune``) and ``preset``.
- ``hparams`` (chosen on validation), ``seeds``, ``selection_score`` (validation accuracy of the
  chosen hyper-parameters: what every "best" is chosen by, :func:`choose_best`; None when there is
  none) and ``selected_on`` (the rows that score comes from, a key of :data:`SELECTED_ON`).
- ``protocol``: split scheme (``splits``), validation source (``valid_source``: ``split``,
  ``inner`` = a carve-out of train, ``inner_cv``), ``valid_fraction`` of a carve-out, and the
  evidence: clips per class of each split and fold (``class_counts``), labelled clips in no split
  (``unassigned``).
- ``metrics[split]``, ``layer_weights`` (learned softmax weights ``[layers]`` or None),
  ``finetune`` (the run of an end-to-end fine-tune, else absent), ``notes``, ``created`` (ISO 8601
  UTC) and ``embedstore_version``.

:class:`ProbeRecord` adds ``runs`` (per seed and fold), ``folds`` (per-fold test accuracy for k-fold),
``predictions`` (``{"test": {"track_ids", "y_true", "y_pred" [seeds][n]}}``, codes into
``metrics[split]["labels"]``) and ``layer_selection`` (``--layer best``: every layer's score).
:class:`CaptionRecord` adds ``t5, bert, inputs, layer_mix, history, examples``.
:class:`TagRecord` (``embedstore.tag/1``) adds ``tags``, :class:`RegressRecord` (``embedstore.regress/1``)
``target_scaling``; both add ``runs`` and ``layer_selection``, and their ``selection_score`` is the
validation macro ROC-AUC and R² respectively.

Records written before the schema tag are read as well: a file whose ``metrics["test"]`` has an
``accuracy`` is a probe record, any other a caption record. Keys this version does not know are kept
in ``extra`` and written back. A record is also a read-only mapping of its JSON form
(``record["metrics"]``), for code written against the files.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from embedstore import __version__
from embedstore.errors import StoreError

PROBE_SCHEMA = "embedstore.probe/1"
CAPTION_SCHEMA = "embedstore.caption/1"
TAG_SCHEMA = "embedstore.tag/1"
REGRESS_SCHEMA = "embedstore.regress/1"
RESULTS_SUFFIX = ".results"
#: ``selected_on`` values: the rows whose accuracy chose the hyper-parameters and ranks the record for
#: every "best". The test split is never one of them.
SELECTED_ON = {
    "valid": "valid accuracy",  # the dataset's own valid split
    "valid_fold": "valid-fold accuracy",  # k-fold: fold (i+1) mod K beside test fold i
    "train_carveout": "train carve-out accuracy",  # no valid split: a share of train held out
    "train_cv": "inner-CV accuracy on train",  # no valid split: stratified k-fold CV inside train
}
_OPTIONAL = ("finetune", "notes", "layer_selection")  # left out of the file when empty
_LAST = ("extra", "created", "embedstore_version")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_clean(value: Any) -> Any:
    """``value`` as strict JSON values: NaN/inf floats -> None, numpy scalars and arrays -> Python
    ones, tuples -> lists, keys -> str."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
        if isinstance(value, list):
            return json_clean(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def selected_on(protocol: Mapping[str, Any]) -> str:
    """The :data:`SELECTED_ON` key of a ``protocol`` (its ``valid_source`` and split scheme)."""
    source = protocol.get("valid_source", "split")
    if source == "inner":
        return "train_carveout"
    if source == "inner_cv":
        return "train_cv"
    return "valid_fold" if protocol.get("splits") == "kfold" else "valid"


@dataclass(eq=True)
class Record(Mapping):
    """The fields every result record has (see the module docstring); subclasses set ``SCHEMA``.

    Values are made strict JSON on construction (numpy -> Python, NaN -> None), so a record read
    back from its file equals the one written.
    """

    SCHEMA: ClassVar[str] = ""

    task: str
    dataset: str
    model: str
    layer: int | str
    head: str
    preset: str = "default"
    checkpoint: str | None = None
    layer_name: str | None = None
    layers: list[int] = field(default_factory=list)
    hparams: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    selection_score: float | None = None
    selected_on: str | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    layer_weights: list[float] | None = None
    finetune: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=_now)
    embedstore_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, json_clean(getattr(self, f.name)))
        if self.selected_on is None and "valid_source" in self.protocol:
            self.selected_on = selected_on(self.protocol)

    @property
    def schema(self) -> str:
        """The schema tag written into the file, e.g. ``"embedstore.probe/1"``."""
        return self.SCHEMA

    def key(self) -> tuple[Any, ...]:
        """What distinguishes this record from another: the parts of its file name."""
        head = self.head if self.preset in (None, "default") else f"{self.head}-{self.preset}"
        return (self.task, self.dataset, self.model, f"L{self.layer}", head)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``schema`` first, then the fields in order (empty optional sections left
        out), ``extra``, and ``created``, ``embedstore_version`` last."""
        out: dict[str, Any] = {"schema": self.SCHEMA}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in _LAST and not (f.name in _OPTIONAL and not value):
                out[f.name] = value
        out.update(self.extra)
        out.update(created=self.created, embedstore_version=self.embedstore_version)
        return out

    # read-only mapping of the JSON form
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(eq=True)
class ProbeRecord(Record):
    """A classification record: a probe on frozen embeddings (``mlp``, ``logreg``) or an end-to-end
    fine-tune (``finetune``). ``metrics[split]`` for ``train``/``valid``/``test``: ``accuracy,
    macro_f1, per_class_recall, confusion, labels, n, accuracy_std, macro_f1_std, per_seed, ci95``."""

    SCHEMA: ClassVar[str] = PROBE_SCHEMA

    folds: list[dict[str, Any]] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, Any] = field(default_factory=dict)
    layer_selection: dict[str, Any] | None = None


@dataclass(eq=True)
class CaptionRecord(Record):
    """A captioning record (T5 head on frozen embeddings, ``t5``, or end to end, ``t5-finetune``).

    ``metrics["test"]``: ``bert_similarity, sentence_similarity, bleu, distinct_ratio, n``;
    ``inputs``: ``frames``, ``pooled`` or ``audio crops (...)``; ``history``: per-epoch losses;
    ``examples``: a few ``{"track_id", "generated", "reference"}``.
    """

    SCHEMA: ClassVar[str] = CAPTION_SCHEMA

    t5: str | None = None
    bert: str | None = None
    inputs: str | None = None
    layer_mix: str | None = None
    history: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def key(self) -> tuple[Any, ...]:
        """The probe key plus the T5 checkpoint (its last path part) and the input kind (first word
        of ``inputs``): two captioners differing in either are two records."""
        t5 = Path(str(self.t5 or "t5")).name
        kind = (self.inputs or "inputs").split()[0]
        return (*super().key(), t5, kind)


@dataclass(eq=True)
class TagRecord(Record):
    """A tagging record (``mlp`` with sigmoid outputs, ``linear`` one-vs-rest logistic regression).
    ``metrics[split]``: ``macro_auc, macro_ap, per_tag_auc {tag: auc}, excluded`` (tags without a
    positive or a negative clip in the split, out of the macro averages), ``n``, ``ci95``,
    ``per_seed``; ``selection_score`` is the validation macro ROC-AUC. ``tags``: the tag names."""

    SCHEMA: ClassVar[str] = TAG_SCHEMA

    tags: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    layer_selection: dict[str, Any] | None = None


@dataclass(eq=True)
class RegressRecord(Record):
    """A regression record (``mlp`` with a linear output, ``ridge``). ``metrics[split]``: ``r2, mae,
    pearson_r, n, ci95, per_seed`` in the target's own units; ``selection_score`` is the validation
    R². ``target_scaling``: the training mean and std the targets were standardised with."""

    SCHEMA: ClassVar[str] = REGRESS_SCHEMA

    target_scaling: dict[str, float] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    layer_selection: dict[str, Any] | None = None


SCHEMAS: dict[str, type[Record]] = {PROBE_SCHEMA: ProbeRecord, CAPTION_SCHEMA: CaptionRecord,
                                    TAG_SCHEMA: TagRecord, REGRESS_SCHEMA: RegressRecord}


def _legacy_schema(data: Mapping[str, Any]) -> str:
    """The schema of a record written before the tag: classification records have test accuracy."""
    test = (data.get("metrics") or {}).get("test") or {}
    return PROBE_SCHEMA if "accuracy" in test else CAPTION_SCHEMA


def record_from_dict(data: Mapping[str, Any], source: str | Path | None = None) -> Record:
    """The typed record of a JSON mapping, by its ``schema`` tag (untagged: see the module docstring).

    Keys no field holds go to ``extra``; a caption fine-tune record of before the fix of its model
    key (the base encoder's name) gets its ``<model>+ft-<task>`` key back.

    Raises:
        StoreError: an unknown schema or a missing key field, naming ``source``.
    """
    if isinstance(data, Record):
        return data
    where = f"{source}: " if source is not None else ""
    tag = data.get("schema") or _legacy_schema(data)
    cls = SCHEMAS.get(tag)
    if cls is None:
        raise StoreError(f"{where}record schema {tag!r} is not one this embedstore reads "
                         f"({', '.join(SCHEMAS)}); a newer embedstore wrote it")
    names = {f.name for f in fields(cls)} - {"extra"}
    missing = [k for k in ("task", "dataset", "model", "layer", "head") if data.get(k) is None]
    if missing:
        raise StoreError(f"{where}{tag} record without {', '.join(missing)}")
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names and k != "schema"}
    record = cls(**known, extra=extra)
    if cls is CaptionRecord and record.head == "t5-finetune" and "+ft-" not in record.model:
        from embedstore.store.specs import finetuned_key

        record.model = finetuned_key(record.model, record.task, record.hparams.get("weights", "pretrained"))
    return record


def results_dir(store_path: str | Path) -> Path:
    """The results folder of a store: ``<store path>.results/`` beside it (not created here)."""
    p = Path(store_path)
    return p.with_name(p.name.rstrip("/") + RESULTS_SUFFIX)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(value)).strip("-") or "_"


def record_filename(record: Record | Mapping[str, Any]) -> str:
    """The one naming rule: ``<task>__<dataset>__<model>__L<layer>__<head>[-<preset>]`` (a non-default
    preset kept apart from the default protocol), captions adding ``__<t5>__<inputs kind>``; ``.json``.
    A ``+`` in a model key is kept (``mert+ft-genre``)."""
    return "__".join(_slug(p) for p in record_from_dict(record).key()) + ".json"


def _legacy_filename(record: Record) -> str:
    """The name a record of the same probe got before captions carried their T5 and inputs, and
    before ``+`` was kept in names (``mert+ft-genre`` was ``mert-ft-genre``)."""
    parts = Record.key(record)
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-") or "_" for p in parts) + ".json"


def dump_record(record: Record | Mapping[str, Any], path: str | Path) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (a temporary file moved into place: a crash
    leaves the old file or the new one, never a torn one). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = record_from_dict(record).to_dict()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(json_clean(payload), fh, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_record(store_path: str | Path, record: Record | Mapping[str, Any]) -> Path:
    """Write ``record`` into the store's results folder (:func:`results_dir`) under
    :func:`record_filename`, replacing the record of the same key (also one saved under the older
    name rule); returns the file's path."""
    record = record_from_dict(record)
    folder = results_dir(store_path)
    path = dump_record(record, folder / record_filename(record))
    legacy = folder / _legacy_filename(record)
    if legacy != path and legacy.is_file():
        try:
            same = record_filename(read_record(legacy)) == path.name
        except StoreError:
            same = False
        if same:
            legacy.unlink()
    return path


def read_record(path: str | Path) -> Record:
    """The record in one JSON file (tagged or written before the tag).

    Raises:
        StoreError: the file is unreadable, not JSON, or not a record (the message names it).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable result record ({exc})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path}: not a result record (a JSON object is expected)")
    try:
        return record_from_dict(data, source=path)
    except TypeError as exc:  # a field of the wrong kind
        raise StoreError(f"{path}: malformed result record ({exc})") from None


def _order(record: Record) -> tuple:
    layer = record.layer
    return (record.task, record.dataset, record.model, record.head, record.preset or "",
            (0, layer, "") if isinstance(layer, int) else (1, 0, str(layer)))


def load_records(store_path: str | Path, *, task: str | None = None, dataset: str | None = None,
                 model: str | None = None) -> list[Record]:
    """Every record of a store, optionally only those of ``task``/``dataset``/``model``, sorted by
    task, dataset, model, head, preset and layer (ints first, then ``"weighted"``). An absent
    folder gives ``[]``.

    Raises:
        StoreError: a record file is unreadable (the message names it).
    """
    folder = results_dir(store_path)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        rec = read_record(path)
        if all(want is None or got == want for want, got in ((task, rec.task), (dataset, rec.dataset),
                                                              (model, rec.model))):
            out.append(rec)
    return sorted(out, key=_order)


def record_selected_on(record: Record | Mapping[str, Any]) -> str:
    """The rows that ranked ``record`` (:data:`SELECTED_ON` key); for records written before that
    field, derived from the protocol."""
    return record.get("selected_on") or selected_on(record.get("protocol") or {})


def selection_score(record: Record | Mapping[str, Any]) -> float | None:
    """The validation accuracy that ranks ``record``; None when it has none."""
    score = record.get("selection_score")
    return float(score) if score is not None and math.isfinite(score) else None


def choose_best(records: Iterable[Record | Mapping[str, Any]]) -> Any:
    """The record with the highest :func:`selection_score` (ties: the first in order), or None when
    no record has one. Only validation scores are read: test metrics never choose."""
    best, top = None, -math.inf
    for rec in records:
        score = selection_score(rec)
        if score is not None and score > top:
            best, top = rec, score
    return best
