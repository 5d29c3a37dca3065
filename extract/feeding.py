"""How many decoding workers keep an encoder's device busy: the default of ``--workers``.

* On the CPU the model and decoding share the cores: ``min(4, cpus - 1)`` workers (the main process
  runs the model), at least one. Decoding is never the slow side there (the model is busy more than
  99 % of the time, ``benchmarks/README.md``).
* On a GPU decoding is the slow side. The device runs an encoder at about
  ``MFU x matmul FLOP/s / FLOPs per audio-second`` audio-seconds per second: the matmul throughput is
  measured once per device at the autocast dtype (:func:`device_matmul_flops`), :data:`MFU` is the
  fraction of it a whole forward pass reaches (an assumption: 40 %, typical of transformer inference at
  batch sizes of 8-32 windows), and the FLOPs are the registry's
  (:attr:`~embedstore.extract.encoders.registry.EncoderSpec.flops_per_second`). Several encoders in one
  run see every clip, so their FLOPs add up. One core decodes and resamples about
  :data:`DECODE_SECONDS_PER_CORE` audio-seconds per second, so the device needs
  ``ceil(device rate / DECODE_SECONDS_PER_CORE)`` workers; the default is that, capped at ``cpus - 1``.
  When the workers fall short, :func:`warn_if_underfed` says so once.

Encoders without FLOPs in the registry (the MFCC baseline, unregistered names) follow the CPU rule.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence

import torch

from embedstore.extract.encoders import Encoder
from embedstore.extract.encoders.registry import ENCODERS

__all__ = [
    "CPU_WORKERS",
    "DECODE_SECONDS_PER_CORE",
    "MFU",
    "UnderfedDeviceWarning",
    "default_workers",
    "device_matmul_flops",
    "device_rate",
    "matmul_flops_per_second",
    "warn_if_underfed",
    "workers_needed",
]

#: Assumed model FLOPs utilisation: the fraction of the device's matmul throughput a forward pass reaches.
MFU = 0.4
#: Audio-seconds per CPU-second one decoding worker delivers: decode, resample (soxr HQ) and hand over
#: through shared memory. Measured by ``benchmarks/bench_extract.py --ceiling`` on GTZAN's 22.05 kHz WAV
#: at 24 kHz: 3600 (a plain decode loop does 5800; 48 kHz and compressed formats cost more).
DECODE_SECONDS_PER_CORE = 3500.0
#: Most decoding workers on the CPU, where they compete with the model for the cores.
CPU_WORKERS = 4


class UnderfedDeviceWarning(RuntimeWarning):
    """The decoding workers cannot keep the encoder's device busy."""


def matmul_flops_per_second(device: str | torch.device, dtype: torch.dtype, size: int = 4096,
                            repeats: int = 5) -> float:
    """Measured dense matmul throughput (FLOP/s) of ``device`` at ``dtype``: the best of ``repeats``
    timings of ``size x size`` products (``2 size^3`` FLOPs each; 10 per timing on CUDA), after a warm-up."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    calls = 10 if device.type == "cuda" else 1

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * calls / best


_DEVICE_FLOPS: dict[str, float] = {}


def device_matmul_flops(device: torch.device) -> float:
    """Matmul FLOP/s of a CUDA ``device`` at its autocast dtype (bf16 where supported, else fp16),
    measured on first use and cached per device."""
    key = str(device)
    if key not in _DEVICE_FLOPS:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        _DEVICE_FLOPS[key] = matmul_flops_per_second(device, dtype)
    return _DEVICE_FLOPS[key]


def _flops_per_second(encoders: Sequence[Encoder]) -> float:
    """FLOPs per audio-second of all ``encoders`` together (registry figures; 0 when one is unknown)."""
    figures = [ENCODERS[e.name].flops_per_second if e.name in ENCODERS else 0.0 for e in encoders]
    return sum(figures) if figures and all(figures) else 0.0


def device_rate(encoders: Sequence[Encoder], device_flops: float | None = None) -> float | None:
    """Audio-seconds per second the (CUDA) device of ``encoders`` runs them all at (``MFU x matmul
    FLOP/s / FLOPs per audio-second``), or None on the CPU or when an encoder's FLOPs are unknown.
    ``device_flops``: the device's matmul FLOP/s (default: measured, :func:`device_matmul_flops`)."""
    if not encoders or encoders[0].device.type != "cuda":
        return None
    flops = _flops_per_second(encoders)
    if not flops:
        return None
    device_flops = device_matmul_flops(encoders[0].device) if device_flops is None else device_flops
    return MFU * device_flops / flops


def workers_needed(encoders: Sequence[Encoder], device_flops: float | None = None) -> int | None:
    """Decoding workers that keep the device busy: ``ceil(device_rate / DECODE_SECONDS_PER_CORE)``, at
    least 1; None where :func:`device_rate` is None."""
    rate = device_rate(encoders, device_flops)
    return None if rate is None else _workers_for(rate)


def _workers_for(rate: float) -> int:
    return max(1, math.ceil(rate / DECODE_SECONDS_PER_CORE))


def default_workers(encoders: Sequence[Encoder] = (), cpus: int | None = None,
                    device_flops: float | None = None) -> int:
    """Decoding worker processes for ``encoders`` on a machine of ``cpus`` cores (default: this one).

    Returns:
        ``min(4, cpus - 1)`` on the CPU (and with no encoders); on CUDA :func:`workers_needed`, capped
        at ``cpus - 1``; at least 1.
    """
    spare = (cpus or os.cpu_count() or 2) - 1
    needed = workers_needed(encoders, device_flops)
    return max(1, min(spare, CPU_WORKERS if needed is None else needed))


_WARNED: set[tuple] = set()


def warn_if_underfed(encoders: Sequence[Encoder], workers: int, cpus: int | None = None,
                     device_flops: float | None = None) -> str | None:
    """Warn (:class:`UnderfedDeviceWarning`, once per process and situation) when ``workers`` decoding
    processes cannot keep the CUDA device of ``encoders`` busy; returns the message, or None when they can."""
    rate = device_rate(encoders, device_flops)
    if rate is None or workers >= _workers_for(rate):
        return None
    needed = _workers_for(rate)
    cpus = cpus or os.cpu_count() or 2
    names = " + ".join(e.name for e in encoders)
    why = (f"this machine has {cpus} CPU cores, so extraction will wait on decoding" if cpus - 1 < needed
           else f"--workers {workers} leaves it waiting on decoding")
    message = (f"{encoders[0].device} can run {names} at about {rate:.0f} audio-s/s, which needs about {needed} "
               f"decoding workers; {why}")
    key = (str(encoders[0].device), names, workers, cpus)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UnderfedDeviceWarning, stacklevel=2)
    return message
