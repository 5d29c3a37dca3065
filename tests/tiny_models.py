"""Tiny randomly initialised checkpoints in the real on-disk formats, for tests.

Each ``save_tiny_*`` writes a directory that the encoders load exactly as they load a downloaded
checkpoint (``config.json`` + weights + ``preprocessor_config.json``) and returns its path:

* :func:`save_tiny_mert` - MERT-v1 format: ``model_type: "mert_model"``, ``architectures:
  ["MERTModel"]``, every ``MERTConfig`` field, seeded random weights (LayerNorm scales and all
  biases too, so a swapped or skipped norm shows) saved under MERT's key names (legacy
  ``weight_g``/``weight_v`` for the positional conv) in ``pytorch_model.bin`` or ``model.safetensors``.
  :func:`write_tiny_mert_remote_code` adds stand-in ``configuration_MERT.py`` / ``modeling_MERT.py``.
* :func:`save_tiny_wav2vec2` - a tiny ``Wav2Vec2ForPreTraining`` (keys under ``wav2vec2.``, as
  ``facebook/wav2vec2-base`` ships).
* :func:`save_tiny_clap` - a tiny ``ClapModel`` (audio + text towers) and a ``ClapFeatureExtractor``
  whose mel frames fit the tiny Swin input.

Sizes: hidden 32, 2 transformer layers, a 4-layer conv stack with total stride 320 (so frame rates
are the real ones: 75/s at 24 kHz, 50/s at 16 kHz). Everything is CPU, float32, and takes well
under a second to build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

TINY_CONV: dict[str, Any] = {
    "conv_dim": [16, 16, 16, 16],
    "conv_stride": [5, 4, 4, 4],
    "conv_kernel": [10, 8, 4, 4],
}
TINY_TRANSFORMER: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
# Compute-relevant MERT fields and their tiny values (all MERTConfig fields are written).
_MERT_DEFAULTS: dict[str, Any] = {
    **TINY_CONV,
    **TINY_TRANSFORMER,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_bias": False,
    "conv_pos_batch_norm": False,
    "do_stable_layer_norm": False,
    "feat_proj_layer_norm": True,
}
_MERT_INERT: dict[str, Any] = {
    "vocab_size": 32, "hidden_dropout": 0.1, "activation_dropout": 0.0, "attention_dropout": 0.1,
    "feat_proj_dropout": 0.0, "final_dropout": 0.1, "layerdrop": 0.05, "initializer_range": 0.02,
    "apply_spec_augment": True, "mask_time_prob": 0.05, "mask_time_length": 10,
    "mask_time_min_masks": 2, "mask_feature_prob": 0.0, "mask_feature_length": 10,
    "mask_feature_min_masks": 0, "ctc_loss_reduction": "sum", "ctc_zero_infinity": False,
    "use_weighted_layer_sum": False, "classifier_proj_size": 256, "pad_token_id": 0,
    "bos_token_id": 1, "eos_token_id": 2, "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336, "deepnorm": False, "attention_relax": -1.0,
}


def tiny_mert_fields(**overrides: Any) -> dict[str, Any]:
    """The compute-relevant config fields of the tiny MERT (``HubertConfig`` keyword names)."""
    fields = dict(_MERT_DEFAULTS)
    fields.update({k: v for k, v in overrides.items() if k in _MERT_DEFAULTS})
    return fields


def _tiny_mert_weights(seed: int, **overrides: Any) -> dict[str, torch.Tensor]:
    """Seeded weights of the tiny MERT, under ``HubertModel``'s names (a convenient container).

    Parameters that transformers initialises to constants (LayerNorm scales 1, biases 0) get
    ``0.2 * N(0, 1)`` added, so every weight matters to the forward pass.
    """
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**tiny_mert_fields(**overrides), mask_time_prob=0.05)
    torch.manual_seed(seed)
    state = HubertModel(config).state_dict()
    for key, value in state.items():
        if value.is_floating_point() and float(value.std()) == 0.0:
            state[key] = value + 0.2 * torch.randn_like(value)
    return state


def save_tiny_mert(
    directory: str | Path,
    *,
    seed: int = 0,
    sample_rate: int = 24_000,
    do_normalize: bool = True,
    safetensors: bool = False,
    **overrides: Any,
) -> Path:
    """Write a tiny MERT-v1-format checkpoint into ``directory`` and return the directory.

    Args:
        seed: seed of the weights.
        sample_rate: ``config.json`` ``sample_rate`` and the feature extractor's ``sampling_rate``.
        do_normalize: the feature extractor's ``do_normalize``.
        safetensors: save ``model.safetensors`` instead of ``pytorch_model.bin``.
        **overrides: MERT config fields (e.g. ``deepnorm=True``, ``do_stable_layer_norm=True``,
            ``feat_extract_norm="layer"``); compute-relevant ones also shape the saved model.
    """
    from transformers import Wav2Vec2FeatureExtractor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        **_MERT_INERT,
        **_MERT_DEFAULTS,
        **overrides,
        "architectures": ["MERTModel"],
        "auto_map": {
            "AutoConfig": "configuration_MERT.MERTConfig",
            "AutoModel": "modeling_MERT.MERTModel",
        },
        "model_type": "mert_model",
        "sample_rate": sample_rate,
        "num_feat_extract_layers": len(TINY_CONV["conv_dim"]),
        "torch_dtype": "float32",
        "transformers_version": "4.24.0",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state = {}
    for key, value in _tiny_mert_weights(seed, **overrides).items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        state[key] = value.clone().contiguous()
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=sample_rate, padding_value=0.0,
        do_normalize=do_normalize, return_attention_mask=True,
    ).save_pretrained(directory)
    return directory


def save_tiny_wav2vec2(
    directory: str | Path,
    *,
    seed: int = 0,
    feat_extract_norm: str = "group",
    do_stable_layer_norm: bool = False,
    do_normalize: bool = True,
) -> Path:
    """Write a tiny ``Wav2Vec2ForPreTraining`` checkpoint (16 kHz) into ``directory``; return it.

    ``feat_extract_norm="layer"`` with ``do_stable_layer_norm=True`` gives the padding-exact
    (wav2vec2-large-lv60 style) variant.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    directory = Path(directory)
    config = Wav2Vec2Config(
        **TINY_CONV,
        **TINY_TRANSFORMER,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=do_stable_layer_norm,
        conv_bias=feat_extract_norm == "layer",
        num_codevectors_per_group=8,
        num_codevector_groups=2,
        codevector_dim=16,
        proj_codevector_dim=16,
    )
    torch.manual_seed(seed)
    Wav2Vec2ForPreTraining(config).eval().save_pretrained(directory)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=do_normalize,
        return_attention_mask=feat_extract_norm == "layer",
    ).save_pretrained(directory)
    return directory


TINY_CLAP_AUDIO: dict[str, Any] = {
    "spec_size": 64,
    "num_mel_bins": 16,
    "patch_size": 4,
    "patch_stride": [4, 4],
    "patch_embeds_hidden_size": 8,
    "depths": [1, 1],
    "num_attention_heads": [1, 2],
    "window_size": 4,
    "hidden_size": 16,
    "projection_dim": 12,
}
TINY_CLAP_TEXT: dict[str, Any] = {
    "vocab_size": 100,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 40,
    "projection_dim": 12,
}
# 10 s at 48 kHz with hop 1920 -> 251 mel frames, within the tiny Swin's 64 * 4 = 256.
TINY_CLAP_HOP = 1920


def save_tiny_clap(
    directory: str | Path,
    *,
    seed: int = 0,
    truncation: str = "rand_trunc",
    padding: str = "repeatpad",
    enable_fusion: bool = False,
) -> Path:
    """Write a tiny ``ClapModel`` + ``ClapFeatureExtractor`` (48 kHz, 10 s) into ``directory``.

    The model has a patch embedding (8 channels, 16 x 16 patches), two Swin stages (8 and 16
    channels) and a 12-d projection; the extractor makes 16 mel bins at hop 1920.
    """
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    directory = Path(directory)
    config = ClapConfig(
        text_config=TINY_CLAP_TEXT,
        audio_config={**TINY_CLAP_AUDIO, "enable_fusion": enable_fusion},
        projection_dim=TINY_CLAP_AUDIO["projection_dim"],
    )
    torch.manual_seed(seed)
    ClapModel(config).eval().save_pretrained(directory)
    ClapFeatureExtractor(
        feature_size=TINY_CLAP_AUDIO["num_mel_bins"], sampling_rate=48_000, hop_length=TINY_CLAP_HOP,
        max_length_s=10, fft_window_size=1024, truncation=truncation, padding=padding,
        frequency_min=50, frequency_max=14_000,
    ).save_pretrained(directory)
    return directory


_REMOTE_CONFIGURATION = '''"""Stand-in for MERT's configuration_MERT.py (tests only)."""
from transformers import PretrainedConfig


class MERTConfig(PretrainedConfig):
    model_type = "mert_model"
'''
_REMOTE_MODELING = '''"""Stand-in for MERT's modeling_MERT.py (tests only), not built on HubertModel.

Parameters carry MERT's checkpoint names (a bare module tree); the forward pass is
reference_forward.reference_layers, run clip by clip over the samples attention_mask marks valid.
"""
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_MERT import MERTConfig
from .reference_forward import output_frames, parameter_shapes, reference_layers


class MERTModel(PreTrainedModel):
    config_class = MERTConfig
    base_model_prefix = "mert_model"
    main_input_name = "input_values"

    def __init__(self, config):
        super().__init__(config)
        for name, shape in parameter_shapes(config.to_dict()).items():
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, torch.nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, torch.nn.Parameter(0.02 * torch.randn(shape)))
        self.post_init()

    def _init_weights(self, module):
        pass

    def _get_feat_extract_output_lengths(self, lengths):
        return output_frames(lengths, self.config.to_dict())

    def forward(self, input_values, attention_mask=None, output_hidden_states=None, **kwargs):
        weights, config = dict(self.named_parameters()), self.config.to_dict()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_values, dtype=torch.long)
        clips = [reference_layers(weights, config, x[: int(n)])
                 for x, n in zip(input_values, attention_mask.sum(-1))]
        layers = tuple(torch.nn.utils.rnn.pad_sequence([clip[i] for clip in clips], batch_first=True)
                       for i in range(len(clips[0])))
        return BaseModelOutput(last_hidden_state=layers[-1], hidden_states=layers)
'''


def write_tiny_mert_remote_code(directory: str | Path) -> Path:
    """Add stand-in ``configuration_MERT.py`` / ``modeling_MERT.py`` to a tiny MERT checkpoint, so
    ``trust_remote_code=True`` loading can be exercised offline.

    The stand-in ``MERTModel`` is a ``PreTrainedModel`` that does not use ``HubertModel``: its
    forward pass is :func:`reference_forward.reference_layers`, copied next to it as
    ``reference_forward.py`` (a relative import, as the hub's remote code does).
    """
    directory = Path(directory)
    (directory / "configuration_MERT.py").write_text(_REMOTE_CONFIGURATION, encoding="utf-8")
    (directory / "modeling_MERT.py").write_text(_REMOTE_MODELING, encoding="utf-8")
    shutil.copyfile(Path(__file__).with_name("reference_forward.py"), directory / "reference_forward.py")
    return directory
