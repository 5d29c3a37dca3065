"""Dataset, model and layer specs: the one place that turns what a user typed into store names and
layer indices, with one-line errors that name the CLI option and suggest the closest name.

- ``--dataset``: a dataset of the store; default the only one, or the only one holding the asked
  models (or having the asked task): :func:`resolve_dataset`.
- ``--model``: model entry keys (``mert``, ``mert+ft-genre``; a ``+`` is part of the key); default
  every entry of the dataset: :func:`resolve_models`, one entry: :func:`resolve_entry`.
- ``--layer``: an index (negative counts from the end), a layer name, or one of the words
  :data:`LAYER_WORDS` a command accepts: ``all`` (every layer, one at a time), ``best`` (the layer
  chosen on validation by the stored records, :func:`best_layer`) and ``weighted`` (a learned mix of
  every layer): :func:`resolve_layers`, one layer: :func:`layer_index`.

No torch here; heads/, analysis/, finetune/, extract/ and the CLI all call it.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedstore.errors import ModelError, StoreError

LAYER_WORDS = ("all", "best", "weighted")
_INT = re.compile(r"[+-]?\d+")


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``value`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _listed(names: Sequence[Any]) -> str:
    return ", ".join(map(str, names)) or "none"


# ---- datasets and models -------------------------------------------------------------------------


def dataset_tasks(store: Any, dataset: str) -> dict[str, str]:
    """``{task: track-table column}`` of a dataset (a list of task names maps each to itself)."""
    tasks = store.dataset_attrs(dataset).get("tasks") or {}
    return dict(tasks) if isinstance(tasks, Mapping) else {str(t): str(t) for t in tasks}


def resolve_dataset(store: Any, dataset: str | None = None, *, models: Sequence[str] | str | None = None,
                    task: str | None = None) -> str:
    """The dataset ``dataset`` names, or (None) the only dataset of the store, or the only one that
    holds every model of ``models`` (one key or several) and has ``task`` (each filter only when
    given; in a store of one dataset :func:`resolve_models` checks the models instead).

    Raises:
        StoreError: an unknown name (with the closest one), or no or several candidates (listed).
    """
    names = list(store.datasets())
    if not names:
        raise StoreError(f"{store.path}: the store holds no dataset yet; run extract first")
    if dataset is not None:
        if dataset not in names:
            raise StoreError(f"--dataset {dataset!r}: not in the store{did_you_mean(dataset, names)} "
                             f"(datasets: {_listed(names)})")
        return dataset
    candidates, what = names, []
    models = [models] if isinstance(models, str) else models
    if models and len(names) > 1:
        held = {d: set(store.models(d)) for d in names}
        everywhere = sorted(set().union(*held.values()))
        for name in models:
            if name not in everywhere:
                raise StoreError(f"--model {name!r}: in no dataset of the store{did_you_mean(name, everywhere)} "
                                 f"(models: {_listed(everywhere)})")
        candidates = [d for d in candidates if set(models) <= held[d]]
        what.append(f"holding model {', '.join(map(repr, models))}")
    if task is not None:
        candidates = [d for d in candidates if task in dataset_tasks(store, d)]
        what.append(f"with task {task!r}")
    if len(candidates) == 1:
        return candidates[0]
    kind = " ".join(["datasets", *what])
    raise StoreError(f"--dataset: choose a dataset ({kind}: {_listed(candidates)}; "
                     f"all datasets: {_listed(names)})")


def resolve_models(store: Any, dataset: str, models: Sequence[str] | str | None = None) -> list[str]:
    """The model entries ``models`` names (one key or several), checked against ``dataset``, or
    (None or empty) every entry of the dataset in store order.

    Raises:
        StoreError: the dataset has no entry yet, or an unknown key (with the closest one).
    """
    have = list(store.models(dataset))
    if not have:
        raise StoreError(f"dataset {dataset!r} has no model entries yet; run extract first")
    if not models:
        return have
    wanted = [models] if isinstance(models, str) else list(models)
    for name in wanted:
        if name not in have:
            raise StoreError(f"--model {name!r}: not in dataset {dataset!r}{did_you_mean(name, have)} "
                             f"(models: {_listed(have)})")
    return wanted


def resolve_entry(store: Any, dataset: str | None, model: str | None) -> tuple[str, str]:
    """``(dataset, model)`` of one model entry: ``dataset`` None = the only dataset (holding
    ``model`` when given), ``model`` None = the dataset's only entry.

    Raises:
        StoreError: ambiguous or unknown names (the message lists the choices).
    """
    dataset = resolve_dataset(store, dataset, models=[model] if model is not None else None)
    if model is not None:
        return dataset, resolve_models(store, dataset, model)[0]
    have = list(store.models(dataset))
    if len(have) != 1:
        raise StoreError(f"--model: choose a model of dataset {dataset!r} (models: {_listed(have)})")
    return dataset, have[0]


def finetuned_key(model: str, task: str, weights: str = "pretrained") -> str:
    """The model key of an encoder fine-tuned on ``task`` (its records and its store entry):
    ``<model>+ft-<task>``, or ``<model>+random+ft-<task>`` when trained from random weights."""
    return f"{model}+random+ft-{task}" if weights == "random" else f"{model}+ft-{task}"


# ---- layers -------------------------------------------------------------------------------------


def parse_layer(value: int | str) -> int | str:
    """A ``--layer`` value as typed: digit strings (``"-1"``) become ints, other text is stripped."""
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _INT.fullmatch(text) else text
    return value


def layer_index(layer: int | str, names: Sequence[str], *, model: str, option: str = "--layer",
                words: Sequence[str] = ()) -> int:
    """The index (``0..n-1``) of one layer: a name, or an index where ``-1`` is the last layer.

    ``words`` (such as ``all``) are only named in the error, as the other accepted values.

    Raises:
        ModelError: no layer of that name (with the closest name) or an index out of range.
    """
    names = [str(n) for n in names]
    n = len(names)
    if isinstance(layer, str) and layer.strip() in names:
        return names.index(layer.strip())
    value = parse_layer(layer)
    also = f"; or {', '.join(words)}" if words else ""
    if isinstance(value, str):
        raise ModelError(f"{option} {value!r}: model {model!r} has no layer of that name"
                         f"{did_you_mean(value, [*names, *words])} (names: {_listed(names)}; "
                         f"indices 0..{n - 1} or -{n}..-1{also})")
    try:
        index = operator.index(value)
    except TypeError:
        raise ModelError(f"{option} {value!r}: not a layer index or name") from None
    if not -n <= index < n:
        raise ModelError(f"{option} {index}: out of range, model {model!r} has {n} layers "
                         f"(0..{n - 1}, or -{n}..-1 from the end{also})")
    return index % n


@dataclass(frozen=True)
class LayerSelection:
    """What a ``--layer`` spec resolved to.

    Attributes:
        mode: ``"one"`` (an index or name), ``"list"`` (several), or the word given (``"all"``,
            ``"best"``, ``"weighted"``: then ``indices`` are every layer, the candidates of ``best``
            and the inputs of ``weighted``).
        indices: layer indices ``0..n-1`` in the order asked.
    """

    mode: str
    indices: list[int]


def resolve_layers(spec: int | str | Sequence[int | str], names: Sequence[str], *, model: str,
                   option: str = "--layer", words: Sequence[str] = LAYER_WORDS,
                   widths: Sequence[int] | None = None) -> LayerSelection:
    """Resolve a layer spec: one of ``words`` (see :data:`LAYER_WORDS`), an index, a name, or a list
    of indices and names. ``weighted`` needs layers of one width (checked when ``widths`` is given).

    Raises:
        ModelError: a word the command does not take, an unknown layer, an empty list, or
            ``weighted`` over layers of different widths.
    """
    if isinstance(spec, str) and spec.strip() in LAYER_WORDS and spec.strip() not in words:
        takes = ", ".join(["an index", "a layer name", *words])
        raise ModelError(f"{option} {spec.strip()}: not available here ({' or '.join(takes.rsplit(', ', 1))})")
    if isinstance(spec, str) and spec.strip() in words:
        word = spec.strip()
        if word == "weighted" and widths is not None and len(set(widths)) > 1:
            raise ModelError(f"{option} weighted: model {model!r} has layers of different widths "
                             f"{sorted(set(widths))}; choose one layer instead")
        return LayerSelection(word, list(range(len(names))))
    several = not isinstance(spec, (int, str)) and isinstance(spec, Sequence)
    items = list(spec) if several else [spec]
    if not items:
        raise ModelError(f"{option}: give at least one layer")
    indices = [layer_index(x, names, model=model, option=option, words=words) for x in items]
    return LayerSelection("list" if several else "one", indices)


def _layer_key(layer: Any) -> int | str | None:
    """A record's ``layer`` as an int index or a word such as ``"weighted"``; None if absent."""
    if layer is None:
        return None
    return int(layer) if not isinstance(layer, str) or _INT.fullmatch(layer) else layer


def best_per_layer(records: Iterable[Mapping[str, Any]], model: str) -> dict[int | str, Any]:
    """Per layer of ``model`` (ints, and words such as ``"weighted"``), the record with the best
    validation score over heads, presets and tasks (:func:`~embedstore.store.records.choose_best`).
    Layers whose records have no validation score are left out; test metrics are never read."""
    from embedstore.store.records import choose_best

    by_layer: dict[int | str, list] = {}
    for r in records:
        key = _layer_key(r.get("layer"))
        if r.get("model") == model and key is not None:
            by_layer.setdefault(key, []).append(r)
    chosen = {k: choose_best(recs) for k, recs in by_layer.items()}
    return {k: r for k, r in chosen.items() if r is not None}


def best_layer(records: Iterable[Mapping[str, Any]], model: str) -> tuple[int, Any] | None:
    """What ``--layer best`` means for ``model``: ``(index, record)`` of the single layer whose best
    record (:func:`best_per_layer`) has the highest validation score (ties: the lower layer), or
    None when no single-layer record of ``model`` has one."""
    from embedstore.store.records import selection_score

    chosen = best_per_layer(records, model)
    scores = {k: selection_score(r) for k, r in chosen.items() if isinstance(k, int)}
    finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    pick = max(finite, key=lambda k: (finite[k], -k))
    return pick, chosen[pick]
