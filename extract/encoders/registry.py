"""The encoder registry: name -> :class:`EncoderSpec`; :class:`EncoderRequest`, the one description of
which encoder to load; and :func:`load_encoder`.

Adding an encoder = one module with a ``load(request: EncoderRequest) -> Encoder`` function plus one
entry in :data:`ENCODERS`. This module imports neither torch nor transformers (encoder modules are
imported when loaded), so listing encoders and checking a request stay fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedstore.errors import EmbedstoreError, ModelError, did_you_mean, not_one_of

if TYPE_CHECKING:
    from .base import Encoder

WEIGHTS_CHOICES = ("pretrained", "random")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class EncoderSpec:
    """What ``embedstore models`` lists about an encoder (values of the default checkpoint).

    Attributes:
        name: registry name.
        default_checkpoint: hub id used when no checkpoint is given (None: no weights).
        sample_rate: native sample rate in Hz.
        num_layers: number of layers ``forward`` returns.
        width: feature width of the layers (CLAP: the projection; its stages vary).
        frame_rate: hidden-state frames per second of audio (CLAP: its first stage).
        window_seconds: default longest input fed at once.
        description: one line.
        module: module (relative to this package) whose ``load(request)`` builds the encoder.
        checkpoints: other known checkpoints the encoder accepts.
        flops_per_second: FLOPs (2 per multiply-add) of one forward pass per second of audio, fed in
            windows of ``window_seconds`` (counted with ``torch.utils.flop_counter`` on the full-size
            architecture, ``benchmarks/bench_extract.py --count-flops``); 0 for no neural network.
        layer_shapes: ``(width, frames per second)`` of each layer where layers differ (CLAP);
            empty when every layer is ``width`` wide at ``frame_rate``.
    """

    name: str
    default_checkpoint: str | None
    sample_rate: int
    num_layers: int
    width: int
    frame_rate: float
    window_seconds: float
    description: str
    module: str
    checkpoints: tuple[str, ...] = ()
    flops_per_second: float = 0.0
    layer_shapes: tuple[tuple[int, float], ...] = ()

    @property
    def layer_widths(self) -> tuple[int, ...]:
        """Width of each layer's hidden states."""
        return tuple(w for w, _ in self.layer_shapes) or (self.width,) * self.num_layers

    @property
    def layer_frame_rates(self) -> tuple[float, ...]:
        """Frames per second of audio of each layer."""
        return tuple(r for _, r in self.layer_shapes) or (self.frame_rate,) * self.num_layers

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (without the module path)."""
        out = asdict(self)
        out.pop("module")
        out["checkpoints"] = list(self.checkpoints)
        out["layer_shapes"] = [list(shape) for shape in self.layer_shapes]
        return out


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="mert", default_checkpoint="m-a-p/MERT-v1-95M", sample_rate=24_000, num_layers=13,
            width=768, frame_rate=75.0, window_seconds=10.0, module="mert", flops_per_second=22.92e9,
            description="MERT-v1 95M music model (HuBERT-style, no remote code); conv features + 12 layers",
        ),
        EncoderSpec(
            name="mert-330m", default_checkpoint="m-a-p/MERT-v1-330M", sample_rate=24_000,
            num_layers=25, width=1024, frame_rate=75.0, window_seconds=10.0, module="mert", flops_per_second=59.45e9,
            description="MERT-v1 330M music model (HuBERT-style, no remote code); conv features + 24 layers",
        ),
        EncoderSpec(
            name="wav2vec2", default_checkpoint="facebook/wav2vec2-base", sample_rate=16_000,
            num_layers=13, width=768, frame_rate=50.0, window_seconds=10.0, module="wav2vec2", flops_per_second=14.81e9,
            description="wav2vec 2.0 base speech model; conv features + 12 layers",
        ),
        EncoderSpec(
            name="clap", default_checkpoint="laion/larger_clap_music", sample_rate=48_000,
            num_layers=6, width=512, frame_rate=25.6, window_seconds=10.0, module="clap", flops_per_second=3.07e9,
            checkpoints=("laion/clap-htsat-unfused",),
            layer_shapes=((128, 25.6), (128, 25.6), (256, 12.8), (512, 6.4), (1024, 3.2), (512, 0.1)),
            description="CLAP audio tower: patch embed + 4 HTSAT stages (128-1024 wide), "
                        "then the 512-d projection",
        ),
        EncoderSpec(
            name="mfcc", default_checkpoint=None, sample_rate=22_050, num_layers=5, width=65,
            frame_rate=22_050 / 512, window_seconds=600.0, module="mfcc",
            description="weight-free baseline: mfcc 20, delta 20, chroma 12, spectral 13, combined 65",
        ),
    )
}


def list_encoders() -> list[EncoderSpec]:
    """Every registered encoder, in registry order."""
    return list(ENCODERS.values())


def get_spec(name: str) -> EncoderSpec:
    """The spec of ``name`` (``hear:MODULE``: :func:`hear_spec`); :class:`ModelError` listing the known
    names otherwise."""
    if name.startswith(HEAR_PREFIX):
        return hear_spec(name)
    try:
        return ENCODERS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}{did_you_mean(name, ENCODERS)}; known models: {', '.join(ENCODERS)} "
            "(see `embedstore models`)"
        ) from None


HEAR_PREFIX = "hear:"


def hear_spec(name: str) -> EncoderSpec:
    """The spec of ``hear:MODULE``, any installed module implementing the HEAR 2021 API (see
    :mod:`.hear`). Checks that MODULE is installed without importing it: its code runs only when the
    encoder is loaded. Rate, widths and frame rate are known only then (0 here).

    Raises:
        ModelError: not a module name, or no such installed module (with the closest installed one).
    """
    import importlib.util
    import pkgutil

    module = name[len(HEAR_PREFIX):]
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ModelError(f"--model {name!r}: use hear:MODULE with an installed Python module, e.g. hear:hearbaseline")
    top = module.partition(".")[0]
    if importlib.util.find_spec(top) is None:
        installed = {m.name for m in pkgutil.iter_modules()}
        raise ModelError(f"--model {name}: no installed Python module {top!r}{did_you_mean(top, installed)}; "
                         "install the package that implements the HEAR API first")
    return EncoderSpec(
        name=name, default_checkpoint=None, sample_rate=0, num_layers=2, width=0, frame_rate=0.0,
        window_seconds=600.0, module="hear",
        description=f"HEAR 2021 API module {module!r}: timestamp embeddings, then the scene embedding",
    )


@dataclass(frozen=True)
class EncoderRequest:
    """Which encoder to load, and under which store key: what ``--model``, ``--checkpoint``,
    ``--weights``, ``--dtype``, ``--seed``, ``--trust-remote-code``, ``--window-seconds`` and ``--as``
    say. Checked when built (no torch needed); :meth:`load` builds the encoder on a device.

    The device is not part of the request: the same request is loaded on the CPU by the driver and on
    each worker's GPU by the Ray engine, and must give the same model everywhere.

    Attributes:
        name: registry name of the encoder (``embedstore models``).
        checkpoint: hub id or local directory / weights file; None: the encoder's default checkpoint
            (filled in by :meth:`load` before the encoder module sees the request).
        weights: ``"pretrained"`` or ``"random"`` (same architecture, re-initialised with ``seed``).
        dtype: autocast on CUDA: ``"auto"`` (bfloat16 where supported, else float16), ``"float16"``,
            ``"bfloat16"`` or ``"float32"``; CPU always runs float32.
        seed: seed of the random initialisation.
        trust_remote_code: allow the checkpoint's own Python code (MERT only; off by default).
        window_seconds: longest input fed at once; None: the encoder's default (e.g. 10 s).
        key: store key of the extracted model entry (``--as``); None: :attr:`store_key`'s default.
    """

    name: str
    checkpoint: str | None = None
    weights: str = "pretrained"
    dtype: str = "auto"
    seed: int = 0
    trust_remote_code: bool = False
    window_seconds: float | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        get_spec(self.name)
        if self.weights not in WEIGHTS_CHOICES:
            raise ModelError(not_one_of("--weights", self.weights, WEIGHTS_CHOICES, "weights"))
        if self.dtype not in DTYPE_CHOICES:
            raise ModelError(not_one_of("--dtype", self.dtype, DTYPE_CHOICES, "dtype"))
        if self.window_seconds is not None and not self.window_seconds > 0:
            raise ModelError(f"--window-seconds must be positive, got {self.window_seconds}")
        if isinstance(self.checkpoint, Path):
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def store_key(self) -> str:
        """The model entry's key in a store: :attr:`key` if given, else the encoder name (with
        ``+random`` for random weights; ``hear:MODULE`` becomes ``hear-MODULE``, since a key is a
        folder name of a Zarr store and ``:`` is not allowed in Windows paths)."""
        if self.key:
            return self.key
        name = self.name.replace(":", "-")
        return f"{name}+random" if self.weights == "random" else name

    @classmethod
    def coerce(cls, value: EncoderRequest | str, **defaults: Any) -> EncoderRequest:
        """``value`` itself if it is a request, else the request for encoder name ``value`` with ``defaults``."""
        return value if isinstance(value, cls) else cls(str(value), **defaults)

    @classmethod
    def for_models(cls, names: Sequence[str], *, checkpoint: str | None = None, key: str | None = None,
                   **options: Any) -> list[EncoderRequest]:
        """One request per encoder name, sharing ``options`` (weights, dtype, seed, ...): what
        ``embedstore extract -m a -m b`` asks for. ``checkpoint`` and ``key`` name one model's
        weights and entry, so they are refused with several names (a one-line :class:`EmbedstoreError`)."""
        if len(names) > 1 and (checkpoint or key):
            raise EmbedstoreError("--checkpoint and --as apply to a single --model; run one command per model")
        return [cls(name, checkpoint, key=key, **options) for name in names]

    def load(self, device: Any = "cpu") -> Encoder:
        """Build the encoder on ``device`` (a ``--device`` value: ``auto``, ``cpu``, ``cuda[:N]``,
        ``mps``; see :func:`~embedstore.devices.resolve_device`), in eval mode.

        Raises:
            ModelError: unavailable checkpoint or device.
        """
        from embedstore.devices import resolve_device

        torch_device = resolve_device(device)
        spec = get_spec(self.name)
        resolved = self if self.checkpoint is not None else replace(self, checkpoint=spec.default_checkpoint)
        encoder = import_module(f"{__package__}.{spec.module}").load(resolved)
        return encoder.to(torch_device).eval()


def load_encoder(
    name: str,
    checkpoint: str | None = None,
    *,
    weights: str = "pretrained",
    device: str = "cpu",
    dtype: str = "auto",
    seed: int = 0,
    trust_remote_code: bool = False,
    window_seconds: float | None = None,
) -> Encoder:
    """Build encoder ``name`` on ``device``, in eval mode: ``EncoderRequest(...).load(device)``.

    Args:
        name: registry name (see :func:`list_encoders`).
        checkpoint, weights, dtype, seed, trust_remote_code, window_seconds: see :class:`EncoderRequest`
            (``weights="random"`` uses a built-in config of the default checkpoint when it is not on disk).
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` (:func:`~embedstore.devices.resolve_device`).

    Returns:
        The :class:`~embedstore.extract.encoders.base.Encoder`.

    Raises:
        ModelError: unknown name or option, unavailable checkpoint or device.
    """
    request = EncoderRequest(name, checkpoint, weights=weights, dtype=dtype, seed=seed,
                             trust_remote_code=trust_remote_code, window_seconds=window_seconds)
    return request.load(device)


def format_encoder_table(specs: list[EncoderSpec] | None = None) -> str:
    """Plain-text table of the encoders for ``embedstore models``."""
    specs = list_encoders() if specs is None else specs
    header = ("name", "default checkpoint", "rate", "layers", "width", "frames/s", "window", "GFLOP/audio-s",
              "description")
    rows = [
        (
            s.name,
            s.default_checkpoint or "-",
            f"{s.sample_rate / 1000:g} kHz",
            str(s.num_layers),
            str(s.width),
            f"{s.frame_rate:.4g}",
            f"{s.window_seconds:g} s",
            f"{s.flops_per_second / 1e9:.1f}" if s.flops_per_second else "-",
            s.description,
        )
        for s in specs
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    return "\n".join(lines)
