"""Encoders: shapes, frame rates, exact batching, checkpoint loading, MERT mapping, CLAP, MFCC.

Every model is a tiny random checkpoint written by ``tiny_models`` into a temporary directory and
loaded back with the hub offline, through the same code path as a real checkpoint. wav2vec 2.0 and
MERT layers are checked against ``reference_forward``, a forward pass written out with torch
functional ops over the checkpoint's own tensors (never against the transformers model we load).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from embedstore.errors import ModelError
from embedstore.extract.encoders import format_encoder_table, list_encoders, load_encoder
from reference_forward import normalize, output_frames, parameter_shapes, read_checkpoint, reference_layers
from tiny_models import (
    TINY_CLAP_AUDIO,
    save_tiny_clap,
    save_tiny_mert,
    save_tiny_wav2vec2,
    write_tiny_mert_remote_code,
)

RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """No hub traffic for any load in this module (module scope: covers the shared fixtures)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "mert": save_tiny_mert(root / "mert"),
        "mert_layer": save_tiny_mert(
            root / "mert_layer", seed=3, safetensors=True, feat_extract_norm="layer",
            do_stable_layer_norm=True, conv_bias=True, attention_relax=32.0,
        ),
        "wav2vec2": save_tiny_wav2vec2(root / "w2v"),
        "wav2vec2_layer": save_tiny_wav2vec2(
            root / "w2v_layer", seed=1, feat_extract_norm="layer", do_stable_layer_norm=True
        ),
        "clap": save_tiny_clap(root / "clap"),
    }


@pytest.fixture(scope="module")
def encoders(ckpts: dict[str, Path]) -> dict[str, torch.nn.Module]:
    return {
        "mert": load_encoder("mert", str(ckpts["mert"])),
        "mert_layer": load_encoder("mert", str(ckpts["mert_layer"])),
        "wav2vec2": load_encoder("wav2vec2", str(ckpts["wav2vec2"])),
        "wav2vec2_layer": load_encoder("wav2vec2", str(ckpts["wav2vec2_layer"])),
        "clap": load_encoder("clap", str(ckpts["clap"])),
        "mfcc": load_encoder("mfcc"),
    }


def _audio(sample_rate: int, seconds: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded batch ``[batch, samples]`` of tones + noise, and lengths ``[batch]``."""
    rng = np.random.default_rng(seed)
    lengths = [int(s * sample_rate) for s in seconds]
    batch = np.zeros((len(lengths), max(lengths)), dtype=np.float32)
    for i, n in enumerate(lengths):
        t = np.arange(n) / sample_rate
        batch[i, :n] = 0.5 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.1 * rng.standard_normal(n)
    return torch.from_numpy(batch), torch.tensor(lengths)


def _assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    scale = max(float(b.abs().max()), 1e-6)
    assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max()) / scale


# ---------------------------------------------------------------- registry


def test_registry_lists_every_encoder_with_its_properties() -> None:
    specs = {s.name: s for s in list_encoders()}
    assert set(specs) == {"mert", "mert-330m", "wav2vec2", "clap", "mfcc"}
    assert (specs["mert"].num_layers, specs["mert"].width, specs["mert"].sample_rate) == (13, 768, 24_000)
    assert (specs["mert-330m"].num_layers, specs["mert-330m"].width) == (25, 1024)
    assert specs["wav2vec2"].frame_rate == 50.0
    table = format_encoder_table()
    for name, spec in specs.items():
        assert name in table and (spec.default_checkpoint or "-") in table
    json.dumps([s.to_dict() for s in specs.values()])


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelError, match="unknown model 'nope'.*mert.*wav2vec2.*clap.*mfcc"):
        load_encoder("nope")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"weights": "imagenet"}, "weights"),
        ({"dtype": "int8"}, "dtype"),
        ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "nonsense"}, "device"),
        ({"window_seconds": 0}, "--window-seconds"),
    ],
)
def test_bad_options_give_model_error(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ModelError, match=pattern):
        load_encoder("mfcc", **kwargs)


def test_missing_checkpoint_offline_is_one_line_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_encoder("wav2vec2", "nobody-here/no-such-model")
    message = str(info.value)
    assert "\n" not in message and "no-such-model" in message and "download" in message
    with pytest.raises(ModelError, match="no such file or directory"):
        load_encoder("mert", str(tmp_path / "missing_dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        load_encoder("clap", str(tmp_path / "empty"))


def test_hub_id_resolves_from_offline_cache_with_revision(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-w2v"
    shutil.copytree(ckpts["wav2vec2"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    encoder = load_encoder("wav2vec2", "someone/tiny-w2v")
    info = encoder.describe()
    assert info["revision"] == commit and info["checkpoint"] == "someone/tiny-w2v"


# ---------------------------------------------------------------- shared properties


@pytest.mark.parametrize(
    "key, sample_rate, frame_rate, num_layers",
    [
        ("mert", 24_000, 75.0, 3),
        ("mert_layer", 24_000, 75.0, 3),
        ("wav2vec2", 16_000, 50.0, 3),
        ("wav2vec2_layer", 16_000, 50.0, 3),
        ("mfcc", 22_050, 22_050 / 512, 5),
        ("clap", 48_000, 4 * 16 / 10, 4),
    ],
)
def test_layers_widths_and_frame_rates(encoders: dict, key: str, sample_rate: int,
                                       frame_rate: float, num_layers: int) -> None:
    encoder = encoders[key]
    assert encoder.sample_rate == sample_rate
    assert encoder.num_layers == num_layers == len(encoder.layer_names) == len(encoder.layer_widths)
    assert encoder.frame_rate == pytest.approx(frame_rate)
    assert encoder.device == torch.device("cpu")
    seconds = [1.0, 0.55, 0.31]
    waveforms, lengths = _audio(sample_rate, seconds)
    out = encoder(waveforms, lengths)
    assert out.num_layers == num_layers
    for layer, (hidden, width) in enumerate(zip(out.hidden_states, encoder.layer_widths)):
        assert hidden.dtype == torch.float32 and hidden.shape[0] == 3 and hidden.shape[2] == width
        frames = out.lengths(layer)
        assert int(frames.max()) == hidden.shape[1]
        expected = torch.tensor(seconds) * encoder.layer_frame_rates[layer]
        if encoder.layer_names[layer] == "projection":
            assert frames.tolist() == [1, 1, 1]
        else:
            assert (frames.double() - expected.double()).abs().max() <= 1.0 + 1e-6
        for i in range(3):  # frames past the valid ones are zeros
            assert float(hidden[i, int(frames[i]):].abs().sum()) == 0.0
    json.dumps(encoder.describe())


@pytest.mark.parametrize("key", ["mert", "mert_layer", "wav2vec2", "wav2vec2_layer", "clap", "mfcc"])
def test_batched_equals_per_clip_for_different_lengths(encoders: dict, key: str) -> None:
    encoder = encoders[key]
    waveforms, lengths = _audio(encoder.sample_rate, [0.9, 0.4, 0.9, 0.23], seed=1)
    batched = encoder(waveforms, lengths)
    for i in range(len(lengths)):
        n = int(lengths[i])
        single = encoder(waveforms[i : i + 1, :n], lengths[i : i + 1])
        for layer in range(encoder.num_layers):
            frames = int(single.lengths(layer)[0])
            assert int(batched.lengths(layer)[i]) == frames
            _assert_close(batched.hidden_states[layer][i, :frames], single.hidden_states[layer][0, :frames])


@pytest.mark.parametrize("key", ["mert", "wav2vec2", "clap", "mfcc"])
def test_forward_is_deterministic(encoders: dict, key: str) -> None:
    encoder = encoders[key]
    waveforms, lengths = _audio(encoder.sample_rate, [0.7, 0.5], seed=2)
    first = encoder(waveforms, lengths)
    np.random.seed(123)
    torch.manual_seed(123)
    second = encoder(waveforms, lengths)
    for a, b in zip(first.hidden_states, second.hidden_states):
        assert torch.equal(a, b)


def test_padding_strategy_follows_the_conv_norm(encoders: dict) -> None:
    assert not encoders["mert"].padding_exact and not encoders["wav2vec2"].padding_exact  # GroupNorm
    assert encoders["mert_layer"].padding_exact and encoders["wav2vec2_layer"].padding_exact


def test_clip_shorter_than_receptive_field_is_refused(encoders: dict) -> None:
    encoder = encoders["wav2vec2"]

    def frames(n: int) -> int:  # conv output length, layer by layer (kernels 10, 8, 4, 4; strides 5, 4, 4, 4)
        for kernel, stride in zip((10, 8, 4, 4), (5, 4, 4, 4)):
            n = (n - kernel) // stride + 1 if n >= kernel else 0
        return n

    field = next(n for n in range(1, 2000) if frames(n) >= 1)
    assert field == 345 and encoder.min_samples == field
    out = encoder(torch.randn(2, field), torch.tensor([field, field]))
    assert out.frame_lengths.tolist() == [1, 1]
    with pytest.raises(ModelError, match=r"too short for wav2vec2: 120 samples .* needs at least 345"):
        encoder(torch.randn(2, 300), torch.tensor([300, 120]))


# ---------------------------------------------------------------- wav2vec2


def test_wav2vec2_default_random_uses_builtin_full_size_config() -> None:
    encoder = load_encoder("wav2vec2", weights="random", seed=0)
    assert encoder.num_layers == 13 and set(encoder.layer_widths) == {768}
    assert encoder.frame_rate == 50.0 and encoder.sample_rate == 16_000
    out = encoder(torch.randn(1, 1600))
    assert out.hidden_states[-1].shape == (1, 4, 768)


# ---------------------------------------------------------------- MERT


def _assert_layers_match_reference(encoder: torch.nn.Module, directory: Path, prefix: str = "") -> None:
    """Every stored layer of a padded two-clip batch equals the written-out forward of each clip."""
    weights, config = read_checkpoint(directory, prefix)
    pre = json.loads((directory / "preprocessor_config.json").read_text())
    waveforms, lengths = _audio(encoder.sample_rate, [0.6, 0.35], seed=5)
    out = encoder(waveforms, lengths)
    assert out.num_layers == config["num_hidden_layers"] + 1
    for i, n in enumerate(lengths.tolist()):
        clip = normalize(waveforms[i, :n]) if pre["do_normalize"] else waveforms[i, :n]
        expected = reference_layers(weights, config, clip)
        assert int(out.frame_lengths[i]) == expected[0].shape[0] == output_frames(n, config)
        for layer, want in enumerate(expected):
            _assert_close(out.hidden_states[layer][i, : len(want)], want)


@pytest.mark.parametrize(
    "key, prefix",
    [("mert", ""), ("mert_layer", ""), ("wav2vec2", "wav2vec2."), ("wav2vec2_layer", "wav2vec2.")],
)
def test_every_layer_equals_the_forward_pass_written_out(
    encoders: dict, ckpts: dict, key: str, prefix: str
) -> None:
    """Layer 0 = projected features + positional conv (+ encoder LayerNorm when post-LN), each
    transformer layer, and for pre-LN models the last layer after the final LayerNorm."""
    weights, config = read_checkpoint(ckpts[key], prefix)
    shapes = parameter_shapes(config)  # the reference reads every weight the checkpoint has
    assert {name: tuple(weights[name].shape) for name in shapes} == shapes
    assert set(weights) - set(shapes) == {"masked_spec_embed"}
    _assert_layers_match_reference(encoders[key], ckpts[key], prefix)


def test_layer_convention_is_recorded(encoders: dict) -> None:
    stable = encoders["mert_layer"].describe()["layer_convention"]
    post = encoders["mert"].describe()["layer_convention"]
    assert "after the encoder's final LayerNorm" in stable and "pre-LN" in stable
    assert "layer_00 = encoder LayerNorm(" in post and "post-LN" in post
    assert encoders["wav2vec2_layer"].describe()["layer_convention"] == stable


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"deepnorm": True}, "deepnorm"),
        ({"feature_extractor_cqt": True}, "feature_extractor_cqt"),
        ({"feat_extract_norm": "batch"}, "feat_extract_norm"),
        ({"model_type": "wav2vec2"}, "model_type"),
    ],
)
def test_mert_refuses_fields_hubert_cannot_compute(tmp_path: Path, overrides: dict, pattern: str) -> None:
    directory = save_tiny_mert(tmp_path / "mert")
    config = json.loads((directory / "config.json").read_text())
    config.update(overrides)
    (directory / "config.json").write_text(json.dumps(config))
    for weights in ("pretrained", "random"):
        with pytest.raises(ModelError, match=pattern):
            load_encoder("mert", str(directory), weights=weights)


def test_mert_missing_weights_are_refused(tmp_path: Path) -> None:
    directory = save_tiny_mert(tmp_path / "mert")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    del state["encoder.layers.0.attention.q_proj.weight"]
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(ModelError, match="missing.*q_proj"):
        load_encoder("mert", str(directory))


def test_mert_accepts_a_weights_file_and_describes_it(ckpts: dict) -> None:
    weights = ckpts["mert"] / "pytorch_model.bin"
    encoder = load_encoder("mert", str(weights))
    info = encoder.describe()
    assert info["weights_sha256"] == {"pytorch_model.bin": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert info["preprocessing"]["do_normalize"] is True
    assert info["sample_rate"] == 24_000 and "HubertModel" in info["loader"]


def test_mert_trust_remote_code_runs_the_checkpoints_own_model(
    ckpts: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's own (stand-in, non-HuBERT) ``MERTModel`` is loaded with the checkpoint's
    weights, and its layers reach the encoder output in the same convention (post-LN and pre-LN).
    One modules cache for both: transformers imports ``transformers_modules`` once per process."""
    import transformers.dynamic_module_utils as dynamic
    from transformers import HubertModel

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    for key in ("mert", "mert_layer"):
        directory = write_tiny_mert_remote_code(shutil.copytree(ckpts[key], tmp_path / key))
        remote = load_encoder("mert", str(directory), trust_remote_code=True)
        assert type(remote.model).__name__ == "MERTModel" and not isinstance(remote.model, HubertModel)
        assert "trust_remote_code" in remote.describe()["loader"]
        _assert_layers_match_reference(remote, directory)


def test_mert_builtin_configs_match_the_real_architectures() -> None:
    from embedstore.extract.encoders.mert import BUILTIN_CONFIGS, mert_to_hubert_config

    base = mert_to_hubert_config(BUILTIN_CONFIGS["m-a-p/MERT-v1-95M"])
    large = mert_to_hubert_config(BUILTIN_CONFIGS["m-a-p/MERT-v1-330M"])
    assert (base.hidden_size, base.num_hidden_layers, base.feat_extract_norm) == (768, 12, "group")
    assert (large.hidden_size, large.num_hidden_layers, large.do_stable_layer_norm) == (1024, 24, True)
    assert np.prod(base.conv_stride) == 320  # 75 frames/s at 24 kHz


# ---------------------------------------------------------------- random weights


@pytest.mark.parametrize("name, key", [("mert", "mert"), ("wav2vec2", "wav2vec2"), ("clap", "clap")])
def test_random_weights_are_seeded(ckpts: dict, name: str, key: str) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        return load_encoder(name, str(ckpts[key]), weights="random", seed=seed).model.state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    pretrained = load_encoder(name, str(ckpts[key])).model.state_dict()
    assert a.keys() == pretrained.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    float_keys = [k for k in a if a[k].is_floating_point() and a[k].numel() > 1 and a[k].std() > 0]
    assert any(not torch.equal(a[k], c[k]) for k in float_keys)
    assert any(not torch.equal(a[k], pretrained[k]) for k in float_keys)
    assert all(a[k].shape == pretrained[k].shape for k in a)


def test_mfcc_refuses_random_weights() -> None:
    with pytest.raises(ModelError, match="no weights"):
        load_encoder("mfcc", weights="random")


# ---------------------------------------------------------------- CLAP


def test_clap_layers_and_projection_match_clap_model(encoders: dict, ckpts: dict) -> None:
    from transformers import ClapFeatureExtractor, ClapModel

    encoder = encoders["clap"]
    assert encoder.layer_names == ("patch_embed", "stage_1", "stage_2", "projection")
    patch = TINY_CLAP_AUDIO["patch_embeds_hidden_size"]
    assert encoder.layer_widths == (patch, patch, 2 * patch, TINY_CLAP_AUDIO["projection_dim"])
    waveforms, lengths = _audio(48_000, [2.0, 1.3], seed=6)
    out = encoder(waveforms, lengths)
    projection = out.hidden_states[-1]
    assert projection.shape == (2, 1, TINY_CLAP_AUDIO["projection_dim"])
    _assert_close(projection.norm(dim=-1), torch.ones(2, 1))
    model = ClapModel.from_pretrained(ckpts["clap"]).eval()
    extractor = ClapFeatureExtractor.from_pretrained(ckpts["clap"])
    assert extractor.truncation == "rand_trunc" and extractor.padding == "repeatpad"
    clips = [waveforms[i, : int(lengths[i])].numpy() for i in range(2)]
    inputs = extractor(clips, sampling_rate=48_000, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_audio_features(input_features=inputs["input_features"].float())
    expected = getattr(expected, "pooler_output", expected)
    _assert_close(projection[:, 0], expected)


def test_clap_refuses_inputs_longer_than_its_window(encoders: dict, ckpts: dict) -> None:
    encoder = encoders["clap"]
    assert encoder.window_seconds == 10.0
    with pytest.raises(ModelError, match="exceeds"):
        encoder(torch.zeros(1, 48_000 * 10 + 1))
    with pytest.raises(ModelError, match="window_seconds"):
        load_encoder("clap", str(ckpts["clap"]), window_seconds=12)
    assert load_encoder("clap", str(ckpts["clap"]), window_seconds=5).window_seconds == 5


def test_clap_fusion_checkpoint_is_deterministic(tmp_path: Path) -> None:
    directory = save_tiny_clap(tmp_path / "fused", truncation="fusion", enable_fusion=True)
    encoder = load_encoder("clap", str(directory))
    waveforms, lengths = _audio(48_000, [1.0, 0.5, 0.7], seed=7)
    state = np.random.get_state()
    runs = [encoder(waveforms, lengths).hidden_states for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(state[1:2], np.random.get_state()[1:2]))
    for run in runs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(runs[0], run))
    single = encoder(waveforms[1:2, : int(lengths[1])]).hidden_states
    _assert_close(runs[0][-1][1], single[-1][0])


# ---------------------------------------------------------------- MFCC


def test_mfcc_values_match_librosa(encoders: dict) -> None:
    import librosa

    encoder = encoders["mfcc"]
    assert encoder.layer_names == ("mfcc", "delta", "chroma", "spectral", "combined")
    assert encoder.layer_widths == (20, 20, 12, 13, 65)
    waveforms, lengths = _audio(22_050, [1.5, 0.8], seed=8)
    out = encoder(waveforms, lengths)
    for i in range(2):
        y = waveforms[i, : int(lengths[i])].numpy()
        kw = {"sr": 22_050, "n_fft": 2048, "hop_length": 512}
        mfcc = librosa.feature.mfcc(y=y, n_mfcc=20, **kw)
        spectral = np.vstack([
            librosa.feature.spectral_contrast(y=y, **kw),
            librosa.feature.spectral_centroid(y=y, **kw),
            librosa.feature.spectral_bandwidth(y=y, **kw),
            librosa.feature.spectral_rolloff(y=y, **kw),
            librosa.feature.spectral_flatness(y=y, n_fft=2048, hop_length=512),
            librosa.feature.zero_crossing_rate(y, frame_length=2048, hop_length=512),
            librosa.feature.rms(y=y, frame_length=2048, hop_length=512),
        ])
        expected = {
            "mfcc": mfcc,
            "delta": librosa.feature.delta(mfcc, width=9),
            "chroma": librosa.feature.chroma_stft(y=y, **kw),
            "spectral": spectral,
        }
        frames = 1 + len(y) // 512
        assert int(out.frame_lengths[i]) == frames
        for layer, name in enumerate(encoder.layer_names[:4]):
            got = out.hidden_states[layer][i, :frames].numpy()
            np.testing.assert_allclose(got, expected[name].T, rtol=1e-4, atol=1e-4 * np.abs(expected[name]).max())
        np.testing.assert_array_equal(
            out.hidden_states[4][i], torch.cat(out.hidden_states[:4], dim=-1)[i]
        )


def test_mfcc_handles_silence_and_tiny_clips(encoders: dict) -> None:
    out = encoders["mfcc"](torch.zeros(2, 3000), torch.tensor([3000, 100]))
    assert out.frame_lengths.tolist() == [6, 1]
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
