"""The encoder registry: name -> :class:`EncoderSpec`, and :func:`load_encoder`.

Adding an encoder = one module with a ``load(request: LoadRequest) -> Encoder`` function plus one
entry in :data:`ENCODERS`. This module imports neither torch nor transformers (encoder modules are
imported when loaded), so listing encoders stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from embedstore.errors import ModelError, did_you_mean, not_one_of

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
    """The spec of ``name``; :class:`ModelError` listing the known names otherwise."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}{did_you_mean(name, ENCODERS)}; known models: {', '.join(ENCODERS)} "
            "(see `embedstore models`)"
        ) from None


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
    """Build encoder ``name`` on ``device``, in eval mode.

    Args:
        name: registry name (see :func:`list_encoders`).
        checkpoint: hub id or local directory / weights file; None means the default checkpoint.
        weights: ``"pretrained"`` or ``"random"`` (the checkpoint's architecture re-initialised with
            ``seed``; a built-in config of the default checkpoint is used when it is not on disk).
        device: torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: autocast on CUDA: ``"auto"`` (bfloat16 where supported, else float16), ``"float16"``,
            ``"bfloat16"`` or ``"float32"``; CPU always runs float32.
        seed: seed of the random initialisation.
        trust_remote_code: let MERT load the checkpoint's own model code (off by default).
        window_seconds: longest input fed at once (default per encoder, e.g. 10 s).

    Returns:
        The :class:`~embedstore.extract.encoders.base.Encoder`.

    Raises:
        ModelError: unknown name or option, unavailable checkpoint or device.
    """
    spec = get_spec(name)
    if weights not in WEIGHTS_CHOICES:
        raise ModelError(not_one_of("--weights", weights, WEIGHTS_CHOICES, "weights"))
    if dtype not in DTYPE_CHOICES:
        raise ModelError(not_one_of("--dtype", dtype, DTYPE_CHOICES, "dtype"))
    if window_seconds is not None and window_seconds <= 0:
        raise ModelError(f"--window-seconds must be positive, got {window_seconds}")
    torch_device = _device(device)
    from .base import LoadRequest

    request = LoadRequest(
        name=spec.name,
        checkpoint=str(checkpoint) if checkpoint is not None else spec.default_checkpoint,
        weights=weights,
        seed=int(seed),
        trust_remote_code=trust_remote_code,
        window_seconds=window_seconds,
        autocast_dtype=dtype,
    )
    encoder = import_module(f"{__package__}.{spec.module}").load(request)
    return encoder.to(torch_device).eval()


def _device(device: str) -> Any:
    import torch

    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"--device {device!r} is not a torch device ({exc})") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device!r}: CUDA is not available on this machine")
    if torch_device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {device!r}: MPS is not available on this machine")
    return torch_device


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
