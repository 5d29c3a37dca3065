"""Feeding the device: the default decoding workers, the under-fed warning, and the benchmark's no-op
encoder (it must have the real encoders' shapes, or the pipeline ceiling measures the wrong work)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.extract import feeding, pipeline
from embedstore.extract.datasets import discover_dataset
from embedstore.extract.encoders import load_encoder
from embedstore.extract.encoders.registry import ENCODERS
from embedstore.extract.pipeline import ExtractOptions, extract_dataset
from embedstore.store import load_embeddings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ceiling import NoOpEncoder
from tiny_models import save_tiny_wav2vec2


class OnCuda(NoOpEncoder):
    """A no-op encoder that says it lives on a GPU (nothing here touches CUDA: the rule only reads the
    device's type and the registry's FLOPs, and the tests pass the device's matmul FLOP/s)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda:0")


@pytest.fixture
def round_numbers(monkeypatch):
    """MFU 0.5 and 1000 audio-s/s decoded per core, so that the expected counts can be worked by hand;
    and a fresh once-only memory for the warning."""
    monkeypatch.setattr(feeding, "MFU", 0.5)
    monkeypatch.setattr(feeding, "DECODE_SECONDS_PER_CORE", 1000.0)
    monkeypatch.setattr(feeding, "_WARNED", set())


def test_default_workers_on_the_cpu_is_cpus_minus_one_at_most_four():
    cpu = [NoOpEncoder.like("mert")]
    assert [feeding.default_workers(cpu, cpus=n) for n in (1, 2, 3, 5, 8, 64)] == [1, 1, 2, 4, 4, 4]
    assert feeding.default_workers((), cpus=8) == 4  # no encoders: the CPU rule
    assert feeding.workers_needed(cpu) is None


def test_default_workers_on_a_gpu_follow_the_encoders_flops(round_numbers):
    assert ENCODERS["mert"].flops_per_second == pytest.approx(22.92e9)
    assert ENCODERS["wav2vec2"].flops_per_second == pytest.approx(14.81e9)
    mert = [OnCuda.like("mert")]
    # 0.5 x 1e14 FLOP/s / 22.92e9 FLOP per audio-second = 2181.5 audio-s/s -> 2.18 cores -> 3 workers
    assert feeding.device_rate(mert, device_flops=1e14) == pytest.approx(2181.50, abs=0.01)
    assert feeding.workers_needed(mert, device_flops=1e14) == 3
    assert [feeding.default_workers(mert, cpus=n, device_flops=1e14) for n in (1, 2, 3, 4, 64)] == [1, 1, 2, 3, 3]
    # two encoders see every clip: 0.5e14 / (22.92e9 + 14.81e9) = 1325.2 audio-s/s -> 2 workers
    both = [OnCuda.like("mert"), OnCuda.like("wav2vec2")]
    assert feeding.workers_needed(both, device_flops=1e14) == 2
    # a 10x faster device needs 10x the decoding: 21815 audio-s/s -> 22 workers, capped by the CPUs
    assert feeding.default_workers(mert, cpus=64, device_flops=1e15) == 22
    assert feeding.default_workers(mert, cpus=16, device_flops=1e15) == 15
    # no FLOPs in the registry (the MFCC baseline): the CPU rule
    assert feeding.workers_needed([OnCuda.like("mfcc")], device_flops=1e14) is None
    assert feeding.default_workers([OnCuda.like("mfcc")], cpus=64, device_flops=1e14) == 4


def test_underfed_gpu_warns_once(round_numbers):
    mert = [OnCuda.like("mert")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the once-only rule must be the function's own
        message = feeding.warn_if_underfed(mert, workers=1, cpus=2, device_flops=1e14)
        again = feeding.warn_if_underfed(mert, workers=1, cpus=2, device_flops=1e14)
    assert [w.category for w in caught] == [feeding.UnderfedDeviceWarning]
    assert message == again == str(caught[0].message)
    assert "cuda:0 can run mert at about 2182 audio-s/s" in message
    assert "needs about 3 decoding workers" in message and "2 CPU cores" in message
    # enough cores, but the user asked for too few workers: says so, naming the option
    with pytest.warns(feeding.UnderfedDeviceWarning, match="--workers 2 leaves it waiting"):
        feeding.warn_if_underfed(mert, workers=2, cpus=32, device_flops=1e14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all below
        assert feeding.warn_if_underfed(mert, workers=3, cpus=2, device_flops=1e14) is None
        assert feeding.warn_if_underfed([NoOpEncoder.like("mert")], workers=1, cpus=2) is None  # CPU


def test_noop_encoder_frames_and_output():
    clap = NoOpEncoder.like("clap")
    # 2.5 s at 48 kHz: ceil(2.5 x rate) frames per layer; the projection is one frame per window
    assert [clap.frames(120_000, layer) for layer in range(clap.num_layers)] == [64, 64, 32, 16, 8, 1]
    out = clap(torch.zeros(2, 120_000), torch.tensor([120_000, 48_000]))
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 64, 128), (2, 64, 128), (2, 32, 256), (2, 16, 512),
                                                           (2, 8, 1024), (2, 1, 512)]
    assert [out.lengths(layer).tolist() for layer in range(6)] == [[64, 26], [64, 26], [32, 13], [16, 7], [8, 4], [1, 1]]
    assert all(not h.any() for h in out.hidden_states)


@pytest.mark.slow  # builds the four full-size networks (random weights): about 10-20 s on 2 cores
@pytest.mark.parametrize("name", [s.name for s in ENCODERS.values() if s.default_checkpoint])
def test_noop_encoder_mirrors_the_real_encoders_shapes(name):
    real = load_encoder(name, weights="random")
    noop = NoOpEncoder.like(name)
    assert (noop.sample_rate, noop.window_seconds) == (real.sample_rate, real.window_seconds)
    assert noop.layer_widths == real.layer_widths
    np.testing.assert_allclose(noop.layer_frame_rates, real.layer_frame_rates, rtol=1e-9)
    n = int(0.75 * real.sample_rate)
    got, want = noop(torch.zeros(1, n)), real(torch.randn(1, n) * 0.1)
    for layer, (g, w) in enumerate(zip(got.hidden_states, want.hidden_states)):
        assert g.shape[2] == w.shape[2]
        # conv encoders drop the last partial frame of their receptive field: at most one frame fewer
        assert 0 <= g.shape[1] - w.shape[1] <= 1, (layer, g.shape, w.shape)
        assert 0 <= int(got.lengths(layer)[0]) - int(want.lengths(layer)[0]) <= 1


def test_decoded_blocks_cross_through_shared_memory_or_pipes_alike(gtzan_clean_dir, tmp_path, monkeypatch):
    """Two encoders at two rates (MFCC 22.05 kHz, wav2vec 2.0 16 kHz): rows decoded in this process, in a
    worker handing blocks over in shared memory, and in a worker pickling them (a small ``/dev/shm``)
    are identical."""
    ds = discover_dataset(gtzan_clean_dir)
    encoders = [("mfcc", load_encoder("mfcc")),
                ("w2v", load_encoder("wav2vec2", save_tiny_wav2vec2(tmp_path / "w2v")))]
    buffers = []
    unpack = pipeline._Block.unpack
    monkeypatch.setattr(pipeline._Block, "unpack", lambda block: buffers.append(block.buffer is not None) or unpack(block))
    stores = {}
    for name, workers, fits in (("in_process", 0, True), ("shared", 1, True), ("pipe", 1, False)):
        monkeypatch.setattr(pipeline, "_shared_memory_fits", lambda *args, fits=fits: fits)
        buffers.clear()
        stores[name] = tmp_path / f"{name}.zarr"
        options = ExtractOptions(workers=workers, limit=8, batch_size=3, progress=False)
        assert extract_dataset(ds, encoders, stores[name], options).written == 16
        assert buffers == [name == "shared"] * 3  # 8 clips in blocks of 3
    for key, enc in encoders:
        for layer in enc.layer_names:
            ref = load_embeddings(stores["in_process"], model=key, layer=layer)
            for name in ("shared", "pipe"):
                other = load_embeddings(stores[name], model=key, layer=layer)
                assert list(other.track_ids) == list(ref.track_ids)
                np.testing.assert_array_equal(other.X, ref.X)
