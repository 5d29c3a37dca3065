"""Extraction benchmark: embedstore's pipeline against the per-file loop a user writes first.

Both sides extract the same clips with the same model (a full-size wav2vec 2.0 base architecture with
random weights by default: the timing does not depend on the weights) and keep every layer's mean over
time. The baseline is the plain loop: load a file, resample, run the model on that one clip, save a
``.npy``. embedstore runs ``extract_dataset`` (decoding workers, equal-length window batches, pooling on
the device, chunked store writes). Reported: wall time of each, their ratio, throughput in
audio-seconds per second, and how busy the model was (model time / wall time) inside the pipeline.

    python benchmarks/bench_extract.py --clips 50 --seconds 30            # CPU here
    python benchmarks/bench_extract.py --device cuda --batch-size 32      # on a GPU machine

Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedstore.extract.audio import load_audio
from embedstore.extract.datasets import discover_dataset
from embedstore.extract.encoders import load_encoder
from embedstore.devices import resolve_device
from embedstore.extract.pipeline import ExtractOptions, extract_dataset
from embedstore.extract.synthetic import RECIPES, make_gtzan_like


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=50, help="number of clips (spread over 10 genres)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each clip")
    parser.add_argument("--model", default="wav2vec2")
    parser.add_argument("--checkpoint", default=None, help="default: the model's standard architecture, random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 32 on CUDA")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    device = str(resolve_device(args.device))
    batch_size = args.batch_size or (32 if device.startswith("cuda") else 4)
    weights = "pretrained" if args.checkpoint or args.model == "mfcc" else "random"
    encoder = load_encoder(args.model, args.checkpoint, weights=weights, device=device, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        genres = tuple(RECIPES)
        make_gtzan_like(tmp / "audio", n_per_class=-(-args.clips // len(genres)), genres=genres,
                        seconds=args.seconds, broken=False)
        dataset = discover_dataset(tmp / "audio", "gtzan", split="random")
        dataset.tracks = dataset.tracks[: args.clips]
        audio_seconds = args.clips * args.seconds

        # warm-up (allocator, kernels) on one clip, outside both timings
        with torch.inference_mode():
            encoder(torch.zeros(1, encoder.sample_rate, device=encoder.device))

        loop_s = per_file_loop(dataset, encoder, tmp / "npy")
        options = ExtractOptions(batch_size=batch_size, workers=args.workers, progress=False)
        start = time.perf_counter()
        summary = extract_dataset(dataset, [("bench", encoder)], tmp / "bench.zarr", options)
        ours_s = time.perf_counter() - start

    figures = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.model,
        "clips": args.clips,
        "clip_seconds": args.seconds,
        "batch_size": batch_size,
        "dtype": encoder.autocast_dtype,
        "loop_seconds": round(loop_s, 2),
        "embedstore_seconds": round(ours_s, 2),
        "speedup": round(loop_s / ours_s, 2),
        "loop_audio_s_per_s": round(audio_seconds / loop_s, 1),
        "embedstore_audio_s_per_s": round(audio_seconds / ours_s, 1),
        "model_busy_fraction": round(summary.models[0].model_seconds / ours_s, 3),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
