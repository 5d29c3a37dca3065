"""The captioning head: stored audio embeddings -> layer mix -> projection -> T5 -> text.

A clip arrives as a sequence of stored frame embeddings ``[layers, frames, dim]`` (a pooled
vector, e.g. CLAP's 512-d audio embedding, is a one-frame sequence). The layers are combined by a
learnable :class:`LayerMix`, projected to T5's ``d_model`` and fed to the T5 encoder as
``inputs_embeds`` with an attention mask built from the per-clip frame counts; the T5 decoder writes
the caption. Only the stored embeddings are used: the audio encoder stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from embedstore.errors import ModelError

LayerMixMode = Literal["softmax", "conv1x1"]
LAYER_MIX_MODES: tuple[str, ...] = ("softmax", "conv1x1")


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding options for :meth:`AudioCaptioner.generate` (beam search, repetition control)."""

    num_beams: int = 4
    max_new_tokens: int = 64
    no_repeat_ngram_size: int = 3
    repetition_penalty: float = 1.2
    length_penalty: float = 1.0

    def as_kwargs(self) -> dict[str, float | int | bool]:
        """Keyword arguments for ``transformers``' ``generate``."""
        return {
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "repetition_penalty": self.repetition_penalty,
            "length_penalty": self.length_penalty,
            "early_stopping": self.num_beams > 1,
            "do_sample": False,
        }


class LayerMix(nn.Module):
    """Learnable combination of encoder layers: ``[batch, layers, frames, dim] -> [batch, frames, dim]``.

    ``mode="softmax"``: a weight per layer, softmax-normalised (starts uniform), weighted sum.
    ``mode="conv1x1"``: the study's ``Conv1d(layers, 1, kernel_size=1)`` with layers as channels,
    i.e. an unnormalised weighted sum plus a bias.
    A single layer passes straight through (no parameters).
    """

    def __init__(self, num_layers: int, mode: LayerMixMode = "softmax") -> None:
        super().__init__()
        if mode not in LAYER_MIX_MODES:
            raise ModelError(f"--layer-mix: unknown mode {mode!r}; choose one of {', '.join(LAYER_MIX_MODES)}")
        if num_layers < 1:
            raise ModelError(f"LayerMix: num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.mode = mode
        self.logits: nn.Parameter | None = None
        self.conv: nn.Conv1d | None = None
        if num_layers > 1 and mode == "softmax":
            self.logits = nn.Parameter(torch.zeros(num_layers))
        elif num_layers > 1:
            self.conv = nn.Conv1d(num_layers, 1, kernel_size=1)

    def weights(self) -> torch.Tensor:
        """The current per-layer weights ``[layers]`` (softmax probabilities or conv kernel)."""
        if self.logits is not None:
            return torch.softmax(self.logits, dim=0)
        if self.conv is not None:
            return self.conv.weight.reshape(-1)
        return torch.ones(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix ``x`` ``[batch, layers, frames, dim]`` into ``[batch, frames, dim]``."""
        if x.dim() != 4 or x.shape[1] != self.num_layers:
            raise ModelError(
                f"LayerMix: expected input [batch, {self.num_layers}, frames, dim], got {tuple(x.shape)}"
            )
        if self.logits is not None:
            w = torch.softmax(self.logits, dim=0).to(x.dtype)
            return torch.einsum("blfd,l->bfd", x, w)
        if self.conv is not None:
            b, layers, frames, dim = x.shape
            return self.conv(x.reshape(b, layers, frames * dim)).reshape(b, frames, dim)
        return x[:, 0]


def load_t5(t5: str | Path) -> tuple[nn.Module, object]:
    """Load a T5 checkpoint id or local directory: ``(T5ForConditionalGeneration, tokenizer)``.

    Raises :class:`ModelError` (one line) when either cannot be loaded.
    """
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(t5))
        model = T5ForConditionalGeneration.from_pretrained(str(t5))
    except Exception as exc:  # transformers raises OSError/ValueError/HF errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"--t5 {t5}: cannot load T5 model/tokenizer ({reason})") from exc
    return model, tokenizer


class AudioCaptioner(nn.Module):
    """Layer mix + linear projection + T5 encoder-decoder.

    Args:
        t5_model: a ``T5ForConditionalGeneration`` (its ``config.d_model`` sets the projection width).
        input_dim: width of the stored embeddings (every mixed layer must have this width).
        num_layers: how many layers each clip carries (1 for a single layer or a pooled vector).
        layer_mix: ``"softmax"`` (default) or ``"conv1x1"``.
    """

    def __init__(self, t5_model: nn.Module, input_dim: int, num_layers: int = 1,
                 layer_mix: LayerMixMode = "softmax") -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.num_layers = int(num_layers)
        self.mix = LayerMix(self.num_layers, layer_mix)
        self.proj = nn.Linear(self.input_dim, int(t5_model.config.d_model))
        self.t5 = t5_model

    def encode_inputs(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` ``[batch, layers, frames, dim]`` or ``[batch, frames, dim]`` -> ``[batch, frames, d_model]``."""
        if features.dim() == 3:
            features = features.unsqueeze(1)
        if features.shape[-1] != self.input_dim:
            raise ModelError(f"captioner: expected embeddings of width {self.input_dim}, got {features.shape[-1]}")
        return self.proj(self.mix(features))

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None):
        """Teacher-forced pass. ``attention_mask`` ``[batch, frames]``; ``labels`` ``[batch, tokens]``
        with ``-100`` at padding. Returns the T5 ``Seq2SeqLMOutput`` (``.loss`` when labels are given)."""
        return self.t5(inputs_embeds=self.encode_inputs(features), attention_mask=attention_mask,
                       labels=labels)

    @torch.no_grad()
    def generate(self, features: torch.Tensor, attention_mask: torch.Tensor,
                 settings: GenerationSettings | None = None) -> torch.Tensor:
        """Beam-search decode; returns token ids ``[batch, tokens]``."""
        settings = settings or GenerationSettings()
        return self.t5.generate(inputs_embeds=self.encode_inputs(features), attention_mask=attention_mask,
                                **settings.as_kwargs())


def frame_mask(counts: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Attention mask ``[batch, max_frames]`` (1 for the first ``counts[i]`` frames, else 0)."""
    positions = torch.arange(max_frames, device=counts.device)
    return (positions.unsqueeze(0) < counts.unsqueeze(1)).long()
