"""The fine-tuned network: an unfrozen encoder, layer selection, mean pooling and the study's MLP head.

Data path of :class:`FinetuneModel`::

    waveforms [batch, samples] --encoder (gradients on)--> hidden states, one [batch, frames, dim] per layer
        --mean over each item's valid frames--> [batch, layers, dim]
        --layer selection: softmax-weighted sum of all layers (LayerWeighting) or one layer--> [batch, dim]
        --MLPHead--> logits [batch, classes]

Pooling is extraction's own clip pooler (:mod:`embedstore.extract.encoding`,
:mod:`embedstore.extract.pooling`), not a copy of it. Training feeds one crop per clip (at most one
encoder window, so the clip's only window): :func:`~embedstore.extract.encoding.window_frames` and
:func:`~embedstore.extract.pooling.window_moments` with autograd on. Evaluation feeds FULL clips to
:func:`~embedstore.extract.encoding.pool_clips`, the function ``extract`` uses: the same window rule,
the same frames skipped in an end-aligned last window, the same exact merge. So
:meth:`FinetuneModel.clip_features` equals what ``extract`` (and ``export_to_store``) writes into the
store for the same encoder weights, and the head applied to the stored rows gives the same logits.

:class:`FinetunedEncoder` wraps the trained encoder so that ``extract_dataset`` records it as its own
model entry (weights hash of the fine-tuned state, provenance of the run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from embedstore.extract.encoders.base import Encoder, EncoderOutput, state_dict_sha256
from embedstore.extract.encoding import pool_clips, window_frames
from embedstore.extract.pooling import window_moments
from embedstore.heads.mlp import MLPHead, WeightedLayerMLP
from embedstore.store.specs import resolve_layers

WEIGHTED = "weighted"


def resolve_layer(layer: int | str, encoder: Encoder) -> int | str:
    """Check a ``layer`` option against ``encoder`` (:func:`~embedstore.store.specs.resolve_layers`):
    ``"weighted"``, an index (negative counts from the end) or a layer name. Returns ``"weighted"``
    or a non-negative index.

    Raises:
        ModelError: unknown layer, index out of range, or ``weighted`` over layers of unequal widths.
    """
    picked = resolve_layers(layer, list(encoder.layer_names), model=encoder.name, words=(WEIGHTED,),
                            widths=list(encoder.layer_widths))
    return WEIGHTED if picked.mode == WEIGHTED else picked.indices[0]


def freeze_feature_encoder(encoder: Encoder) -> bool:
    """Freeze the convolutional feature encoder of a wav2vec2-shaped transformers model inside
    ``encoder`` (``freeze_feature_encoder()`` or ``feature_extractor._freeze_parameters()``).

    Returns whether a feature encoder was found and frozen.
    """
    hf = getattr(encoder, "model", None)
    if hf is None:
        return False
    if hasattr(hf, "freeze_feature_encoder"):
        hf.freeze_feature_encoder()
        return True
    extractor = getattr(hf, "feature_extractor", None)
    if extractor is not None and hasattr(extractor, "_freeze_parameters"):
        extractor._freeze_parameters()
        return True
    return False


def enable_gradient_checkpointing(encoder: Encoder) -> bool:
    """Turn on transformers' activation (gradient) checkpointing of the model inside ``encoder``
    (non-reentrant, so it works with a frozen feature encoder). Returns whether it was enabled."""
    hf = getattr(encoder, "model", None)
    if hf is None or not getattr(hf, "supports_gradient_checkpointing", False):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x name
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return True


def disable_layerdrop(encoder: Encoder) -> float:
    """Set LayerDrop of the transformers model inside ``encoder`` to 0 and return its old value.

    LayerDrop skips whole transformer layers in training mode, and transformers then returns fewer
    hidden states, which breaks the per-layer selection; it must be off while fine-tuning.
    """
    config = getattr(getattr(encoder, "model", None), "config", None)
    old = float(getattr(config, "layerdrop", 0.0) or 0.0)
    if config is not None and hasattr(config, "layerdrop"):
        config.layerdrop = 0.0
    return old


def set_spec_augment(encoder: Encoder, enabled: bool) -> bool:
    """Turn transformers' SpecAugment time/feature masking (active in training mode only) on or off
    for the model inside ``encoder``. Returns whether the model has the setting."""
    config = getattr(getattr(encoder, "model", None), "config", None)
    if config is None or not hasattr(config, "apply_spec_augment"):
        return False
    config.apply_spec_augment = bool(enabled)
    return True


class FinetuneModel(nn.Module):
    """Encoder + layer selection + mean pooling + MLP head (see the module docstring).

    Args:
        encoder: any :class:`Encoder`; set ``encoder.frozen = False`` to train it.
        n_classes: number of output classes.
        layer: ``"weighted"`` (softmax-weighted sum of all layers) or a layer index.
        hidden, dropout: the MLP head's hidden width and dropout.

    Attributes:
        layers: indices of the layers fed to the head (all for ``weighted``).
    """

    def __init__(self, encoder: Encoder, n_classes: int, layer: int | str = WEIGHTED,
                 hidden: int = 512, dropout: float = 0.25) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer = resolve_layer(layer, encoder)
        if self.layer == WEIGHTED:
            self.layers = list(range(encoder.num_layers))
            self.head: nn.Module = WeightedLayerMLP(encoder.num_layers, encoder.layer_widths[0], n_classes,
                                                    hidden=hidden, dropout=dropout)
        else:
            self.layers = [int(self.layer)]
            self.head = MLPHead(encoder.layer_widths[int(self.layer)], n_classes, hidden=hidden, dropout=dropout)
        self.n_classes = int(n_classes)

    @property
    def device(self) -> torch.device:
        """Device of the encoder (and the head)."""
        return self.encoder.device

    def layer_weights(self) -> list[float] | None:
        """The softmax layer weights ``[layers]`` of the weighted head, else None."""
        if isinstance(self.head, WeightedLayerMLP):
            return [float(w) for w in self.head.weighting.weights.detach().cpu()]
        return None

    # ---- pooling (extraction's clip pooler) ------------------------------------------------
    def window_features(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean of each window's valid frames per selected layer, with gradients in training.

        Args:
            waveforms: ``[batch, samples]`` zero-padded single windows (crops no longer than the
                encoder's window); lengths: ``[batch]``.

        Returns:
            ``[batch, layers, dim]`` float32.
        """
        frames = window_frames(self.encoder, waveforms, lengths, [0.0] * waveforms.shape[0], self.layers)
        return torch.stack([window_moments(*f).mean for f in frames], dim=1)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` of pooled features ``[B, layers, dim]`` (selected layers)."""
        return self.head(features if self.layer == WEIGHTED else features[:, 0])

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, classes]`` of a zero-padded batch of single windows.

        Args:
            waveforms: ``[batch, samples]`` at the encoder's sample rate; lengths: ``[batch]``.
        """
        return self.head_logits(self.window_features(waveforms, lengths))

    # ---- full clips --------------------------------------------------------------------------
    def clip_features(self, waves: Sequence[np.ndarray], batch_size: int = 8) -> torch.Tensor:
        """Pooled features of full clips by :func:`~embedstore.extract.encoding.pool_clips` (see the
        module docstring); runs under the caller's grad mode.

        Args:
            waves: float32 clips ``[samples]`` at the encoder's sample rate.
            batch_size: windows per encoder call.

        Returns:
            ``[clips, layers, dim]`` float32 on the model's device: per selected layer, the mean of
            every frame of the clip (each moment of audio counted once), the row ``extract`` stores.
        """
        moments = pool_clips(self.encoder, waves, self.layers, batch_size)
        return torch.stack([m.mean for m in moments], dim=1)


class FinetunedEncoder(Encoder):
    """A trained encoder presented as its own model for ``extract_dataset`` (``--export-to-store``).

    It runs ``base.encode_batch`` unchanged; :meth:`describe_model` reports the fine-tuned weights'
    hash (``weights_sha256``), keeps the base checkpoint's as ``base_weights_sha256``, sets
    ``weights`` to ``"finetuned"`` and adds ``finetune`` (the run's provenance).
    """

    def __init__(self, base: Encoder, provenance: dict[str, Any]) -> None:
        super().__init__(
            name=base.name,
            sample_rate=base.sample_rate,
            layer_names=base.layer_names,
            layer_widths=base.layer_widths,
            frame_rate=base.frame_rate,
            window_seconds=base.window_seconds,
            layer_frame_rates=base.layer_frame_rates,
            autocast_dtype=base.autocast_dtype,
        )
        self.base = base
        self.padding_exact = base.padding_exact
        self.provenance = dict(provenance)
        self.to(base.device)

    @property
    def min_samples(self) -> int:
        """The base encoder's :attr:`~Encoder.min_samples`."""
        return self.base.min_samples

    def encode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """The base encoder's :meth:`~Encoder.encode_batch` (hidden states ``[batch, frames, dim]``)."""
        return self.base.encode_batch(waveforms, lengths)

    def describe_model(self) -> dict[str, Any]:
        """The base encoder's description with the fine-tuned weights' hash and the run's provenance."""
        info = dict(self.base.describe_model())
        info["base_weights"] = info.get("weights")
        info["base_weights_sha256"] = info.pop("weights_sha256", None)
        info["weights"] = "finetuned"
        info["weights_sha256"] = {"state_dict": state_dict_sha256(self.base)}
        info["finetune"] = self.provenance
        return info
