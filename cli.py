"""The ``embedstore`` command line: thin typer wrappers, one library call per command.

Every command's work is a function of the library; this module only parses options, calls it and
prints. Parsing imports nothing heavy (no torch): ``--help``, a bad option or an unknown encoder name
answer at once. Errors the user can cause are :class:`~embedstore.errors.EmbedstoreError` and are
printed as one line (``--debug`` shows the traceback). Exit status: 0 done, 1 failed, 2 usage (the
command line was rejected before anything ran), 130 interrupted (Ctrl-C; one line says what was kept).
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from embedstore import __version__
from embedstore.errors import EmbedstoreError, did_you_mean

#: exit statuses of every command (documented in --help and the README)
DONE, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

EXIT_STATUS = (
    "Exit status: 0 done; 1 failed (one line starting 'error:' says why); 2 usage (the command line was rejected "
    "before anything ran: unknown command, option or name, or a bad value); 130 interrupted (Ctrl-C: "
    "one line says what was kept, and running the same command again continues)."
)

#: Options with a fixed set of values: checked while parsing (so before torch loads), with a "did you
#: mean". Their library homes (tests/test_cli.py checks these are equal): --split-scheme
#: extract.datasets.SPLIT_SCHEMES, --dataset-type extract.datasets.DATASET_KINDS, --weights / --dtype
#: extract.encoders.registry, --pool extract.pooling.POOLINGS, --storage-dtype store.schema.STORAGE_DTYPES,
#: --gain extract.audio.GAINS, --head heads.protocol.HEADS, --preset heads.mlp.MLP_PRESETS, --layer-mix
#: heads.captioner.LAYER_MIX_MODES, --precision finetune.train.PRECISIONS, --method / --metric (analyze
#: layers) analysis.metrics.SEPARABILITY_METHODS / SILHOUETTE_METRICS. Spelled out here because several
#: of those modules import torch.
CHOICES: dict[str, tuple[str, ...]] = {
    "--split-scheme": ("auto", "fault-filtered", "random", "random-val", "kfold", "audioset-eval", "manifest",
                       "folders"),
    "--dataset-type": ("gtzan", "musiccaps", "folder", "manifest"),
    "--weights": ("pretrained", "random"),
    "--dtype": ("auto", "float32", "float16", "bfloat16"),
    "--pool": ("mean", "mean+std"),
    "--storage-dtype": ("float32", "float16"),
    "--gain": ("none", "peak"),
    "--engine": ("local", "ray"),
    "--head": ("mlp", "logreg"),
    "--preset": ("default", "paper"),
    "--layer-mix": ("softmax", "conv1x1"),
    "--precision": ("auto", "bf16", "fp16", "fp32"),
    "--method": ("silhouette", "fisher"),
    "--metric": ("cosine", "euclidean"),
}


def _choice(option: str, choices: tuple[str, ...] | None = None) -> Callable[[Any], Any]:
    """A typer callback that accepts only ``choices`` (default ``CHOICES[option]``; a usage error with
    "did you mean" otherwise)."""
    choices = CHOICES[option] if choices is None else choices

    def check(value):
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r}{did_you_mean(value, choices)}; use {', '.join(choices)}")
        return value

    return check


#: ``probe --format`` (heads.tables.TABLE_FORMATS), ``report --format`` and ``export --format``
#: (store.export.EXPORT_FORMATS): spelled out here, as CHOICES, so parsing imports no torch
TABLE_FORMATS = ("text", "markdown", "latex", "csv", "json")
REPORT_FORMATS = ("html", "md")
EXPORT_FORMATS = ("npz", "parquet", "hf")


def _encoder_names(value):
    """Callback of an encoder ``--model``: every name (comma-separated or repeated) must be registered."""
    from embedstore.extract.encoders.registry import get_spec  # no torch

    for name in _split_list(value if isinstance(value, list) else [value]) or []:
        try:
            get_spec(name)
        except EmbedstoreError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


class _Command(TyperCommand):
    """A command whose flags show no value placeholder (``--json``, not ``--json <bool>``) in --help."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _without_flag_types(super().get_params(ctx))


class _Group(TyperGroup):
    """A command group whose flags show no value placeholder in --help."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201
        return _without_flag_types(super().get_params(ctx))


def _without_flag_types(params: list) -> list:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # what --help prints as the value of a flag: nothing
    return params


#: keyword arguments of every command: exit statuses in its --help, flags without placeholders
COMMAND = {"cls": _Command, "epilog": EXIT_STATUS}

app = typer.Typer(
    name="embedstore",
    cls=_Group,
    help="Extract every layer of pretrained audio encoders into a chunked store, then probe, "
    "analyse and fine-tune on it.",
    epilog=EXIT_STATUS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_DEBUG = False

StoreOption = Annotated[
    Optional[Path],
    typer.Option(
        "--store",
        envvar="EMBEDSTORE_STORE",
        help="Store path (default ./embedstore.zarr; a path ending in .h5/.hdf5 selects HDF5).",
    ),
]

ModelsOption = Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Model entries (repeat or comma-separate; default: all).")]
DatasetOption = Annotated[Optional[str], typer.Option(help="Dataset in the store (default: the only one, or the one holding the models).")]
LabelNameOption = Annotated[Optional[str], typer.Option("--label-name", help="Name of the class-label task (default genre for GTZAN, label for class folders and manifests), e.g. genre for a folder of genres.")]
OutOption = Annotated[Optional[Path], typer.Option(help="Output folder (default: <store>.analysis/ next to the store).")]
FormatOption = Annotated[Optional[list[str]], typer.Option("--format", help="Figure formats: png, svg, pdf (repeatable; default png).")]
SeedOption = Annotated[int, typer.Option(help="Seed of subsampling and UMAP.")]
MaxPointsOption = Annotated[int, typer.Option(min=1, help="Subsample (seeded) to at most this many clips for plots.")]
GainOption = Annotated[str, typer.Option(callback=_choice("--gain"), help="Input gain: none (the decoded amplitude, what each encoder's own feature extractor expects) or peak (peak-normalise each clip to \\[-1, 1], the rule of stores made before this option).")]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="List every skipped or failed file (default: counts by reason, a few examples each).")]
StandardizeOption = Annotated[bool, typer.Option("--standardize/--no-standardize", help="Centre and scale each feature by the train rows' mean and std before projecting (the title says which).")]
DatasetTypeOption = Annotated[Optional[str], typer.Option("--dataset-type", callback=_choice("--dataset-type"), help="gtzan, musiccaps, folder or manifest (default: detected).")]
SplitDirOption = Annotated[Optional[Path], typer.Option(help="Folder with GTZAN's train/valid/test_filtered.txt lists.")]
WeightsOption = Annotated[str, typer.Option(callback=_choice("--weights"), help="pretrained, or random: the same architecture, seeded random init (the probing control; nothing to download).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda[:N] or mps.")]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]

SPLIT_SCHEME_HELP = (
    "How clips are split: auto (the dataset's own split where it has one, else random), fault-filtered "
    "(GTZAN's published lists; --split-dir), random (seeded, stratified: 80/20 train/test; MusicCaps "
    "70/10/20), random-val (70/10/20 train/valid/test), kfold "
    "(--folds), audioset-eval (MusicCaps), manifest (the CSV's split column), folders (train/, valid/, test/)."
)
SplitSchemeOption = Annotated[str, typer.Option("--split-scheme", callback=_choice("--split-scheme"), help=SPLIT_SCHEME_HELP)]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"embedstore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug


# ---- interrupts: what a long command keeps when stopped ------------------------------------------


class _Interrupted(Exception):
    """A long command stopped by Ctrl-C; the message says what was kept (exit 130)."""


def _on_interrupt(kept: Callable[[dict[str, Any]], str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a long command: on Ctrl-C, :func:`run` prints ``interrupted: <kept(its arguments)>`` and
    returns 130.

    The library closes its writers on the way out (everything marked done is on disk), so this only
    reports. A second Ctrl-C while reporting is ignored, so the one line is always printed.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)  # typer reads the options from the wrapped signature
        def call(**arguments: Any) -> Any:
            try:
                return command(**arguments)
            except KeyboardInterrupt:
                raise _Interrupted(_what_was_kept(kept, arguments)) from None

        return call

    return decorate


def _what_was_kept(kept: Callable[[dict[str, Any]], str], arguments: dict[str, Any]) -> str:
    """``kept(arguments)``, with Ctrl-C ignored meanwhile and any error replaced by a plain phrase."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return kept(arguments)
    except Exception:  # noqa: BLE001 - the report must never hide the interrupt
        return "everything written before the interrupt is kept"
    finally:
        signal.signal(signal.SIGINT, previous)


def _extract_kept(store: Path, models: list[str], weights: str, as_name: Optional[str]) -> str:
    """``<store> keeps <dataset>/<model>: N of M clips done, ...``: the model entries of this run."""
    from embedstore.extract.encoders.registry import EncoderRequest
    from embedstore.store import open_store

    keys = [r.store_key for r in EncoderRequest.for_models(_split_list(models) or [], key=as_name, weights=weights)]
    if not store.exists():
        return f"nothing was written yet ({store} not created)"
    with open_store(store, "r") as st:
        parts = [f"{ds}/{key}: {int(st.done(ds, key).sum())} of {st.n_tracks(ds)} clips done"
                 for ds in st.datasets() for key in keys if key in st.models(ds)]
    if not parts:
        return f"nothing was written to {store} yet"
    return f"{store} keeps {', '.join(parts)}; run the same command again to extract the rest"


def _probe_kept(store: Path) -> str:
    from embedstore.heads.results import results_dir

    return (f"the result of every probe that finished is saved in {results_dir(store)}; "
            "run the same command again to redo the rest")


def _finetune_kept(out: Optional[Path], model: str, task: Optional[str]) -> str:
    run = out if out is not None else f"finetune-{model}-{task or '<task>'}"
    return f"{run}/last.pt holds the last finished epoch, if any; add --resume to continue from it"


def _analysis_kept(out: Optional[Path], store: Path) -> str:
    from embedstore.analysis.data import default_out_dir

    return f"the figures written so far are in {out if out is not None else default_out_dir(store)}"


# ---- commands are registered below, one section per area ------------------------------------


def _store_path(store: Optional[Path]) -> Path:
    return store if store is not None else Path("embedstore.zarr")


def _split_list(values: Optional[list[str]]) -> Optional[list[str]]:
    """Options given as ``--x a,b --x c`` -> ``["a", "b", "c"]`` (None when absent)."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _split_or_none(split: str) -> Optional[str]:
    return None if split in ("all", "") else split


def _layer_arg(layer: str):
    """A --layer value: an int index, or a name / 'all' / 'best' / 'weighted' (see embedstore.store.specs)."""
    from embedstore.store.specs import parse_layer

    return parse_layer(layer)


# ---- datasets ----------------------------------------------------------------------------------


@app.command(**COMMAND)
def datasets(
    dataset_dir: Annotated[Path, typer.Argument(metavar="DATASET_DIR", exists=True, help="Dataset folder (or a MusicCaps / manifest CSV).")],
    dataset_type: DatasetTypeOption = None,
    split_scheme: SplitSchemeOption = "auto",
    split_dir: SplitDirOption = None,
    seed: Annotated[int, typer.Option(help="Seed of random splits.")] = 0,
    folds: Annotated[int, typer.Option(min=2, help="Folds for --split-scheme kfold.")] = 5,
    label_name: LabelNameOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: VerboseOption = False,
    old_type: Annotated[Optional[str], typer.Option("--type", hidden=True, callback=_choice("--dataset-type"), help="Old name of --dataset-type.")] = None,
) -> None:
    """Show what a dataset folder holds: where its labels are, clips per label and split (and why that split), unreadable files."""
    import json

    from embedstore.extract.datasets import DatasetRequest, format_dataset_summary, summarize_dataset

    ds = DatasetRequest(dataset_dir, dataset_type or old_type, label_name=label_name, split_scheme=split_scheme,
                        split_dir=split_dir, seed=seed, folds=folds).discover()
    typer.echo(json.dumps(summarize_dataset(ds), indent=2) if as_json else format_dataset_summary(ds, verbose=verbose))


# ---- demo --------------------------------------------------------------------------------------


@app.command(**COMMAND)
@_on_interrupt(lambda a: f"{a['out']} keeps what was written; run the same command again to finish")
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the generated audio, the store, results and figures.")] = Path("embedstore-demo"),
    clips_per_genre: Annotated[int, typer.Option(min=1, help="Generated clips per genre (4 genres).")] = 30,
    seconds: Annotated[float, typer.Option(help="Length of each generated clip in seconds.")] = 1.5,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: CPUs - 1, at most 4).")] = None,
    progress: ProgressOption = True,
) -> None:
    """Offline demo, nothing downloaded: generate audio, extract mfcc + random wav2vec2, probe, plot."""
    from embedstore.demo import run_demo

    run_demo(out, clips_per_genre=clips_per_genre, seconds=seconds, workers=workers, progress=progress)


# ---- the store ---------------------------------------------------------------------------------


@app.command(**COMMAND)
def info(
    store_path: Annotated[Optional[Path], typer.Argument(metavar="[STORE]", help="Store to describe (default: --store, $EMBEDSTORE_STORE or ./embedstore.zarr).")] = None,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the documented JSON form (stable keys).")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Describe a store: datasets, clips, models (layers x width), done/failed counts, size, metadata."""
    import json

    from embedstore.store import format_info
    from embedstore.store import info as store_info

    d = store_info(store_path or _store_path(store))
    typer.echo(json.dumps(d, indent=2, default=str) if as_json else format_info(d, verbose=verbose))


# ---- extraction --------------------------------------------------------------------------------


@app.command(**COMMAND)
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print the encoder table as JSON.")] = False,
) -> None:
    """List the encoders: checkpoint, sample rate, layers x width, frame rate."""
    from embedstore.extract.encoders import format_encoder_table, list_encoders

    if as_json:
        import json

        typer.echo(json.dumps([spec.to_dict() for spec in list_encoders()], indent=2))
    else:
        typer.echo(format_encoder_table())



@app.command(**COMMAND)
@_on_interrupt(lambda a: _extract_kept(_store_path(a["store"]), a["model"], a["weights"], a["as_name"]))
def extract(
    dataset_dir: Annotated[Path, typer.Argument(metavar="DATASET_DIR", exists=True, help="Dataset folder: GTZAN, MusicCaps (CSV + clips), class folders, or a manifest.csv's folder.")],
    model: Annotated[list[str], typer.Option("--model", "-m", callback=_encoder_names, help="Encoder name (see `embedstore models`); repeat to extract several in one decoding pass.")],
    store: StoreOption = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Hub id or local directory/file of the weights (default: the encoder's standard checkpoint).")] = None,
    weights: WeightsOption = "pretrained",
    as_name: Annotated[Optional[str], typer.Option("--as", help="Store key of the model entry (default: the encoder name, +random for random weights).")] = None,
    dataset_type: DatasetTypeOption = None,
    dataset_name: Annotated[Optional[str], typer.Option(help="Dataset name inside the store (default: from the folder).")] = None,
    label_name: LabelNameOption = None,
    split_scheme: SplitSchemeOption = "auto",
    split_dir: SplitDirOption = None,
    split: Annotated[Optional[list[str]], typer.Option(help="Only extract clips of these splits (e.g. train,test).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per encoder call.")] = 8,
    device: DeviceOption = "auto",
    dtype: Annotated[str, typer.Option(callback=_choice("--dtype"), help="Compute dtype: auto (float32 on CPU, bfloat16/float16 autocast on GPU), float32, float16, bfloat16.")] = "auto",
    pool: Annotated[str, typer.Option(callback=_choice("--pool"), help="Time pooling: mean or mean+std.")] = "mean",
    frames: Annotated[Optional[float], typer.Option(help="Also store frame sequences at this hop in seconds (e.g. 0.5), for captioning.")] = None,
    frame_layers: Annotated[Optional[list[str]], typer.Option(help="Layers whose frame sequences are stored (default: all), e.g. 6,12.")] = None,
    window_seconds: Annotated[Optional[float], typer.Option(help="Window length for long clips (default: the encoder's, 10 s).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: CPUs - 1, at most 4 on the CPU; on a GPU as many as the model needs, up to CPUs - 1; 0 = in process).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Extract at most N clips.")] = None,
    storage_dtype: Annotated[str, typer.Option(callback=_choice("--storage-dtype"), help="float32 or float16 on disk.")] = "float32",
    strict: Annotated[bool, typer.Option(help="Fail if any clip fails to decode.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow running model code from the hub (off: MERT loads into transformers' own classes).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for random splits and random weights.")] = 0,
    progress: Annotated[bool, typer.Option(help="Progress bar on a terminal, log lines otherwise.")] = True,
    flush_seconds: Annotated[float, typer.Option("--flush-seconds", help="Make finished clips durable (done) at least this often, whatever the chunk size: a killed run loses at most about this many seconds of work (0: after every batch).")] = 30.0,
    engine: Annotated[str, typer.Option(callback=_choice("--engine"), help="local (this machine) or ray (Ray Data over a cluster; pip install 'embedstore\\[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="ray: cluster to join (auto, host:6379, ray://host:10001); default a local Ray.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="ray: number of encoder actors.")] = 1,
    num_gpus_per_worker: Annotated[Optional[float], typer.Option(help="ray: GPUs per encoder actor (default 1 when the cluster has GPUs, else 0).")] = None,
    num_cpus_per_worker: Annotated[float, typer.Option(help="ray: CPUs per encoder actor.")] = 1.0,
    gain: GainOption = "none",
    tag_separator: Annotated[str, typer.Option(help="manifest: what separates the tags of one clip in a tagging column.")] = ";",
    column_kind: Annotated[Optional[list[str]], typer.Option("--task-kind", help="manifest: COLUMN=tag|regress|classify states a column's task kind instead of inferring it (numbers: regress; values holding the tag separator: tag); repeatable.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run encoders over a dataset and store the pooled embeddings of EVERY layer (resumable)."""
    from embedstore.extract.datasets import DatasetRequest
    from embedstore.extract.encoders.registry import EncoderRequest
    from embedstore.extract.pipeline import ExtractOptions, format_summary, run_extract

    dataset = DatasetRequest(dataset_dir, dataset_type, name=dataset_name, label_name=label_name,
                             split_scheme=split_scheme, split_dir=split_dir, seed=seed, tag_separator=tag_separator,
                             task_kinds=_column_kinds(column_kind))
    encoders = EncoderRequest.for_models(
        _split_list(model) or [], checkpoint=checkpoint, key=as_name, weights=weights, dtype=dtype, seed=seed,
        trust_remote_code=trust_remote_code, window_seconds=window_seconds,
    )
    options = ExtractOptions(
        batch_size=batch_size,
        pooling=pool,
        storage_dtype=storage_dtype,
        frames_hop=frames,
        frame_layers=[int(x) for x in _split_list(frame_layers)] if frame_layers else None,
        workers=workers,
        limit=limit,
        split=_split_list(split),
        strict=strict,
        progress=progress,
        flush_seconds=flush_seconds,
        gain=gain,
    )
    if engine == "local":
        summary = run_extract(dataset, encoders, _store_path(store), device=device, options=options)
    else:
        from embedstore.extract.ray_engine import RayOptions, run_extract_ray

        ray_options = RayOptions(address=ray_address, concurrency=concurrency, num_gpus_per_worker=num_gpus_per_worker,
                                 num_cpus_per_worker=num_cpus_per_worker)
        summary = run_extract_ray(dataset, encoders, _store_path(store), options=options, ray_options=ray_options)
    typer.echo(format_summary(summary, verbose=verbose))


#: ``probe --task-kind`` (the library home: heads.tasks.TASK_KINDS)
TASK_KIND_CHOICES = ("classify", "tag", "regress")


def _column_kinds(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``--task-kind COLUMN=KIND`` values (comma lists allowed) as ``((column, kind), ...)``."""
    out = []
    for item in _split_list(values) or []:
        column, _, kind = item.partition("=")
        if not column or kind not in TASK_KIND_CHOICES:
            raise typer.BadParameter(f"{item!r}: use COLUMN=tag, COLUMN=regress or COLUMN=classify",
                                     param_hint="--task-kind")
        out.append((column.strip(), kind))
    return tuple(out)


# ---- probing -----------------------------------------------------------------------------------


@app.command(**COMMAND)
@_on_interrupt(lambda a: _probe_kept(_store_path(a["store"])))
def probe(
    store: StoreOption = None,
    task: Annotated[Optional[str], typer.Option(help="Label task to predict (genre for GTZAN; default: the store's only one), or 'caption' for the T5 captioner.")] = None,
    model: ModelsOption = None,
    dataset: DatasetOption = None,
    layer: Annotated[str, typer.Option(help="Layer index or name, 'all' (one probe per layer), 'best' or 'weighted' (learned softmax sum of layers).")] = "all",
    head: Annotated[str, typer.Option(callback=_choice("--head"), help="mlp (the study's Linear-512-ReLU-BatchNorm-Linear) or logreg.")] = "mlp",
    preset: Annotated[str, typer.Option(callback=_choice("--preset"), help="default (hyper-parameters chosen on validation, early stopping) or paper (lr 1e-5, 10 epochs, as the study).")] = "default",
    seeds: Annotated[int, typer.Option(min=1, help="Repeat training with this many seeds; report mean and std.")] = 1,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result records as JSON.")] = False,
    table_format: Annotated[str, typer.Option("--format", callback=_choice("--format", TABLE_FORMATS), help="Comparison table as text, markdown, latex (booktabs, for a paper), csv or json.")] = "text",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    t5: Annotated[str, typer.Option(help="caption: T5 checkpoint id or local directory.")] = "t5-small",
    bert: Annotated[str, typer.Option(help="caption: BERT checkpoint for the BERT-similarity metric.")] = "bert-base-uncased",
    layer_mix: Annotated[str, typer.Option(callback=_choice("--layer-mix"), help="caption: softmax (learned weights) or conv1x1 (the study's Conv1d).")] = "softmax",
    epochs: Annotated[int, typer.Option(min=1, help="caption: maximum training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="caption: batch size.")] = 16,
    lr: Annotated[float, typer.Option(help="caption: AdamW learning rate (the study's 1e-4).")] = 1e-4,
    num_beams: Annotated[int, typer.Option(help="caption: beam width.")] = 4,
    no_repeat_ngram: Annotated[int, typer.Option(help="caption: block repeated n-grams of this size (0: off).")] = 3,
    repetition_penalty: Annotated[float, typer.Option(help="caption: repetition penalty (1: off).")] = 1.2,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    task_kind: Annotated[Optional[str], typer.Option(callback=_choice("--task-kind", TASK_KIND_CHOICES), help="classify, tag or regress (default: from the stored column: tags -> tag, numbers -> regress, else classify). For tag/regress --head logreg is the linear head (one-vs-rest logistic regression, ridge).")] = None,
) -> None:
    """Train heads on the stored, frozen embeddings and print one comparison table across models and layers."""
    from embedstore.heads.tasks import task_for

    # the captioner's GenerationSettings fields; built by the caption task (its module imports torch)
    generation = dict(num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram, repetition_penalty=repetition_penalty)
    _, text, json_text, warnings = task_for(task, task_kind, _store_path(store)).probe(
        _store_path(store), task, models=_split_list(model), dataset=dataset, layer=_layer_arg(layer), head=head,
        preset=preset, seeds=seeds, device=device, progress=progress, t5=t5, bert=bert, layer_mix=layer_mix,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, generation=generation, table_format=table_format,
        kind=task_kind if task_kind != "classify" else None)
    typer.echo(json_text if as_json else text)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)


# ---- fine-tuning -------------------------------------------------------------------------------


@app.command(**COMMAND)
@_on_interrupt(lambda a: _finetune_kept(a["out"], a["model"], a["task"]))
def finetune(
    dataset_dir: Annotated[Path, typer.Argument(metavar="DATASET_DIR", exists=True, help="Dataset folder (as for extract).")],
    model: Annotated[str, typer.Option("--model", "-m", callback=_encoder_names, help="Encoder name (see `embedstore models`).")] = "mert",
    task: Annotated[Optional[str], typer.Option(help="Label task to learn (genre for GTZAN; default: the dataset's only one), or caption.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Hub id or local directory of the starting weights.")] = None,
    weights: WeightsOption = "pretrained",
    layer: Annotated[str, typer.Option(help="weighted (learned softmax sum of layers), or one layer index/name.")] = "weighted",
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = 10,
    lr_encoder: Annotated[float, typer.Option(help="Learning rate of the encoder.")] = 1e-5,
    lr_head: Annotated[float, typer.Option(help="Learning rate of the head (and layer weights).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Clips per step (at least 2: the head has batch norm).")] = 8,
    grad_accum: Annotated[int, typer.Option(min=1, help="Accumulate gradients over this many steps.")] = 1,
    crop_seconds: Annotated[float, typer.Option(help="Random training crops of this length; evaluation uses full clips.")] = 5.0,
    freeze_feature_encoder: Annotated[bool, typer.Option(help="Keep the convolutional feature encoder frozen (usual practice).")] = True,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for memory in the transformer.")] = False,
    spec_augment: Annotated[bool, typer.Option(help="The encoder's own time/feature masking during training.")] = True,
    precision: Annotated[str, typer.Option(callback=_choice("--precision"), help="auto (bf16 on GPUs that have it, else fp16; fp32 on CPU), bf16, fp16 or fp32.")] = "auto",
    device: DeviceOption = "auto",
    patience: Annotated[int, typer.Option(min=1, help="Stop after this many epochs without a validation gain.")] = 3,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default finetune-<model>-<task>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/last.pt.")] = False,
    export_to_store: Annotated[Optional[Path], typer.Option(help="After training, extract the fine-tuned encoder into this store as <model>+ft-<task>.")] = None,
    dataset_type: DatasetTypeOption = None,
    label_name: LabelNameOption = None,
    split_scheme: SplitSchemeOption = "auto",
    split_dir: SplitDirOption = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, crops and batch order.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    t5: Annotated[str, typer.Option(help="--task caption: T5 checkpoint id or local directory.")] = "t5-small",
    bert: Annotated[str, typer.Option(help="--task caption: BERT checkpoint for the BERT-similarity metric.")] = "bert-base-uncased",
    gain: GainOption = "none",
    limit: Annotated[Optional[int], typer.Option(help="Use at most N clips per split (seeded, stratified): a quick run.")] = None,
    train_eval: Annotated[str, typer.Option(help="Final evaluation of the training split: auto (a seeded subsample as large as validation, at most 64 clips), full, or a number of clips. Validation and test are always whole.")] = "auto",
    keep_optimizer: Annotated[bool, typer.Option(help="Keep the optimizer state in the finished run's last.pt (about 3x its size) so --resume with more --epochs continues exactly.")] = False,
) -> None:
    """Fine-tune an encoder end to end on raw audio (the unfrozen path) and report as probe does.

    With --task caption the encoder trains together with the T5 captioner (MusicCaps)."""
    from embedstore.extract.datasets import DatasetRequest
    from embedstore.extract.encoders.registry import EncoderRequest

    dataset = DatasetRequest(dataset_dir, dataset_type, label_name=label_name, split_scheme=split_scheme,
                             split_dir=split_dir, seed=seed)
    encoder = EncoderRequest(model, checkpoint, weights=weights, seed=seed)
    from embedstore.finetune import train
    from embedstore.heads.tasks import task_for

    report = train.finetune(
        dataset, encoder, task=task, layer=_layer_arg(layer),
        epochs=epochs, lr_encoder=lr_encoder, lr_head=lr_head, weight_decay=weight_decay, batch_size=batch_size,
        grad_accum=grad_accum, crop_seconds=crop_seconds, freeze_feature_encoder=freeze_feature_encoder,
        gradient_checkpointing=gradient_checkpointing, spec_augment=spec_augment, precision=precision, device=device,
        patience=patience, out=out, resume=resume, export_to_store=export_to_store, workers=workers, seed=seed,
        progress=progress, gain=gain, limit=limit, train_eval=train_eval, keep_optimizer=keep_optimizer,
        t5=t5, bert=bert,
    )
    typer.echo(task_for(task).finetune_format(report))


# ---- analysis ----------------------------------------------------------------------------------

analyze_app = typer.Typer(
    cls=_Group,
    help="Figures and numbers from the store: pca, umap, cosine, layers, cka, confusion.",
    epilog=EXIT_STATUS,
    no_args_is_help=True,
    rich_markup_mode="rich",
)
#: what Ctrl-C in an analyze command reports: the figures written so far
_ANALYSIS_INTERRUPT = _on_interrupt(lambda a: _analysis_kept(a.get("out"), _store_path(a.get("store"))))
app.add_typer(analyze_app, name="analyze")


def _show(result, formatter) -> None:
    typer.echo(formatter(result))


@analyze_app.command("pca", **COMMAND)
@_ANALYSIS_INTERRUPT
def analyze_pca(
    store: StoreOption = None,
    model: ModelsOption = None,
    layer: Annotated[str, typer.Option(help="Layer index, name, 'best' (by the stored probes' validation accuracy, never test) or 'all' (a grid).")] = "-1",
    split: Annotated[str, typer.Option(help="Split to draw ('all' for every clip).")] = "train",
    task: Annotated[Optional[str], typer.Option(help="Label column to colour by (default: the dataset's first task).")] = None,
    dataset: DatasetOption = None,
    out: OutOption = None,
    fmt: FormatOption = None,
    max_points: MaxPointsOption = 2000,
    seed: SeedOption = 0,
    standardize: StandardizeOption = True,
) -> None:
    """2-D PCA scatter per model (and layer), coloured by label, explained variance on the axes."""
    from embedstore.analysis import format_projection, pca

    _show(pca(_store_path(store), models=_split_list(model), layer=_layer_arg(layer), split=_split_or_none(split),
              dataset=dataset, out=out, formats=tuple(_split_list(fmt) or ["png"]), max_points=max_points,
              seed=seed, task=task, standardize=standardize), format_projection)


@analyze_app.command("umap", **COMMAND)
@_ANALYSIS_INTERRUPT
def analyze_umap(
    store: StoreOption = None,
    model: ModelsOption = None,
    layer: Annotated[str, typer.Option(help="Layer index, name, 'best' or 'all'.")] = "-1",
    split: Annotated[str, typer.Option(help="Split to draw ('all' for every clip).")] = "train",
    task: Annotated[Optional[str], typer.Option(help="Label column to colour by.")] = None,
    dataset: DatasetOption = None,
    out: OutOption = None,
    fmt: FormatOption = None,
    max_points: MaxPointsOption = 2000,
    seed: SeedOption = 0,
    n_neighbors: Annotated[int, typer.Option(help="UMAP n_neighbors.")] = 15,
    min_dist: Annotated[float, typer.Option(help="UMAP min_dist.")] = 0.1,
    metric: Annotated[str, typer.Option(help="UMAP metric.")] = "cosine",
    standardize: StandardizeOption = True,
) -> None:
    """2-D UMAP scatter per model (seeded), coloured by label."""
    from embedstore.analysis import format_projection, umap

    _show(umap(_store_path(store), models=_split_list(model), layer=_layer_arg(layer), split=_split_or_none(split),
               dataset=dataset, out=out, formats=tuple(_split_list(fmt) or ["png"]), max_points=max_points,
               seed=seed, task=task, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
               standardize=standardize), format_projection)


@analyze_app.command("cosine", **COMMAND)
@_ANALYSIS_INTERRUPT
def analyze_cosine(
    store: StoreOption = None,
    model: ModelsOption = None,
    layer: Annotated[str, typer.Option(help="Layer index, name or 'all'.")] = "all",
    split: Annotated[str, typer.Option(help="Split ('all' for every clip).")] = "all",
    dataset: DatasetOption = None,
    out: OutOption = None,
    fmt: FormatOption = None,
    max_points: MaxPointsOption = 2000,
    seed: SeedOption = 0,
) -> None:
    """Average pairwise cosine similarity per model and layer, raw and mean-centred, within vs between class."""
    from embedstore.analysis import cosine, format_cosine

    _show(cosine(_store_path(store), models=_split_list(model), layer=_layer_arg(layer), split=_split_or_none(split),
                 dataset=dataset, out=out, formats=tuple(_split_list(fmt) or ["png"]), max_points=max_points,
                 seed=seed), format_cosine)


@analyze_app.command("layers", **COMMAND)
@_ANALYSIS_INTERRUPT
def analyze_layers(
    store: StoreOption = None,
    model: ModelsOption = None,
    split: Annotated[str, typer.Option(help="Split for the separability score ('all' for every clip).")] = "train",
    task: Annotated[Optional[str], typer.Option(help="Task whose labels and probe results to use.")] = None,
    method: Annotated[str, typer.Option(callback=_choice("--method"), help="Training-free score: silhouette or fisher.")] = "silhouette",
    metric: Annotated[str, typer.Option(callback=_choice("--metric"), help="Distance for silhouette: cosine or euclidean.")] = "cosine",
    dataset: DatasetOption = None,
    out: OutOption = None,
    fmt: FormatOption = None,
    max_points: MaxPointsOption = 2000,
    seed: SeedOption = 0,
) -> None:
    """Per-layer curves per model: stored probes' validation accuracy and a training-free separability score.

    The starred best layer is chosen on validation, never on test."""
    from embedstore.analysis import format_layers, layers

    _show(layers(_store_path(store), models=_split_list(model), split=_split_or_none(split), dataset=dataset,
                 task=task, method=method, metric=metric, out=out, formats=tuple(_split_list(fmt) or ["png"]),
                 max_points=max_points, seed=seed), format_layers)


@analyze_app.command("cka", **COMMAND)
@_ANALYSIS_INTERRUPT
def analyze_cka(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model entry.")],
    other_model: Annotated[Optional[str], typer.Argument(metavar="[OTHER_MODEL]", help="Second model entry (e.g. its fine-tuned version); default: the model with itself.")] = None,
    store: StoreOption = None,
    split: Annotated[str, typer.Option(help="Split ('all' for every clip).")] = "all",
    dataset: DatasetOption = None,
    out: OutOption = None,
    fmt: FormatOption = None,
    max_points: MaxPointsOption = 1000,
    seed: SeedOption = 0,
) -> None:
    """Linear CKA between every pair of layers (of one model, or across two), as a heat map."""
    from embedstore.analysis import cka, format_cka

    _show(cka(_store_path(store), model, other_model, split=_split_or_none(split), dataset=dataset, out=out,
              formats=tuple(_split_list(fmt) or ["png"]), max_points=max_points, seed=seed), format_cka)


@analyze_app.command("confusion", **COMMAND)
@_ANALYSIS_INTERRUPT
def analyze_confusion(
    model: Annotated[str, typer.Option("--model", "-m", help="Model entry of the probe result.")],
    layer: Annotated[str, typer.Option(help="Layer of the probe result (index or 'weighted').")],
    store: StoreOption = None,
    task: Annotated[str, typer.Option(help="Task of the probe result.")] = "genre",
    head: Annotated[str, typer.Option(help="Head of the probe result (mlp, logreg, finetune).")] = "mlp",
    split: Annotated[str, typer.Option(help="Split of the confusion matrix.")] = "test",
    dataset: DatasetOption = None,
    out: OutOption = None,
    fmt: FormatOption = None,
) -> None:
    """The confusion matrix of a stored probe result, as a figure."""
    from embedstore.analysis import confusion, format_confusion

    _show(confusion(_store_path(store), task, model, _layer_arg(layer), head, split=split, dataset=dataset, out=out,
                    formats=tuple(_split_list(fmt) or ["png"])), format_confusion)


# ---- report and export ------------------------------------------------------------------------


@app.command(**COMMAND)
def export(
    store: StoreOption = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model entry (default: the dataset's only one).")] = None,
    layer: Annotated[str, typer.Option(help="Layer index or name, or 'all' (every layer, [clips, layers, dim]).")] = "-1",
    split: Annotated[Optional[str], typer.Option(help="Only the clips of this split (default: every written clip).")] = None,
    dataset: DatasetOption = None,
    fmt: Annotated[str, typer.Option("--format", callback=_choice("--format", EXPORT_FORMATS), help="npz (numpy), parquet (pandas/pyarrow; pip install 'embedstore\\[parquet]') or hf (a Hugging Face datasets folder; pip install 'embedstore\\[hf]').")] = "npz",
    out: Annotated[Optional[Path], typer.Option(help="Output file (an hf folder); default <store>.<model>.L<layer>[.<split>].<format> beside the store.")] = None,
) -> None:
    """Write one model entry's embeddings with track ids, labels, splits and captions for use elsewhere."""
    from embedstore.store.export import export_embeddings

    written = export_embeddings(_store_path(store), out, fmt=fmt, dataset=dataset, model=model, layer=_layer_arg(layer), split=split)
    typer.echo(f"wrote {written}")


@app.command(**COMMAND)
def report(
    store: StoreOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Output file (default <store>.report.html, or .md with --format md).")] = None,
    fmt: Annotated[str, typer.Option("--format", callback=_choice("--format", REPORT_FORMATS), help="html (one self-contained page, figures inlined) or md (Markdown; figures linked).")] = "html",
) -> None:
    """One page of the study: datasets, model entries, the comparison table, figures, captions; from the store and its records."""
    from embedstore.report import write_report

    path = _store_path(store)
    typer.echo(f"wrote {write_report(path, out, fmt=fmt)}")


def _click_error(name: str) -> type[Exception]:
    """Click's exception class ``name`` as typer raises it (typer may vendor its own click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def run(args: Optional[list[str]] = None) -> int:
    """Run the command line ``args`` (default ``sys.argv[1:]``) and return its exit status (see
    :data:`EXIT_STATUS`); every error is printed as one line on stderr."""
    click_exception, usage_error = _click_error("ClickException"), _click_error("UsageError")
    try:
        status = app(args=args, prog_name="embedstore", standalone_mode=False)
    except _Interrupted as exc:
        typer.echo(f"interrupted: {exc}", err=True)
        return INTERRUPTED
    except KeyboardInterrupt:  # outside a long command: while starting up, or in a short one
        typer.echo("interrupted", err=True)
        return INTERRUPTED
    except typer.Abort as exc:  # click (unlike typer) turns Ctrl-C into Abort
        if isinstance(exc.__context__, KeyboardInterrupt):
            typer.echo("interrupted", err=True)
            return INTERRUPTED
        typer.echo("error: aborted", err=True)
        return FAILED
    except typer.Exit as exc:
        return exc.exit_code
    except EmbedstoreError as exc:
        if _DEBUG:
            raise
        typer.echo(f"error: {exc}", err=True)
        return FAILED
    except click_exception as exc:
        message, hint = exc.format_message(), ""
        if not message.strip():  # no arguments at all: the help was shown
            return exc.exit_code
        if isinstance(exc, usage_error) and not isinstance(exc, typer.BadParameter) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"  # a bad value's message lists what is accepted
        typer.echo(f"error: {message}{hint}", err=True)
        return USAGE if isinstance(exc, usage_error) else FAILED
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen OS error: still one line
        if _DEBUG:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return FAILED
    if status == INTERRUPTED:  # typer turned a Ctrl-C outside a long command into this status
        typer.echo("interrupted", err=True)
    return status if isinstance(status, int) else DONE


def main() -> None:
    """Console entry point: :func:`run` the command line and exit with its status."""
    sys.exit(run())


if __name__ == "__main__":
    main()
