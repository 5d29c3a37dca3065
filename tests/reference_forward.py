"""A wav2vec 2.0 / HuBERT / MERT-v1 forward pass written out with torch functional ops, for tests.

Independent of transformers' model classes: it reads a checkpoint's own ``config.json`` and weights
and computes, for one unpadded clip, the layers in the transformers 4.x / MERT convention:

* conv feature encoder: per conv layer ``conv1d`` (stride, optional bias), then a LayerNorm over
  channels on every layer (``feat_extract_norm == "layer"``) or a per-channel GroupNorm over time on
  the first layer only (``"group"``), then GELU;
* feature projection: LayerNorm over the conv channels (``feat_proj_layer_norm``), Linear;
* positional conv: a weight-normalised (norm over all but the kernel axis) grouped ``conv1d`` with
  ``kernel // 2`` padding, the last frame dropped for an even kernel, GELU, added to the features;
* post-LN encoder (``do_stable_layer_norm`` false): encoder LayerNorm, then per layer
  ``x = LN(x + attn(x)); x = LN(x + ffn(x))``; layer 0 is the normalised input of layer 1;
* pre-LN encoder (``do_stable_layer_norm`` true): per layer ``x = x + attn(LN(x));
  x = x + ffn(LN(x))``; the last layer is taken after the encoder's final LayerNorm.

Weights use transformers' current names (``...pos_conv_embed.conv.parametrizations.weight.original0``
and ``original1``); :func:`read_checkpoint` renames MERT's legacy ``weight_g`` / ``weight_v``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

Weights = Mapping[str, torch.Tensor]
CONV_NORM_EPS = 1e-5  # nn.LayerNorm / nn.GroupNorm defaults, used by the conv feature encoder
WEIGHT_G = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
WEIGHT_V = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"


def read_checkpoint(
    directory: str | Path, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights (keys under ``prefix`` only, prefix removed) and ``config.json`` of a checkpoint."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if (directory / "model.safetensors").exists():
        from safetensors.torch import load_file

        raw = load_file(str(directory / "model.safetensors"))
    else:
        raw = torch.load(directory / "pytorch_model.bin", weights_only=True)
    weights = {}
    for key, value in raw.items():
        if key.startswith(prefix):
            key = key[len(prefix):].replace(".weight_g", ".parametrizations.weight.original0")
            weights[key.replace(".weight_v", ".parametrizations.weight.original1")] = value.float()
    return weights, config


def parameter_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name and shape of every weight :func:`reference_layers` reads for ``config``."""
    dims, kernels = list(config["conv_dim"]), list(config["conv_kernel"])
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    pos_kernel, groups = config["num_conv_pos_embeddings"], config["num_conv_pos_embedding_groups"]
    layer_norm = config["feat_extract_norm"] == "layer"
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (dim, kernel) in enumerate(zip(dims, kernels)):
        p = f"feature_extractor.conv_layers.{i}."
        shapes[p + "conv.weight"] = (dim, dims[i - 1] if i else 1, kernel)
        if config.get("conv_bias", False):
            shapes[p + "conv.bias"] = (dim,)
        if layer_norm or i == 0:
            shapes.update({p + "layer_norm.weight": (dim,), p + "layer_norm.bias": (dim,)})
    if config.get("feat_proj_layer_norm", True) is not False:
        shapes.update({"feature_projection.layer_norm.weight": (dims[-1],),
                       "feature_projection.layer_norm.bias": (dims[-1],)})
    shapes.update({"feature_projection.projection.weight": (hidden, dims[-1]),
                   "feature_projection.projection.bias": (hidden,),
                   WEIGHT_G: (1, 1, pos_kernel), WEIGHT_V: (hidden, hidden // groups, pos_kernel),
                   "encoder.pos_conv_embed.conv.bias": (hidden,),
                   "encoder.layer_norm.weight": (hidden,), "encoder.layer_norm.bias": (hidden,)})
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({f"{p}attention.{name}.weight": (hidden, hidden),
                           f"{p}attention.{name}.bias": (hidden,)})
        for name in ("layer_norm", "final_layer_norm"):
            shapes.update({f"{p}{name}.weight": (hidden,), f"{p}{name}.bias": (hidden,)})
        shapes.update({f"{p}feed_forward.intermediate_dense.weight": (ffn, hidden),
                       f"{p}feed_forward.intermediate_dense.bias": (ffn,),
                       f"{p}feed_forward.output_dense.weight": (hidden, ffn),
                       f"{p}feed_forward.output_dense.bias": (hidden,)})
    return shapes


def normalize(waveform: torch.Tensor) -> torch.Tensor:
    """``Wav2Vec2FeatureExtractor(do_normalize=True)`` on one clip: ``(x - mean) / sqrt(var + 1e-7)``."""
    waveform = waveform.double()
    return ((waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-7)).float()


def output_frames(samples: Any, config: Mapping[str, Any]) -> Any:
    """Frames out of the conv stack for ``samples`` (int or integer tensor).

    ``n -> (n - kernel) // stride + 1`` per conv layer.
    """
    for kernel, stride in zip(config["conv_kernel"], config["conv_stride"]):
        samples = (samples - kernel) // stride + 1
    return samples


def _norm(w: Weights, prefix: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)


def conv_features(w: Weights, config: Mapping[str, Any], waveform: torch.Tensor) -> torch.Tensor:
    """Conv feature encoder: ``[samples]`` -> ``[frames, conv_dim[-1]]``."""
    x = waveform[None, None, :]
    for i, stride in enumerate(config["conv_stride"]):
        p = f"feature_extractor.conv_layers.{i}."
        x = F.conv1d(x, w[p + "conv.weight"], w.get(p + "conv.bias"), stride=stride)
        if config["feat_extract_norm"] == "layer":
            x = _norm(w, p + "layer_norm", x.transpose(1, 2), CONV_NORM_EPS).transpose(1, 2)
        elif i == 0:
            x = F.group_norm(x, x.shape[1], w[p + "layer_norm.weight"], w[p + "layer_norm.bias"],
                             CONV_NORM_EPS)
        x = F.gelu(x)
    return x[0].T


def positional(w: Weights, config: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor:
    """Positional conv embedding of ``x`` ``[frames, hidden]`` (same shape)."""
    g, v = w[WEIGHT_G], w[WEIGHT_V]
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)
    kernel = config["num_conv_pos_embeddings"]
    y = F.conv1d(x.T[None], weight, w["encoder.pos_conv_embed.conv.bias"], padding=kernel // 2,
                 groups=config["num_conv_pos_embedding_groups"])
    if kernel % 2 == 0:
        y = y[:, :, :-1]
    return F.gelu(y[0].T)


def attention(w: Weights, prefix: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head self-attention over ``x`` ``[frames, hidden]``, no mask."""
    frames, hidden = x.shape

    def split(name: str) -> torch.Tensor:
        y = F.linear(x, w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"])
        return y.reshape(frames, heads, hidden // heads).transpose(0, 1)

    q, k, v = split("q_proj"), split("k_proj"), split("v_proj")
    probs = torch.softmax(q @ k.transpose(1, 2) / (hidden // heads) ** 0.5, dim=-1)
    out = (probs @ v).transpose(0, 1).reshape(frames, hidden)
    return F.linear(out, w[prefix + "out_proj.weight"], w[prefix + "out_proj.bias"])


def feed_forward(w: Weights, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Linear, GELU, Linear."""
    h = F.gelu(F.linear(x, w[prefix + "intermediate_dense.weight"], w[prefix + "intermediate_dense.bias"]))
    return F.linear(h, w[prefix + "output_dense.weight"], w[prefix + "output_dense.bias"])


def transformer_layer(w: Weights, config: Mapping[str, Any], i: int, x: torch.Tensor) -> torch.Tensor:
    """Transformer layer ``i`` (0-based) on ``x`` ``[frames, hidden]``, pre-LN or post-LN."""
    p, eps, heads = f"encoder.layers.{i}.", config["layer_norm_eps"], config["num_attention_heads"]
    if config.get("do_stable_layer_norm", False):
        x = x + attention(w, p + "attention.", _norm(w, p + "layer_norm", x, eps), heads)
        return x + feed_forward(w, p + "feed_forward.", _norm(w, p + "final_layer_norm", x, eps))
    x = _norm(w, p + "layer_norm", x + attention(w, p + "attention.", x, heads), eps)
    return _norm(w, p + "final_layer_norm", x + feed_forward(w, p + "feed_forward.", x), eps)


def reference_layers(w: Weights, config: Mapping[str, Any], waveform: torch.Tensor) -> list[torch.Tensor]:
    """Every layer (``num_hidden_layers + 1`` tensors ``[frames, hidden]``) for one clip ``[samples]``.

    ``waveform`` is the model input (already normalised where the feature extractor does so).
    """
    eps, stable = config["layer_norm_eps"], config.get("do_stable_layer_norm", False)
    x = conv_features(w, config, waveform)
    if config.get("feat_proj_layer_norm", True) is not False:
        x = _norm(w, "feature_projection.layer_norm", x, eps)
    x = F.linear(x, w["feature_projection.projection.weight"], w["feature_projection.projection.bias"])
    x = x + positional(w, config, x)
    layers = [x if stable else _norm(w, "encoder.layer_norm", x, eps)]
    for i in range(config["num_hidden_layers"]):
        layers.append(transformer_layer(w, config, i, layers[-1]))
    if stable:
        layers[-1] = _norm(w, "encoder.layer_norm", layers[-1], eps)
    return layers
