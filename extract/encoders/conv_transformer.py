"""Shared encoder for the wav2vec 2.0 family: a strided conv feature encoder, then a transformer.

wav2vec 2.0 (``Wav2Vec2Model``), HuBERT and MERT (``HubertModel``) share the same shape:
``num_hidden_layers + 1`` layers, each ``[batch, frames, hidden]``, at ``sample_rate /
prod(conv_stride)`` frames per second.

Layer convention (transformers 4.x ``hidden_states``, the one MERT's code and published layer-wise
results use; the same whatever transformers is installed): ``layer_00`` is the input of the first
transformer layer, the projected conv features plus the positional conv (then the encoder LayerNorm
for post-LN models); ``layer_k`` is the output of transformer layer ``k``; the last layer is the
model's ``last_hidden_state``, which for pre-LN (``do_stable_layer_norm``) models is taken after the
encoder's final LayerNorm. transformers 5.x records the last entry of ``hidden_states`` before that
LayerNorm, so we take the last layer from ``last_hidden_state`` instead.

Preprocessing is the checkpoint's ``Wav2Vec2FeatureExtractor`` and nothing else: with
``do_normalize`` each clip is scaled to zero mean and unit variance over its valid samples,
``(x - mean) / sqrt(var + 1e-7)``, padding stays zero.

Padding: with ``feat_extract_norm == "group"`` (wav2vec2-base, MERT-v1-95M) the first conv layer's
GroupNorm normalises over the whole time axis, so padding changes results: such models run as
equal-length groups (see :mod:`.base`). With ``"layer"`` norm (MERT-v1-330M, wav2vec2-large-lv60)
every valid frame's receptive field lies inside the clip, padded frames are zeroed before the
positional conv and masked in attention, so a padded batch with an attention mask is exact.

Clips shorter than the conv stack's receptive field (400 samples for the standard stack, 25 ms at
16 kHz) give no complete frame: :attr:`ConvTransformerEncoder.min_samples` is that field and shorter
clips are refused (a failure for this encoder, with the lengths in the reason) rather than padded
into a frame that is mostly zeros. In training mode with SpecAugment time masking on, the minimum
grows to ``mask_time_length`` frames, the fewest transformers can mask. A silent clip of any valid
length is encoded as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from embedstore.errors import ModelError

from .base import Encoder, EncoderOutput, mask_frames, sha256_files, state_dict_sha256
from .checkpoints import ResolvedCheckpoint

NORMALIZE_EPS = 1e-7


def normalize_waveforms(waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean unit-variance per item over its valid samples (``Wav2Vec2FeatureExtractor``).

    Args:
        waveforms: ``[batch, samples]`` float32, zeros past ``lengths``.
        lengths: ``[batch]`` valid samples.

    Returns:
        ``[batch, samples]``: ``(x - mean) / sqrt(var + 1e-7)`` on the valid part, zeros after.
    """
    valid = torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < lengths[:, None]
    n = lengths.to(waveforms.dtype)[:, None]
    mean = (waveforms * valid).sum(dim=1, keepdim=True) / n
    var = (((waveforms - mean) * valid) ** 2).sum(dim=1, keepdim=True) / n
    return (waveforms - mean) / torch.sqrt(var + NORMALIZE_EPS) * valid


def receptive_field(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> int:
    """Fewest input samples that give one output frame through the conv stack."""
    samples = 1
    for kernel, stride in reversed(list(zip(conv_kernel, conv_stride))):
        samples = (samples - 1) * stride + kernel
    return samples


def layer_convention(stable_layer_norm: bool) -> str:
    """What ``layer_00`` and the last layer hold, for the entry's metadata (see the module doc)."""
    if stable_layer_norm:
        return ("transformers 4.x hidden_states (pre-LN): layer_00 = projected conv features + "
                "positional conv; layer_k = output of transformer layer k; last layer = "
                "last_hidden_state, after the encoder's final LayerNorm")
    return ("transformers 4.x hidden_states (post-LN): layer_00 = encoder LayerNorm(projected conv "
            "features + positional conv); layer_k = output of transformer layer k; last layer = "
            "last_hidden_state")


class ConvTransformerEncoder(Encoder):
    """Every hidden state of a wav2vec2-shaped transformers model (``Wav2Vec2Model``, ``HubertModel``).

    Layers: ``layer_00`` (conv features after projection and positional conv) to
    ``layer_{num_hidden_layers}`` (``last_hidden_state``); each ``[batch, frames, hidden_size]``.
    See the module docstring and :func:`layer_convention` for what each layer is.
    """

    def __init__(
        self,
        *,
        name: str,
        model: torch.nn.Module,
        sample_rate: int,
        do_normalize: bool,
        window_seconds: float,
        checkpoint: ResolvedCheckpoint | None,
        checkpoint_id: str,
        weights: str,
        seed: int | None,
        autocast_dtype: str = "auto",
        extra_info: dict[str, Any] | None = None,
    ) -> None:
        config = model.config
        hop = 1
        for stride in config.conv_stride:
            hop *= int(stride)
        super().__init__(
            name=name,
            sample_rate=sample_rate,
            layer_names=[f"layer_{i:02d}" for i in range(config.num_hidden_layers + 1)],
            layer_widths=[config.hidden_size] * (config.num_hidden_layers + 1),
            frame_rate=sample_rate / hop,
            window_seconds=window_seconds,
            autocast_dtype=autocast_dtype,
        )
        self.model = model.eval()
        self.do_normalize = bool(do_normalize)
        self.hop_samples = hop
        self.receptive_samples = receptive_field(config.conv_kernel, config.conv_stride)
        # GroupNorm over time in the first conv layer makes padding change results.
        self.padding_exact = config.feat_extract_norm == "layer"
        self._checkpoint = checkpoint
        self._checkpoint_id = checkpoint_id
        self._weights = weights
        self._seed = seed
        self._extra_info = dict(extra_info or {})
        self._weights_digest: dict[str, str] | None = None

    @property
    def min_samples(self) -> int:
        """The conv stack's receptive field; with SpecAugment time masking in training mode, the
        samples of ``mask_time_length`` frames (transformers cannot mask fewer)."""
        config = self.model.config
        if self.model.training and getattr(config, "apply_spec_augment", False) and getattr(config, "mask_time_prob", 0) > 0:
            return self.receptive_samples + (int(config.mask_time_length) - 1) * self.hop_samples
        return self.receptive_samples

    def encode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Hidden states ``[batch, frames, hidden]`` of every layer (see the class docstring)."""
        if self.do_normalize:
            waveforms = normalize_waveforms(waveforms, lengths)
        model_lengths = lengths  # forward() refused items shorter than min_samples
        attention_mask = None
        if self.padding_exact and bool((model_lengths < waveforms.shape[1]).any()):
            positions = torch.arange(waveforms.shape[1], device=waveforms.device)
            attention_mask = (positions[None, :] < model_lengths[:, None]).long()
        out = self.model(waveforms, attention_mask=attention_mask, output_hidden_states=True)
        frame_lengths = self.model._get_feat_extract_output_lengths(model_lengths).long()
        states = tuple(mask_frames(h, frame_lengths) for h in self._layers(out))
        return EncoderOutput(states, frame_lengths)

    def _layers(self, out: Any) -> list[torch.Tensor]:
        """The model output's layers in the 4.x convention: ``hidden_states`` with the last one
        replaced by ``last_hidden_state`` (after the final LayerNorm of pre-LN encoders)."""
        hidden = list(out.hidden_states or ())
        if len(hidden) != self.num_layers:
            raise ModelError(
                f"{self._checkpoint_id}: {type(self.model).__name__} returned {len(hidden)} hidden "
                f"states, expected {self.num_layers} (num_hidden_layers + 1)"
            )
        hidden[-1] = out.last_hidden_state
        return hidden

    def describe_model(self) -> dict[str, Any]:
        """Checkpoint, revision, weights sha256, architecture, layer convention and preprocessing."""
        config = self.model.config
        if self._weights_digest is None:
            if self._weights == "pretrained" and self._checkpoint is not None:
                self._weights_digest = sha256_files(self._checkpoint.weight_files)
            else:
                self._weights_digest = {"state_dict": state_dict_sha256(self.model)}
        info: dict[str, Any] = {
            "checkpoint": self._checkpoint_id,
            "checkpoint_path": str(self._checkpoint.directory) if self._checkpoint else None,
            "revision": self._checkpoint.revision if self._checkpoint else None,
            "weights": self._weights,
            "seed": self._seed if self._weights == "random" else None,
            "weights_sha256": self._weights_digest,
            "architecture": type(self.model).__name__,
            "layer_convention": layer_convention(bool(config.do_stable_layer_norm)),
            "architecture_config": {
                "hidden_size": config.hidden_size,
                "num_hidden_layers": config.num_hidden_layers,
                "num_attention_heads": config.num_attention_heads,
                "intermediate_size": config.intermediate_size,
                "conv_dim": list(config.conv_dim),
                "conv_kernel": list(config.conv_kernel),
                "conv_stride": list(config.conv_stride),
                "feat_extract_norm": config.feat_extract_norm,
                "do_stable_layer_norm": config.do_stable_layer_norm,
            },
            "preprocessing": {
                "feature_extractor": "Wav2Vec2FeatureExtractor",
                "do_normalize": self.do_normalize,
                "normalization": (
                    "per clip over valid samples: (x - mean) / sqrt(var + 1e-7)"
                    if self.do_normalize
                    else "none"
                ),
                "min_samples": self.receptive_samples,
                "short_clips": f"clips under {self.receptive_samples} samples (the receptive field) are refused",
            },
            "hop_samples": self.hop_samples,
        }
        info.update(self._extra_info)
        return info
