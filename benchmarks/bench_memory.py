"""Memory benchmark: peak RSS of extracting one long file, against its length.

Generates 1, 10 and 60 minute recordings (44.1 kHz stereo FLAC: a slow tone sweep over noise, written
a minute at a time) and extracts each with one encoder at a time: the MFCC baseline (22.05 kHz, 600 s
windows) and a small wav2vec 2.0 with random weights (16 kHz, 10 s windows; the base model's conv stack
at 32 channels and 2 transformer layers of width 64, so 60 minutes take about a minute on 2 CPU cores),
every layer mean-pooled, one decoding worker. Each extraction runs in a fresh Python process, which
reports its own peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and that of its decoding
worker process (``RUSAGE_CHILDREN``, read after the worker exits). Reported per model and length: both
peaks, the larger of the two against the same model's 1-minute run, and the wall time.

``--baseline`` also runs the whole-clip path of earlier versions (``pipeline.STREAM_SECONDS`` set to
infinity: every clip decoded whole in the worker, at each rate, and sent to the main process), in
the same run, as the plain reference.

    python benchmarks/bench_memory.py                       # 1, 10, 60 minutes, bounded path
    python benchmarks/bench_memory.py --baseline            # and the whole-clip path
    python benchmarks/bench_memory.py --models w2v --minutes 1 10

Not a test: nothing here asserts on memory or time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SOURCE_RATE = 44_100
#: the small wav2vec 2.0: the base model's conv stack (stride 320, 50 frames/s), a narrow transformer
SMALL_W2V = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def write_recording(path: Path, minutes: float, seed: int = 0) -> None:
    """A ``minutes``-long 44.1 kHz stereo FLAC, written a minute at a time (the parent never holds it)."""
    rng = np.random.default_rng(seed)
    block = 60 * SOURCE_RATE
    with sf.SoundFile(path, "w", SOURCE_RATE, 2, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, int(minutes * 60 * SOURCE_RATE), block):
            t = (start + np.arange(block)) / SOURCE_RATE
            tone = 0.3 * np.sin(2 * np.pi * (220 + 20 * np.sin(2 * np.pi * t / 300)) * t)
            noise = rng.normal(0, 0.05, (block, 2))
            f.write((tone[:, None] * [1.0, 0.6] + noise).astype(np.float32))


def save_small_wav2vec2(directory: Path) -> Path:
    """A random-weight small wav2vec 2.0 checkpoint (config, weights, feature extractor) in ``directory``."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**SMALL_W2V)).eval().save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, do_normalize=True).save_pretrained(directory)
    return directory


def child(args: argparse.Namespace) -> None:
    """Extract one recording (in this fresh process) and print its figures as one JSON line."""
    from embedstore.extract import pipeline
    from embedstore.extract.datasets import discover_dataset
    from embedstore.extract.encoders import load_encoder

    if args.path_kind == "whole":
        pipeline.STREAM_SECONDS = float("inf")
    if args.models == ["mfcc"]:
        encoders = [("mfcc", load_encoder("mfcc"))]
    else:
        encoders = [("w2v", load_encoder("wav2vec2", str(args.checkpoint)))]
    dataset = discover_dataset(args.dataset, "manifest")
    options = pipeline.ExtractOptions(batch_size=args.batch_size, workers=1, progress=False)
    start = time.perf_counter()
    summary = pipeline.extract_dataset(dataset, encoders, args.store, options)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"main_mib": round(own, 1), "worker_mib": round(workers, 1), "seconds": round(seconds, 1),
                      "written": [m.written for m in summary.models]}))


def measure(root: Path, minutes: float, kind: str, model: str, checkpoint: Path, batch_size: int) -> dict:
    """Run :func:`child` on a ``minutes``-long recording with ``model`` in a fresh process; its figures."""
    dataset = root / f"{kind}-{model}-{minutes:g}min"
    dataset.mkdir()
    (dataset / "rec.flac").symlink_to(root / f"{minutes:g}min.flac")
    (dataset / "manifest.csv").write_text("path,label,split\nrec.flac,a,train\n")
    command = [sys.executable, __file__, "--child", "--path-kind", kind, "--dataset", str(dataset),
               "--store", str(dataset / "s.zarr"), "--checkpoint", str(checkpoint), "--batch-size", str(batch_size),
               "--models", model]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--models", nargs="+", choices=["mfcc", "w2v"], default=["mfcc", "w2v"])
    parser.add_argument("--batch-size", type=int, default=8, help="windows per encoder call")
    parser.add_argument("--baseline", action="store_true", help="also run the whole-clip path")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path-kind", choices=["bounded", "whole"], default="bounded", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = save_small_wav2vec2(root / "w2v-small")
        for minutes in args.minutes:
            write_recording(root / f"{minutes:g}min.flac", minutes)
        for model in args.models:
            for kind in ["bounded"] + (["whole"] if args.baseline else []):
                for minutes in args.minutes:
                    fig = measure(root, minutes, kind, model, checkpoint, args.batch_size)
                    rows.append({"model": model, "path": kind, "minutes": minutes, **fig})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    print("| model | path | minutes | main process peak RSS (MiB) | decoding worker peak RSS (MiB) "
          "| peak / 1st length's peak | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        first = next(r for r in rows if (r["model"], r["path"]) == (row["model"], row["path"]))
        peak, first_peak = max(row["main_mib"], row["worker_mib"]), max(first["main_mib"], first["worker_mib"])
        print(f"| {row['model']} | {row['path']} | {row['minutes']:g} | {row['main_mib']:.0f} | "
              f"{row['worker_mib']:.0f} | {peak / first_peak:.2f}x | {row['seconds']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
