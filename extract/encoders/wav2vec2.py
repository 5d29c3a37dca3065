"""wav2vec 2.0 through transformers' ``Wav2Vec2Model`` (default ``facebook/wav2vec2-base``).

wav2vec2-base: 13 layers (conv features + 12 transformer layers, in the convention of
:mod:`.conv_transformer`) x 768 at 16 kHz, 50 frames/s; its conv feature encoder uses GroupNorm, so
batches run as equal-length groups (see :mod:`.conv_transformer`).
Pretraining checkpoints (``Wav2Vec2ForPreTraining``, keys under ``wav2vec2.``) and CTC fine-tunes
load the same way; heads are ignored. ``Wav2Vec2Config()`` defaults equal the wav2vec2-base
architecture and serve as the built-in config for ``weights="random"`` offline.
"""

from __future__ import annotations

from dataclasses import replace

from embedstore.errors import ModelError

from .registry import EncoderRequest
from .conv_transformer import ConvTransformerEncoder
from .hf_loading import load_model, read_preprocessor

DEFAULT_CHECKPOINT = "facebook/wav2vec2-base"
SAMPLE_RATE = 16_000
DEFAULT_WINDOW_SECONDS = 10.0


def load(request: EncoderRequest) -> ConvTransformerEncoder:
    """wav2vec 2.0 encoder for ``request`` (checkpoint id/path, weights mode, seed, window)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if request.trust_remote_code:
        raise ModelError("wav2vec2: --trust-remote-code is not needed (transformers has Wav2Vec2Model)")
    checkpoint = request.checkpoint or DEFAULT_CHECKPOINT
    builtin = Wav2Vec2Config if checkpoint == DEFAULT_CHECKPOINT else None
    loaded = load_model(
        replace(request, checkpoint=checkpoint),
        Wav2Vec2Model,
        config_from_dir=lambda ckpt: Wav2Vec2Config.from_pretrained(ckpt.directory),
        builtin_config=builtin,
    )
    pre = read_preprocessor(loaded.checkpoint)
    sample_rate = int(pre.get("sampling_rate", SAMPLE_RATE))
    return ConvTransformerEncoder(
        name=request.name,
        model=loaded.model,
        sample_rate=sample_rate,
        do_normalize=bool(pre.get("do_normalize", True)),
        window_seconds=request.window_seconds or DEFAULT_WINDOW_SECONDS,
        checkpoint=loaded.checkpoint,
        checkpoint_id=loaded.checkpoint_id,
        weights=request.weights,
        seed=request.seed,
        autocast_dtype=request.dtype,
        extra_info={"preprocessor_config": "checkpoint" if pre else "built-in default"},
    )

