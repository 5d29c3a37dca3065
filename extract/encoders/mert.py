"""MERT-v1 (``m-a-p/MERT-v1-95M``, ``m-a-p/MERT-v1-330M``) loaded into transformers' ``HubertModel``.

The hub repositories ship their own model code (``configuration_MERT.py`` / ``modeling_MERT.py``,
``model_type: "mert_model"``). We do not run it by default: at inference MERT-v1 is HuBERT-shaped,
and this module maps its config onto ``HubertConfig`` and its weights onto ``HubertModel``.
``trust_remote_code=True`` instead loads the repository's own code with ``AutoModel``.

Why the mapping is exact (read from ``modeling_MERT.py``): ``MERTModel`` subclasses ``HubertModel``
and builds the same modules from transformers itself: ``HubertFeatureEncoder`` (conv stack),
``MERTFeatureProjection`` (LayerNorm if ``feat_proj_layer_norm`` + Linear + dropout, the same
parameters and order as ``HubertFeatureProjection`` when no CQT features are concatenated), then
``HubertEncoder`` or, with ``do_stable_layer_norm``, ``HubertEncoderStableLayerNorm``. Its
``forward`` runs feature encoder -> transpose -> reduced attention mask -> projection -> (training-only
time masking) -> encoder, as ``HubertModel.forward`` does. The state-dict keys are HuBERT's
(``feature_extractor.conv_layers.*``, ``feature_projection.*``, ``encoder.*``, ``masked_spec_embed``),
saved by an older transformers with ``encoder.pos_conv_embed.conv.weight_g/weight_v``, which we
rename to torch's ``parametrizations.weight.original0/1``.

Config fields, one by one:

* honoured (copied to ``HubertConfig``, same meaning because the same transformers classes consume
  them): ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
  ``hidden_act``, ``layer_norm_eps``, ``feat_extract_norm`` ("group" | "layer"),
  ``feat_extract_activation``, ``conv_dim``, ``conv_stride``, ``conv_kernel``, ``conv_bias``,
  ``num_conv_pos_embeddings``, ``num_conv_pos_embedding_groups``, ``conv_pos_batch_norm`` (read by
  ``HubertPositionalConvEmbedding``, which MERT uses as is), ``do_stable_layer_norm``,
  ``feat_proj_layer_norm``.
* inert at inference (copied or ignored): dropouts, ``layerdrop``, SpecAugment masking
  (``mask_time_*``, ``mask_feature_*``, only active in training), CTC/classifier fields, token ids,
  ``initializer_range``, ``vocab_size``.
* ``attention_relax``: only read by MERT's ``HubertEncoderLayerExtend``, which is built only when
  ``deepnorm`` is true (refused below); and it subtracts each attention row's maximum from the
  logits before softmax, which leaves the softmax unchanged. So it never alters the computation we
  run (MERT-v1-330M sets 32.0 with ``do_stable_layer_norm``, where it is unused).
* refused with :class:`ModelError`: ``deepnorm: true`` (residuals scaled by ``(2 N)^(1/4)``, which
  ``HubertEncoderLayer`` cannot express), ``feature_extractor_cqt: true`` (nnAudio CQT features
  concatenated before the projection), a ``feat_extract_norm`` other than "group"/"layer", and a
  ``model_type`` other than "mert_model"/"hubert". Unknown fields give a warning.

Preprocessing: the checkpoint's ``Wav2Vec2FeatureExtractor`` (``do_normalize``), 24 kHz.

Layers: MERT's own convention (transformers 4.x ``hidden_states``), see :mod:`.conv_transformer`:
MERT-v1-330M's layer 24 is taken after the encoder's final LayerNorm, with either loader.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from embedstore.errors import ModelError

from .checkpoints import ResolvedCheckpoint, resolve_checkpoint, try_resolve_config
from .conv_transformer import ConvTransformerEncoder
from .hf_loading import INFERENCE_IRRELEVANT_KEYS, quiet_transformers, random_model, read_preprocessor
from .registry import EncoderRequest

DEFAULT_CHECKPOINT = "m-a-p/MERT-v1-95M"
LARGE_CHECKPOINT = "m-a-p/MERT-v1-330M"
SAMPLE_RATE = 24_000
DEFAULT_WINDOW_SECONDS = 10.0

HONOURED_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "layer_norm_eps", "feat_extract_norm", "feat_extract_activation", "conv_dim", "conv_stride",
    "conv_kernel", "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
    "conv_pos_batch_norm", "do_stable_layer_norm", "feat_proj_layer_norm",
)
INERT_FIELDS = (
    "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "final_dropout",
    "feat_extract_dropout", "layerdrop", "initializer_range", "apply_spec_augment", "mask_time_prob",
    "mask_time_length", "mask_time_min_masks", "mask_feature_prob", "mask_feature_length",
    "mask_feature_min_masks", "ctc_loss_reduction", "ctc_zero_infinity", "use_weighted_layer_sum",
    "classifier_proj_size", "vocab_size", "pad_token_id", "bos_token_id", "eos_token_id",
    "num_feat_extract_layers", "feature_extractor_cqt_bins", "attention_relax", "deepnorm",
    "feature_extractor_cqt", "sample_rate", "gradient_checkpointing", "architectures", "auto_map",
    "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
    "problem_type", "is_encoder_decoder", "chunk_size_feed_forward", "use_cache",
    "tie_word_embeddings",
)
# Copied for parity of the parameter set (masked_spec_embed exists iff a mask prob > 0).
_COPIED_INERT = ("mask_time_prob", "mask_feature_prob", "vocab_size")

# MERT-v1 configs in MERT's own format, for weights="random" when the checkpoint is not on disk.
_MERT_COMMON: dict[str, Any] = {
    "architectures": ["MERTModel"],
    "model_type": "mert_model",
    "sample_rate": SAMPLE_RATE,
    "feat_extract_activation": "gelu",
    "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "conv_pos_batch_norm": False,
    "feat_proj_layer_norm": True,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "mask_time_prob": 0.05,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "deepnorm": False,
}
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    DEFAULT_CHECKPOINT: {
        **_MERT_COMMON,
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "feat_extract_norm": "group", "do_stable_layer_norm": False,
        "conv_bias": False, "attention_relax": -1.0,
    },
    LARGE_CHECKPOINT: {
        **_MERT_COMMON,
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "intermediate_size": 4096, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
        "conv_bias": True, "attention_relax": 32.0,
    },
}
#: MERT-v1's published preprocessor_config.json (m-a-p/MERT-v1-95M and -330M): no normalisation, 24 kHz.
BUILTIN_PREPROCESSOR: dict[str, Any] = {"do_normalize": False, "sampling_rate": SAMPLE_RATE}


def mert_to_hubert_config(mert: dict[str, Any], source: str = "config.json") -> Any:
    """``HubertConfig`` computing exactly what MERT's ``config.json`` describes (see module doc).

    Raises:
        ModelError: the config asks for something ``HubertModel`` does not compute.
    """
    from transformers import HubertConfig

    model_type = mert.get("model_type", "mert_model")
    if model_type not in ("mert_model", "hubert"):
        raise ModelError(f"{source}: model_type {model_type!r} is not a MERT/HuBERT checkpoint")
    if mert.get("deepnorm", False):
        raise ModelError(
            f"{source}: deepnorm=true (residual scaling) is not supported without the checkpoint's "
            "own code; use --trust-remote-code"
        )
    if mert.get("feature_extractor_cqt", False):
        raise ModelError(
            f"{source}: feature_extractor_cqt=true (nnAudio CQT input features) is not supported "
            "without the checkpoint's own code; use --trust-remote-code"
        )
    norm = mert.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise ModelError(f"{source}: feat_extract_norm {norm!r} is neither 'group' nor 'layer'")
    unknown = sorted(k for k in mert if k not in HONOURED_FIELDS and k not in INERT_FIELDS)
    if unknown:
        warnings.warn(
            f"{source}: config fields not known to MERT-v1 are ignored: {', '.join(unknown)}",
            stacklevel=2,
        )
    kwargs = {k: mert[k] for k in (*HONOURED_FIELDS, *_COPIED_INERT) if k in mert}
    try:
        return HubertConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{source}: invalid MERT config ({exc})") from None


def load_mert_state_dict(files: tuple[Path, ...]) -> dict[str, torch.Tensor]:
    """Tensors of the weights files (safetensors or torch ``.bin``, shards merged), on CPU."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.name.endswith(".safetensors"):
                from safetensors.torch import load_file

                state.update(load_file(str(path), device="cpu"))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # corrupt or foreign file
            raise ModelError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None
    return state


def map_mert_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename MERT checkpoint keys to ``HubertModel``'s: drop a wrapper prefix, weight-norm names."""
    for prefix in ("mert_model.", "hubert.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for old, param in ((".weight_g", ".parametrizations.weight.original0"),
                           (".weight_v", ".parametrizations.weight.original1")):
            if key.endswith(old):
                candidate = key[: -len(old)] + param
                if candidate in expected:
                    new = candidate
        renamed[new] = value
    return renamed


def load(request: EncoderRequest) -> ConvTransformerEncoder:
    """MERT encoder for ``request`` (see the module docstring for what is mapped or refused)."""
    checkpoint = request.checkpoint or DEFAULT_CHECKPOINT
    if request.trust_remote_code:
        return _load_remote_code(replace(request, checkpoint=checkpoint))
    from transformers import HubertModel

    ckpt: ResolvedCheckpoint | None
    if request.weights == "pretrained":
        ckpt = resolve_checkpoint(checkpoint)
        mert_config = ckpt.read_json("config.json") or {}
        config = mert_to_hubert_config(mert_config, str(ckpt.config_path))
        model = _pretrained_hubert(HubertModel, config, ckpt)
    else:
        ckpt = try_resolve_config(checkpoint)
        if ckpt is not None:
            mert_config = ckpt.read_json("config.json") or {}
        elif checkpoint in BUILTIN_CONFIGS:
            mert_config = BUILTIN_CONFIGS[checkpoint]
        else:
            raise ModelError(
                f"checkpoint {checkpoint!r}: config.json not available offline and no built-in "
                "config; pass a local MERT directory"
            )
        config = mert_to_hubert_config(mert_config, f"{checkpoint}/config.json")
        model = random_model(HubertModel, config, request.seed)
    return _encoder(request, model, ckpt, checkpoint, mert_config, remote_code=False)


def _pretrained_hubert(model_cls: Any, config: Any, ckpt: ResolvedCheckpoint) -> torch.nn.Module:
    """``HubertModel`` with the checkpoint's weights; missing weights are an error."""
    model = random_model(model_cls, config, seed=0)
    expected = set(model.state_dict())
    state = map_mert_keys(load_mert_state_dict(ckpt.weight_files), expected)
    result = model.load_state_dict(state, strict=False)
    missing = sorted(set(result.missing_keys) - INFERENCE_IRRELEVANT_KEYS)
    if missing:
        raise ModelError(
            f"{ckpt.weight_files[0]}: {len(missing)} HubertModel weights missing from the "
            f"checkpoint (e.g. {', '.join(missing[:3])})"
        )
    if result.unexpected_keys:
        warnings.warn(
            f"{ckpt.weight_files[0]}: ignored {len(result.unexpected_keys)} weights not used by "
            f"HubertModel (e.g. {', '.join(sorted(result.unexpected_keys)[:3])})",
            stacklevel=3,
        )
    return model.eval()


def _encoder(
    request: EncoderRequest,
    model: torch.nn.Module,
    ckpt: ResolvedCheckpoint | None,
    checkpoint: str,
    mert_config: dict[str, Any],
    *,
    remote_code: bool,
) -> ConvTransformerEncoder:
    pre = read_preprocessor(ckpt) or BUILTIN_PREPROCESSOR
    sample_rate = int(pre.get("sampling_rate", mert_config.get("sample_rate", SAMPLE_RATE)))
    declared = mert_config.get("sample_rate")
    if declared is not None and int(declared) != sample_rate:
        raise ModelError(
            f"{checkpoint}: config.json sample_rate {declared} differs from the feature "
            f"extractor's sampling_rate {sample_rate}"
        )
    return ConvTransformerEncoder(
        name=request.name,
        model=model,
        sample_rate=sample_rate,
        do_normalize=bool(pre.get("do_normalize", True)),
        window_seconds=request.window_seconds or DEFAULT_WINDOW_SECONDS,
        checkpoint=ckpt,
        checkpoint_id=checkpoint,
        weights=request.weights,
        seed=request.seed,
        autocast_dtype=request.dtype,
        extra_info={
            "loader": "checkpoint's own code (trust_remote_code)" if remote_code
            else "transformers HubertModel (MERT config mapped, no remote code)",
            "mert_config": {k: mert_config[k] for k in (*HONOURED_FIELDS, "attention_relax",
                            "deepnorm", "feature_extractor_cqt") if k in mert_config},
            "preprocessor_config": "checkpoint" if read_preprocessor(ckpt) else "built-in default",
        },
    )


def _load_remote_code(request: EncoderRequest) -> ConvTransformerEncoder:
    """Opt-in: the repository's own ``MERTModel`` through ``AutoModel(trust_remote_code=True)``."""
    from transformers import AutoConfig, AutoModel

    checkpoint = str(request.checkpoint)
    probe = resolve_checkpoint(checkpoint, need_weights=False)
    auto_map = (probe.read_json("config.json") or {}).get("auto_map", {})
    modules = sorted({str(v).split(".")[0] + ".py" for v in auto_map.values()})
    ckpt = resolve_checkpoint(
        checkpoint,
        need_weights=request.weights == "pretrained",
        extra_files=("preprocessor_config.json", *modules),
    )
    mert_config = ckpt.read_json("config.json") or {}
    try:
        with quiet_transformers():
            if request.weights == "pretrained":
                model = AutoModel.from_pretrained(
                    ckpt.directory, trust_remote_code=True, local_files_only=True
                )
            else:
                config = AutoConfig.from_pretrained(
                    ckpt.directory, trust_remote_code=True, local_files_only=True
                )
                model = random_model(lambda c: AutoModel.from_config(c, trust_remote_code=True),
                                     config, request.seed)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"{ckpt.directory}: the checkpoint's own code failed to load ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    for attr in ("_get_feat_extract_output_lengths",):
        if not hasattr(model, attr):
            raise ModelError(f"{ckpt.directory}: remote model {type(model).__name__} is not HuBERT-shaped")
    return _encoder(request, model.float().eval(), ckpt, checkpoint, mert_config, remote_code=True)
