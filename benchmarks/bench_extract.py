"""Extraction benchmark: embedstore's pipeline against plain loops, and against the physical limit.

Four modes, each measured in one run (best of ``--repeats`` timings where it says so):

* default: a model (full-size architecture, random weights: the timing does not depend on the weights)
  over generated 30 s clips, every layer mean-pooled. Baseline: the per-file loop a user writes first
  (load, resample, one forward pass per clip, one ``.npy`` per clip). Printed: wall time and
  audio-seconds per second of both, how busy the model was in the pipeline, the decoding workers used,
  the GPU's utilisation (CUDA), and the distance to the FLOP bound: the encoder's FLOPs per
  audio-second (registry) x audio length / the device's matmul throughput measured in the same run
  at the compute dtype.
* ``--ceiling``: the pipeline with a no-op encoder (the real encoder's output shapes, no compute) over
  real audio (the 100 GTZAN excerpts of ``../shared/data``), for each ``--workers`` count, against a
  plain loop that only decodes and resamples the same files to the same rates; then the same with the
  three encoders wav2vec2 + MERT + CLAP in one run, with the number of file decodes counted.
* ``--resample``: the cost of each soxr quality preset on the same files, 22.05 kHz to 16/24/48 kHz.
* ``--count-flops``: FLOPs per audio-second of each registered network (full size, random weights,
  1 s and 10 s inputs), the figures the registry records.

    python benchmarks/bench_extract.py --clips 50 --seconds 30     # a model on the CPU
    python benchmarks/bench_extract.py --device cuda               # every GPU figure
    python benchmarks/bench_extract.py --ceiling --workers 1,2     # the pipeline without the model
    python benchmarks/bench_extract.py --resample
    python benchmarks/bench_extract.py --count-flops

Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import soundfile as sf
import torch

from embedstore.devices import resolve_device
from embedstore.extract import audio as audio_module
from embedstore.extract.audio import load_audio
from embedstore.extract.datasets import discover_dataset
from embedstore.extract.encoders import list_encoders, load_encoder
from embedstore.extract.encoders.registry import get_spec
from embedstore.extract.feeding import default_workers, matmul_flops_per_second
from embedstore.extract.pipeline import ExtractOptions, extract_dataset
from embedstore.extract.synthetic import RECIPES, make_gtzan_like

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import NoOpEncoder, count_flops, decode_loop

REAL_EXCERPTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gtzan-excerpts"
PRESETS = ("QQ", "LQ", "MQ", "HQ", "VHQ")


def per_file_loop(dataset, encoder, out_dir: Path) -> float:
    """The baseline: one clip at a time, whole clip in one forward pass, one .npy per clip."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for track in dataset.tracks:
        wave = load_audio(dataset.root / track.path, encoder.sample_rate)
        with torch.inference_mode():
            out = encoder(torch.from_numpy(wave[None]).to(encoder.device))
        pooled = np.stack([h[0].float().mean(dim=0).cpu().numpy() for h in out.hidden_states])
        np.save(out_dir / f"{track.id}.npy", pooled)
    return time.perf_counter() - start


def replicated_excerpts(source: Path, out: Path, copies: int) -> Path:
    """A GTZAN folder of ``copies`` symbolic links to each real excerpt (distinct names, same audio)."""
    for path in sorted(source.rglob("*.wav")):
        genre, number = path.stem.split(".")
        (out / "genres_original" / genre).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            (out / "genres_original" / genre / f"{genre}.{k * 100 + int(number):05d}.wav").symlink_to(path)
    return out


def decode_counter() -> multiprocessing.Value:
    """Count file decodes, in this process and in forked decoding workers: a counter in shared memory,
    incremented by every decoding pass over a file (``audio._mono_blocks``)."""
    counter = multiprocessing.Value("i", 0)
    original = audio_module._mono_blocks

    def counted(*args, **kwargs):
        with counter.get_lock():
            counter.value += 1
        yield from original(*args, **kwargs)

    audio_module._mono_blocks = counted
    return counter


@dataclass
class Timing:
    """Wall seconds of a run, and the CPU seconds of this process and of its (reaped) child processes."""

    wall: float
    main_cpu: float
    workers_cpu: float


def timed(run) -> Timing:
    """Time ``run()``: wall clock, and CPU time of this process and of the children it reaped meanwhile."""
    self0, children0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    self1, children1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = lambda a, b: (b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)
    return Timing(wall, cpu(self0, self1), cpu(children0, children1))


def best_of(repeats: int, run) -> Timing:
    """The fastest (wall clock) of ``repeats`` timings of ``run()``."""
    return min((timed(run) for _ in range(repeats)), key=lambda t: t.wall)


def pipeline_run(folder: Path, names: list[str], workers: int, batch_size: int, device: str, dense: bool):
    """A function running scan + ``extract_dataset`` with no-op encoders ``names`` into a fresh store."""
    encoders = [(name, NoOpEncoder.like(name, dense).to(device)) for name in names]

    def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            dataset = discover_dataset(folder, "gtzan", split="random")
            options = ExtractOptions(batch_size=batch_size, workers=workers, progress=False)
            extract_dataset(dataset, encoders, Path(tmp) / "ceiling.zarr", options)

    return run


def ceiling_row(label: str, workers: int, seconds: float, pipe: Timing, loop: Timing, **extra) -> dict:
    """One line of the ceiling table: throughputs, ratio per worker, CPU milliseconds per audio-second."""
    per_worker = (seconds / pipe.wall) / max(workers, 1) / (seconds / loop.wall)
    return {"models": label, "workers": workers, "pipeline_audio_s_per_s": round(seconds / pipe.wall),
            "loop_audio_s_per_s": round(seconds / loop.wall), "per_worker_ratio": round(per_worker, 2),
            "loop_cpu_ms_per_audio_s": round(1000 * loop.main_cpu / seconds, 3),
            "main_cpu_ms_per_audio_s": round(1000 * pipe.main_cpu / seconds, 3),
            "workers_cpu_ms_per_audio_s": round(1000 * pipe.workers_cpu / seconds, 3), **extra}


def run_ceiling(args: argparse.Namespace, device: str) -> dict:
    """The no-op pipeline for each worker count and 1 vs 3 models, against the plain decode loop.

    The main process runs torch on one thread: next to a GPU it has no tensor work of its own, and on
    the CPU more threads would only contend with the decoding workers for the cores."""
    torch.set_num_threads(1)
    source = args.audio or REAL_EXCERPTS
    paths = sorted(source.rglob("*.wav"))
    seconds = sum(sf.info(p).duration for p in paths) * args.copies
    rate = get_spec(args.model).sample_rate
    three = ["wav2vec2", "mert", "clap"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = replicated_excerpts(source, Path(tmp), args.copies)
        files = sorted(folder.rglob("*.wav"))
        discover_dataset(folder, "gtzan", split="random")  # warm-up: the scan's first imports, untimed
        loop_1 = best_of(args.repeats, lambda: decode_loop(files, [rate]))
        for workers in args.workers:
            pipe = best_of(args.repeats, pipeline_run(folder, [args.model], workers, args.batch_size, device, False))
            rows.append(ceiling_row(args.model, workers, seconds, pipe, loop_1))
        if device == "cpu":
            pipe = best_of(args.repeats, pipeline_run(folder, [args.model], 1, args.batch_size, device, True))
            rows.append(ceiling_row(f"{args.model} (dense outputs)", 1, seconds, pipe, loop_1))
        loop_3 = best_of(args.repeats, lambda: decode_loop(files, sorted({get_spec(n).sample_rate for n in three})))
        counter = decode_counter()
        for names, loop in (([args.model], loop_1), (three, loop_3)):
            counter.value = 0
            pipe = best_of(args.repeats, pipeline_run(folder, names, 1, args.batch_size, device, False))
            rows.append(ceiling_row(" + ".join(names), 1, seconds, pipe, loop,
                                    decodes_per_file=counter.value / args.repeats / len(files)))
    return {"mode": "ceiling", "audio": str(source), "files": len(paths) * args.copies,
            "audio_seconds": round(seconds, 1), "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
            "repeats": args.repeats, "batch_size": args.batch_size, "device": device, "rows": rows}


def run_resample(args: argparse.Namespace) -> dict:
    """Audio-seconds per CPU-second of the plain decode loop at each soxr preset and target rate (CPU
    time, the best of ``--repeats``: what one core does, whatever else shares the machine)."""
    source = args.audio or REAL_EXCERPTS
    paths = sorted(source.rglob("*.wav"))
    seconds = sum(sf.info(p).duration for p in paths)
    native = sf.info(paths[0]).samplerate

    def rate(rates: list[int], preset: str = "HQ") -> float:
        return round(seconds / min(timed(lambda: decode_loop(paths, rates, preset)).main_cpu
                                   for _ in range(args.repeats)))

    table = {"decode only": rate([native])}
    for target in (16_000, 24_000, 48_000):
        table.update({f"{native}->{target} {preset}": rate([target], preset) for preset in PRESETS})
    return {"mode": "resample", "audio_seconds": round(seconds, 1), "repeats": args.repeats,
            "load_average": round(os.getloadavg()[0], 2), "audio_s_per_cpu_s": table}


def run_count_flops(args: argparse.Namespace) -> dict:
    """FLOPs per audio-second of every registered network for 1 s and 10 s inputs (full size, random)."""
    out = {}
    for spec in list_encoders():
        if spec.default_checkpoint is None:
            continue
        encoder = load_encoder(spec.name, weights="random")
        out[spec.name] = {f"{s:g} s": count_flops(encoder, s) / s for s in (1.0, 10.0)}
        print(spec.name, {k: f"{v / 1e9:.2f} GFLOP/audio-s" for k, v in out[spec.name].items()}, flush=True)
    return {"mode": "count-flops", "flops_per_audio_second": out}


class GpuUtilisation:
    """Samples the GPU's utilisation (percent of time a kernel ran) while the block runs: every 0.1 s
    through ``torch.cuda.utilization`` (NVML) in a thread, else from one ``nvidia-smi -lms 100`` process;
    :attr:`mean` is None on the CPU or when neither answers."""

    def __init__(self, device: str):
        self.device, self.samples, self._stop = torch.device(device), [], threading.Event()
        self._thread = threading.Thread(target=self._poll_nvml, daemon=True)
        self._smi: subprocess.Popen | None = None

    def _poll_nvml(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(float(torch.cuda.utilization(self.device)))

    def _read_smi(self) -> None:
        for line in self._smi.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __enter__(self) -> Self:
        if self.device.type != "cuda":
            return self
        try:
            torch.cuda.utilization(self.device)
        except (ImportError, RuntimeError, OSError):  # no NVML bindings: nvidia-smi, if present
            if shutil.which("nvidia-smi"):
                self._smi = subprocess.Popen(
                    ["nvidia-smi", f"--id={self.device.index or 0}", "--query-gpu=utilization.gpu",
                     "--format=csv,noheader,nounits", "-lms", "100"], stdout=subprocess.PIPE, text=True)
                self._thread = threading.Thread(target=self._read_smi, daemon=True)
                self._thread.start()
            return self
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
            self._smi.wait()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        """Mean utilisation in percent over the samples, or None."""
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def compute_dtype(encoder) -> torch.dtype:
    """The dtype the encoder's matmuls run at: its autocast dtype on CUDA, float32 on the CPU."""
    if encoder.device.type != "cuda" or encoder.autocast_dtype == "float32":
        return torch.float32
    if encoder.autocast_dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, encoder.autocast_dtype)


def run_model(args: argparse.Namespace, device: str) -> dict:
    """The model through the pipeline and through the per-file loop, with the FLOP bound of both."""
    batch_size = args.batch_size or (32 if device.startswith("cuda") else 4)
    weights = "pretrained" if args.checkpoint or args.model == "mfcc" else "random"
    encoder = load_encoder(args.model, args.checkpoint, weights=weights, device=device, dtype=args.dtype)
    workers = args.workers[0] if args.workers else default_workers([encoder])
    flops = get_spec(args.model).flops_per_second if not args.checkpoint else 0.0
    if not flops and args.model != "mfcc":
        flops = count_flops(encoder, encoder.window_seconds) / encoder.window_seconds
    dtype = compute_dtype(encoder)
    size = 8192 if device.startswith("cuda") else 2048
    matmul = matmul_flops_per_second(device, dtype, size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        genres = tuple(RECIPES)
        make_gtzan_like(tmp / "audio", n_per_class=-(-args.clips // len(genres)), genres=genres,
                        seconds=args.seconds, broken=False)
        dataset = discover_dataset(tmp / "audio", "gtzan", split="random")
        dataset.tracks = dataset.tracks[: args.clips]
        audio_seconds = args.clips * args.seconds
        with torch.inference_mode():  # warm-up (allocator, kernels) outside both timings
            encoder(torch.zeros(1, encoder.sample_rate, device=encoder.device))
        loop_s = per_file_loop(dataset, encoder, tmp / "npy")
        options = ExtractOptions(batch_size=batch_size, workers=workers, progress=False)
        with GpuUtilisation(device) as gpu:
            start = time.perf_counter()
            summary = extract_dataset(dataset, [("bench", encoder)], tmp / "bench.zarr", options)
            ours_s = time.perf_counter() - start
    matmul = max(matmul, matmul_flops_per_second(device, dtype, size))  # the best of before and after
    bound = flops * audio_seconds / matmul if flops else None
    return {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.model, "clips": args.clips, "clip_seconds": args.seconds, "batch_size": batch_size,
        "dtype": str(dtype).removeprefix("torch."), "decode_workers": workers, "cpus": os.cpu_count(),
        "loop_seconds": round(loop_s, 2), "embedstore_seconds": round(ours_s, 2),
        "speedup": round(loop_s / ours_s, 2),
        "loop_audio_s_per_s": round(audio_seconds / loop_s, 1),
        "embedstore_audio_s_per_s": round(audio_seconds / ours_s, 1),
        "model_busy_fraction": round(summary.models[0].model_seconds / ours_s, 3),
        "gpu_utilisation_percent": gpu.mean,
        "gflops_per_audio_second": round(flops / 1e9, 2),
        "matmul_tflops_measured": round(matmul / 1e12, 2),
        "flop_bound_seconds": round(bound, 3) if bound else None,
        "fraction_of_flop_bound": round(bound / ours_s, 3) if bound else None,
        "loop_fraction_of_flop_bound": round(bound / loop_s, 3) if bound else None,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--ceiling", action="store_true", help="the pipeline with a no-op encoder")
    mode.add_argument("--resample", action="store_true", help="soxr quality presets' cost")
    mode.add_argument("--count-flops", action="store_true", help="FLOPs per audio-second of each network")
    parser.add_argument("--clips", type=int, default=None, help="model mode: generated clips (10 genres; "
                        "default 50 on the CPU, 400 on CUDA)")
    parser.add_argument("--seconds", type=float, default=30.0, help="model mode: length of each clip")
    parser.add_argument("--audio", type=Path, default=None, help="ceiling/resample: a folder of WAV files "
                        "in GTZAN layout (default: the real excerpts in ../shared/data)")
    parser.add_argument("--copies", type=int, default=4, help="ceiling: each file listed this many times")
    parser.add_argument("--repeats", type=int, default=3, help="ceiling/resample: best of this many timings")
    parser.add_argument("--model", default=None, help="default: wav2vec2 (model mode), mert (ceiling)")
    parser.add_argument("--checkpoint", default=None, help="default: the model's standard architecture, random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 32 on CUDA (ceiling: 8)")
    parser.add_argument("--workers", default=None, help="decoding workers, comma-separated for --ceiling "
                        "(default: 1,2 for --ceiling, else extract's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")] if args.workers else None
    if args.ceiling:
        args.model, args.workers = args.model or "mert", args.workers or [1, 2]
        args.batch_size = args.batch_size or 8
    args.model = args.model or "wav2vec2"
    return args


def main() -> None:
    args = parse_args()
    device = str(resolve_device(args.device))
    args.clips = args.clips or (400 if device.startswith("cuda") else 50)
    if args.ceiling:
        figures = run_ceiling(args, device)
    elif args.resample:
        figures = run_resample(args)
    elif args.count_flops:
        figures = run_count_flops(args)
    else:
        figures = run_model(args, device)
    print(json.dumps(figures, indent=2, default=lambda x: round(x, 3) if isinstance(x, float) else str(x)))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
