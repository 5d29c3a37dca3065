"""Benchmark helpers of the extraction ceiling: a no-op encoder with a real encoder's shapes, FLOP counts.

* :class:`NoOpEncoder`: the :class:`~embedstore.extract.encoders.base.Encoder` interface with the output
  shapes of a registered encoder (layers x widths x frames at its frame rates, from the registry) and
  no compute, so that running it through ``extract_dataset`` measures everything but the model: scan,
  decode, resample, window, pool, write.
* :func:`count_flops`: FLOPs of one forward pass (``torch.utils.flop_counter.FlopCounterMode``,
  attention through the math kernel so that its matmuls are counted).
* :func:`decode_loop`: the plain decode + resample loop over files, the baseline of the ceiling.

Not part of the package: imported by the scripts of this folder (and by a test, through ``sys.path``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from embedstore.extract.audio import RESAMPLE_QUALITY
from embedstore.extract.encoders.base import Encoder, EncoderOutput
from embedstore.extract.encoders.registry import EncoderSpec, get_spec


class NoOpEncoder(Encoder):
    """An encoder that returns zeros of the shapes a registered encoder returns, computing nothing.

    Layer ``l`` of an input of ``n`` samples has ``ceil(n * rate_l / sample_rate)`` frames (at most
    one more than the real conv encoders, whose receptive field drops the last partial frame) of
    ``width_l`` zeros, made once per shape and reused. On the CPU they are by default zero pages never
    written (``numpy.zeros``, i.e. ``calloc``): the real shapes and strides, but reads are served from
    one physical page, so pooling costs its calls, not CPU memory traffic. That is what pooling costs
    next to a GPU, where the hidden states sit in device memory read at terabytes per second.
    ``dense=True`` writes them (what pooling real-size outputs costs when the model runs on the CPU).

    Args:
        spec: the registry entry whose shapes to mirror (:func:`NoOpEncoder.like`: by name).
        dense: written zeros on the CPU too.
    """

    def __init__(self, spec: EncoderSpec, dense: bool = False):
        super().__init__(
            name=spec.name, sample_rate=spec.sample_rate, layer_names=[f"layer_{i:02d}" for i in range(spec.num_layers)],
            layer_widths=spec.layer_widths, frame_rate=spec.frame_rate, window_seconds=spec.window_seconds,
            layer_frame_rates=spec.layer_frame_rates,
        )
        self.dense = dense
        self._zeros: dict[tuple[int, int, int], torch.Tensor] = {}

    @classmethod
    def like(cls, name: str, dense: bool = False) -> NoOpEncoder:
        """The no-op twin of registered encoder ``name``."""
        return cls(get_spec(name), dense)

    def frames(self, samples: int, layer: int) -> int:
        """Frames of ``layer`` for an input of ``samples``."""
        return max(1, math.ceil(samples * self.layer_frame_rates[layer] / self.sample_rate - 1e-9))

    def encode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """``[batch, frames_l, width_l]`` zeros per layer; valid frames from ``lengths``."""
        batch, samples = waveforms.shape
        states, valid = [], []
        for layer, width in enumerate(self.layer_widths):
            shape = (batch, self.frames(samples, layer), width)
            if shape not in self._zeros:
                lazy = self.device.type == "cpu" and not self.dense
                self._zeros[shape] = (torch.from_numpy(np.zeros(shape, dtype=np.float32)) if lazy
                                      else torch.zeros(shape, device=self.device))
            states.append(self._zeros[shape])
            valid.append(torch.tensor([self.frames(int(n), layer) for n in lengths.tolist()], device=self.device))
        return EncoderOutput(tuple(states), valid[0], tuple(valid))

    def describe_model(self) -> dict:
        """Says what it is: no weights, no compute."""
        return {"checkpoint": None, "weights": "none (no-op benchmark encoder)"}


def count_flops(encoder: Encoder, seconds: float) -> int:
    """FLOPs (2 per multiply-add) of one forward pass of ``encoder`` over ``seconds`` of audio, batch 1.

    Counted by ``FlopCounterMode`` (matmuls, convolutions, attention); scaled-dot-product attention runs
    through the math kernel, whose matmuls the counter sees on every device. Element-wise work
    (norms, activations, softmax) is not counted: it is memory-bound, not FLOP-bound. Weight
    parametrizations (wav2vec 2.0's weight-normed positional conv, which the counter's module hooks
    cannot follow) are folded into plain weights first: ``encoder`` is changed in place, its outputs not.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.utils import parametrize
    from torch.utils.flop_counter import FlopCounterMode

    for module in encoder.modules():
        for name in list(getattr(module, "parametrizations", {})):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)

    wave = torch.randn(1, int(round(seconds * encoder.sample_rate)), device=encoder.device) * 0.1
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        encoder(wave)
    return int(counter.get_total_flops())


def decode_loop(paths: Sequence[Path], rates: Sequence[int], quality: str = RESAMPLE_QUALITY) -> float:
    """The plain baseline: read each file once (``soundfile.read``), mix to mono, resample it to every
    rate in ``rates`` (``soxr.resample`` at ``quality``); returns the loop's seconds."""
    start = time.perf_counter()
    for path in paths:
        audio, native = sf.read(path, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
        for rate in rates:
            if rate != native:
                soxr.resample(mono, native, rate, quality=quality)
    return time.perf_counter() - start
