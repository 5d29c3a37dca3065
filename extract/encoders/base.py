"""The one encoder interface: waveforms in, every layer's hidden states out.

An :class:`Encoder` is a ``torch.nn.Module`` that takes a zero-padded batch of mono waveforms at its
native sample rate, ``waveforms`` ``[batch, samples]`` float32 plus ``lengths`` ``[batch]`` (valid
samples per item), and returns an :class:`EncoderOutput` with one hidden-state sequence per layer,
``[batch, frames, width_l]``, and the number of valid frames per item.

Exactness rule: the output for a clip never depends on what else is in the batch. Encoders whose
network is not padding-exact (wav2vec 2.0 / MERT-95M normalise the first conv layer over the whole
time axis with ``GroupNorm``, so trailing zeros change every frame) set ``padding_exact = False``; the
base class then runs the batch as groups of equal-length items, each without padding, and scatters
the results back. Padding-exact encoders get the whole padded batch at once.

Too-short clips: :attr:`Encoder.min_samples` is the fewest valid samples an item may have (1 unless
the network needs more, e.g. the receptive field of a conv stack); :meth:`Encoder.forward` refuses a
shorter item with :class:`~embedstore.errors.ModelError`, and the extraction and fine-tuning paths
check :meth:`Encoder.too_short` first, so such a clip becomes a failure for that encoder, never a crash.

Subclasses implement :meth:`Encoder.encode_batch` and :meth:`Encoder.describe_model`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embedstore.errors import ModelError

from .registry import DTYPE_CHOICES as AUTOCAST_DTYPES


@dataclass
class EncoderOutput:
    """Per-layer hidden states of one batch.

    Attributes:
        hidden_states: one tensor per layer, ``[batch, frames_l, width_l]`` float32; frames past an
            item's valid length are zeros.
        frame_lengths: ``[batch]`` int64, valid frames per item for layers at the encoder's
            ``frame_rate`` (all layers, except for encoders with per-layer rates such as CLAP).
        layer_frame_lengths: optional per-layer ``[batch]`` valid-frame counts, set by encoders whose
            layers run at different frame rates. Read lengths through :meth:`lengths`.
    """

    hidden_states: tuple[torch.Tensor, ...]
    frame_lengths: torch.Tensor
    layer_frame_lengths: tuple[torch.Tensor, ...] | None = None

    @property
    def num_layers(self) -> int:
        """Number of layers in :attr:`hidden_states`."""
        return len(self.hidden_states)

    def lengths(self, layer: int) -> torch.Tensor:
        """Valid frames per item of ``layer``: ``[batch]`` int64."""
        if self.layer_frame_lengths is not None:
            return self.layer_frame_lengths[layer]
        return self.frame_lengths


class Encoder(torch.nn.Module):
    """Base class of every encoder (see the module docstring for the contract).

    Attributes:
        name: registry name (``"mert"``, ``"wav2vec2"``, ...).
        sample_rate: native sample rate in Hz that ``forward`` expects.
        layer_names: one name per layer, in output order.
        layer_widths: feature width of each layer.
        frame_rate: frames per second of audio of the hidden states (for CLAP: of the first layer).
        layer_frame_rates: frames per second of each layer.
        window_seconds: the longest input fed at once; the pipeline cuts longer clips into windows
            of this length.
        autocast_dtype: ``"auto"`` (bfloat16 or float16 autocast on CUDA, float32 on CPU),
            ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        frozen: when True (default) ``forward`` runs under ``torch.inference_mode()``; set False
            to let gradients flow (fine-tuning).
    """

    padding_exact: bool = True

    def __init__(
        self,
        *,
        name: str,
        sample_rate: int,
        layer_names: Sequence[str],
        layer_widths: Sequence[int],
        frame_rate: float,
        window_seconds: float,
        layer_frame_rates: Sequence[float] | None = None,
        autocast_dtype: str = "auto",
    ) -> None:
        super().__init__()
        if len(layer_names) != len(layer_widths):
            raise ValueError("layer_names and layer_widths differ in length")
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise ModelError(
                f"dtype {autocast_dtype!r} is not one of {', '.join(AUTOCAST_DTYPES)}"
            )
        if window_seconds <= 0:
            raise ModelError(f"--window-seconds must be positive, got {window_seconds}")
        self.name = name
        self.sample_rate = int(sample_rate)
        self.layer_names = tuple(layer_names)
        self.layer_widths = tuple(int(w) for w in layer_widths)
        self.frame_rate = float(frame_rate)
        self.layer_frame_rates = tuple(
            float(r) for r in (layer_frame_rates or [frame_rate] * len(self.layer_names))
        )
        self.window_seconds = float(window_seconds)
        self.autocast_dtype = autocast_dtype
        self.frozen = True
        # An empty buffer so that `device` works for weight-free encoders too.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    # ------------------------------------------------------------------ properties
    @property
    def num_layers(self) -> int:
        """Number of layers returned by ``forward``."""
        return len(self.layer_names)

    @property
    def device(self) -> torch.device:
        """The device the encoder's weights (and outputs) live on."""
        return self._device_anchor.device

    @property
    def min_samples(self) -> int:
        """Fewest valid samples per item that :meth:`forward` accepts (1 here; subclasses raise it)."""
        return 1

    def too_short(self, samples: int) -> str | None:
        """Why a clip of ``samples`` (at :attr:`sample_rate`) is refused, or None when it is long enough."""
        need = self.min_samples
        if samples >= need:
            return None
        sr = self.sample_rate
        return (f"too short for {self.name}: {samples} samples ({samples / sr:.3g} s at {sr} Hz), "
                f"needs at least {need} ({need / sr:.3g} s)")

    @property
    def window_samples(self) -> int:
        """``window_seconds`` in samples at ``sample_rate``."""
        return int(round(self.window_seconds * self.sample_rate))

    # ------------------------------------------------------------------ to implement
    def encode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Run the network on one batch.

        Args:
            waveforms: ``[batch, samples]`` float32 on ``self.device``, zeros past each length.
                For ``padding_exact = False`` encoders all lengths are equal to ``samples``.
            lengths: ``[batch]`` int64 valid samples per item (on ``self.device``).

        Returns:
            :class:`EncoderOutput` with ``hidden_states`` ``[batch, frames, width_l]``.
        """
        raise NotImplementedError

    def describe_model(self) -> dict[str, Any]:
        """Encoder-specific, JSON-able metadata merged into :meth:`describe`."""
        return {}

    # ------------------------------------------------------------------ public API
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Hidden states of every layer for a zero-padded batch.

        Args:
            waveforms: ``[batch, samples]`` float32 at ``self.sample_rate`` (numpy is accepted).
            lengths: ``[batch]`` valid samples per item; ``None`` means every item is full length.

        Returns:
            :class:`EncoderOutput`: ``hidden_states`` one ``[batch, frames_l, width_l]`` float32
            tensor per layer (zeros past the valid frames), ``frame_lengths`` ``[batch]``.
        """
        waveforms, lengths = self._check_inputs(waveforms, lengths)
        with torch.inference_mode(self.frozen), self._autocast():
            if self.padding_exact or bool((lengths == lengths[0]).all()):
                if not self.padding_exact:
                    waveforms = waveforms[:, : int(lengths[0])]
                out = self.encode_batch(waveforms, lengths)
            else:
                out = self._encode_grouped(waveforms, lengths)
        return _to_float32(out)

    def describe(self) -> dict[str, Any]:
        """JSON-able description: model, checkpoint, revision, weights hash, preprocessing, windows."""
        info: dict[str, Any] = {
            "model": self.name,
            "encoder_class": type(self).__name__,
            "sample_rate": self.sample_rate,
            "num_layers": self.num_layers,
            "layer_names": list(self.layer_names),
            "layer_widths": list(self.layer_widths),
            "frame_rate": self.frame_rate,
            "layer_frame_rates": list(self.layer_frame_rates),
            "window_seconds": self.window_seconds,
            "autocast_dtype": self.autocast_dtype,
            "batching": "padded batch" if self.padding_exact else "equal-length groups (no padding)",
        }
        info.update(self.describe_model())
        return info

    # ------------------------------------------------------------------ helpers
    def _check_inputs(
        self, waveforms: Any, lengths: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        waveforms = torch.as_tensor(waveforms)
        if waveforms.ndim == 1:
            waveforms = waveforms[None]
        if waveforms.ndim != 2:
            raise ModelError(
                f"{self.name}: waveforms must be [batch, samples], got shape {tuple(waveforms.shape)}"
            )
        batch, total = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
        if lengths.numel() != batch:
            raise ModelError(f"{self.name}: {lengths.numel()} lengths for a batch of {batch}")
        if batch == 0:
            raise ModelError(f"{self.name}: empty batch")
        if bool((lengths <= 0).any()) or bool((lengths > total).any()):
            raise ModelError(
                f"{self.name}: lengths must lie in 1..{total} samples, got {lengths.tolist()}"
            )
        if bool((lengths < self.min_samples).any()):
            raise ModelError(self.too_short(int(lengths.min())))
        padded = bool((lengths < total).any())
        waveforms = waveforms.to(device=self.device, dtype=torch.float32)
        lengths = lengths.to(self.device)
        if padded:  # zero everything past each item's length, so stray padding values never leak in
            valid = torch.arange(total, device=self.device)[None, :] < lengths[:, None]
            waveforms = waveforms * valid
        return waveforms, lengths

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type != "cuda" or self.autocast_dtype == "float32":
            return contextlib.nullcontext()
        if self.autocast_dtype == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = getattr(torch, self.autocast_dtype)
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _encode_grouped(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Run each set of equal-length items as its own unpadded batch, then scatter back."""
        parts: list[tuple[torch.Tensor, EncoderOutput]] = []
        for length in torch.unique(lengths).tolist():
            index = torch.nonzero(lengths == length).flatten()
            parts.append((index, self.encode_batch(waveforms[index, :length], lengths[index])))
        return merge_outputs(parts, batch_size=waveforms.shape[0])


def merge_outputs(
    parts: Iterable[tuple[torch.Tensor, EncoderOutput]], batch_size: int
) -> EncoderOutput:
    """Scatter per-group outputs back into one zero-padded batch.

    Args:
        parts: ``(index [b_g], output of the group)`` pairs covering ``0..batch_size-1`` once.
        batch_size: size of the merged batch.

    Returns:
        :class:`EncoderOutput` with ``hidden_states`` ``[batch_size, max frames, width_l]``.
    """
    parts = list(parts)
    first = parts[0][1]
    num_layers = first.num_layers
    device = first.frame_lengths.device
    states: list[torch.Tensor] = []
    for layer in range(num_layers):
        frames = max(out.hidden_states[layer].shape[1] for _, out in parts)
        ref = first.hidden_states[layer]
        merged = ref.new_zeros((batch_size, frames, ref.shape[2]))
        for index, out in parts:
            h = out.hidden_states[layer]
            merged[index, : h.shape[1]] = h
        states.append(merged)
    frame_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    for index, out in parts:
        frame_lengths[index] = out.frame_lengths
    layer_lengths = None
    if first.layer_frame_lengths is not None:
        layer_lengths = []
        for layer in range(num_layers):
            lens = torch.zeros(batch_size, dtype=torch.long, device=device)
            for index, out in parts:
                lens[index] = out.lengths(layer)
            layer_lengths.append(lens)
        layer_lengths = tuple(layer_lengths)
    return EncoderOutput(tuple(states), frame_lengths, layer_lengths)


def mask_frames(hidden: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Zero the frames of ``hidden`` ``[batch, frames, dim]`` past ``frame_lengths`` ``[batch]``."""
    valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frame_lengths[:, None]
    return hidden * valid[..., None].to(hidden.dtype)


def _to_float32(out: EncoderOutput) -> EncoderOutput:
    return EncoderOutput(
        tuple(h.float() for h in out.hidden_states), out.frame_lengths, out.layer_frame_lengths
    )


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded, restoring the global RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sha256_files(paths: Iterable[Path]) -> dict[str, str]:
    """``{file name: sha256 hex}`` of each file (read in 8 MiB blocks)."""
    digests: dict[str, str] = {}
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 23), b""):
                h.update(block)
        digests[Path(path).name] = h.hexdigest()
    return digests


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over the names and float32 bytes of ``module``'s state dict (stable across runs)."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
