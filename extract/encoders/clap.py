"""CLAP's audio tower through transformers (default ``laion/larger_clap_music``).

Only the audio half of ``ClapModel`` is loaded (``ClapAudioModelWithProjection`` reads the audio
weights of a ``ClapModel`` checkpoint; the text tower is skipped). Inputs are 48 kHz windows of at
most ``max_length_s`` (10 s); each window goes through the checkpoint's ``ClapFeatureExtractor``
on its own valid samples (shorter windows are padded as the checkpoint asks, "repeatpad": repeated
whole, then zero-padded to 10 s), so batching never changes a clip's result.

Determinism: ``truncation="rand_trunc"`` crops at random only inputs longer than ``max_length_s``,
which we never feed (longer inputs raise). With ``truncation="fusion"`` the extractor marks a random
item as "longer" when none is; we pass the true flags (all False) and restore numpy's RNG state.

Layers (stages first, projection last):

* ``patch_embed`` and ``stage_1`` .. ``stage_n``: the HTSAT Swin stages (before their patch merging),
  ``[batch, time_l, channels_l]``. HTSAT folds the 10 s log-mel (``T`` frames x 64 mels) into a
  square image of ``freq_ratio = spec_size // num_mel_bins`` time chunks stacked along the frequency
  axis; we undo that fold and average over frequency, giving ``freq_ratio * width_l`` time frames
  covering the 10 s window in order (e.g. 256, 256, 128, 64, 32 frames for HTSAT-base).
* ``projection``: the 512-d L2-normalised audio embedding (``ClapModel.get_audio_features``), one
  frame per window.

Valid frames of a window of ``n`` samples: ``ceil(n / max_samples * time_l)`` per stage, 1 for the
projection; frames past that only see the repeat padding and are dropped (sequences are cut to the
batch's longest valid count, zeros after each item's own). Use ``EncoderOutput.lengths(layer)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from embedstore.errors import ModelError

from .base import Encoder, EncoderOutput, mask_frames, sha256_files, state_dict_sha256
from .checkpoints import ResolvedCheckpoint
from .hf_loading import load_model, read_preprocessor
from .registry import EncoderRequest

DEFAULT_CHECKPOINT = "laion/larger_clap_music"
UNFUSED_CHECKPOINT = "laion/clap-htsat-unfused"
SAMPLE_RATE = 48_000


def _builtin_audio_config(checkpoint: str) -> Any:
    from transformers import ClapAudioConfig

    if checkpoint == DEFAULT_CHECKPOINT:  # HTSAT-base
        return ClapAudioConfig(
            patch_embeds_hidden_size=128, depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32],
            hidden_size=1024, projection_dim=512, enable_fusion=False,
        )
    return ClapAudioConfig(projection_dim=512, enable_fusion=False)  # HTSAT-tiny defaults


class ClapEncoder(Encoder):
    """HTSAT stage sequences plus the projected CLAP audio embedding (see the module docstring)."""

    padding_exact = True

    def __init__(
        self,
        *,
        name: str,
        model: torch.nn.Module,
        feature_extractor: Any,
        window_seconds: float | None,
        checkpoint: ResolvedCheckpoint | None,
        checkpoint_id: str,
        weights: str,
        seed: int | None,
        autocast_dtype: str = "auto",
        feature_extractor_source: str = "checkpoint",
    ) -> None:
        config = model.config
        audio_encoder = model.audio_model.audio_encoder
        max_seconds = feature_extractor.nb_max_samples / feature_extractor.sampling_rate
        window_seconds = window_seconds or max_seconds
        if window_seconds > max_seconds + 1e-9:
            raise ModelError(
                f"{name}: window_seconds {window_seconds:g} exceeds CLAP's input length "
                f"({max_seconds:g} s); longer inputs would be cropped at random"
            )
        self.freq_ratio = int(audio_encoder.freq_ratio)
        resolutions = [audio_encoder.input_resolutions[0], *audio_encoder.input_resolutions]
        stage_widths = [config.patch_embeds_hidden_size * 2**i for i in range(len(config.depths))]
        widths = [stage_widths[0], *stage_widths, config.projection_dim]
        self.stage_frames = tuple(self.freq_ratio * int(w) for _, w in resolutions)
        names = ["patch_embed", *[f"stage_{i + 1}" for i in range(len(config.depths))], "projection"]
        rates = [t / max_seconds for t in self.stage_frames] + [1.0 / window_seconds]
        super().__init__(
            name=name,
            sample_rate=int(feature_extractor.sampling_rate),
            layer_names=names,
            layer_widths=widths,
            frame_rate=rates[0],
            window_seconds=window_seconds,
            layer_frame_rates=rates,
            autocast_dtype=autocast_dtype,
        )
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.max_samples = int(feature_extractor.nb_max_samples)
        self._checkpoint = checkpoint
        self._checkpoint_id = checkpoint_id
        self._weights = weights
        self._seed = seed
        self._fe_source = feature_extractor_source
        self._weights_digest: dict[str, str] | None = None

    def features(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-mel input of each item, computed on its valid samples by the feature extractor.

        Returns:
            ``[batch, channels (1, or 4 with fusion), mel frames, mel bins]`` float32 on the device.
        """
        if int(lengths.max()) > self.max_samples:
            raise ModelError(
                f"{self.name}: input of {int(lengths.max())} samples exceeds CLAP's "
                f"{self.max_samples}; cut clips into windows of {self.window_seconds:g} s"
            )
        clips = [w[: int(n)].detach().float().cpu().numpy() for w, n in zip(waveforms, lengths)]
        rng_state = np.random.get_state()
        try:
            batch = self.feature_extractor(
                clips, sampling_rate=self.sample_rate, return_tensors="np"
            )
        finally:
            np.random.set_state(rng_state)
        return torch.from_numpy(np.asarray(batch["input_features"], dtype=np.float32)).to(self.device)

    def encode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Stage sequences ``[batch, time_l, C_l]`` and projection ``[batch, 1, projection_dim]``."""
        features = self.features(waveforms, lengths)
        is_longer = torch.zeros((features.shape[0], 1), dtype=torch.bool, device=self.device)
        out = self.model.audio_model(
            input_features=features,
            is_longer=is_longer,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
        )
        states: list[torch.Tensor] = []
        layer_lengths: list[torch.Tensor] = []
        for hidden, frames in zip(out.hidden_states, self.stage_frames):
            seq = self._time_sequence(hidden)
            assert seq.shape[1] == frames, (seq.shape, frames)
            valid = torch.ceil(lengths.double() / self.max_samples * frames).long().clamp(1, frames)
            states.append(mask_frames(seq[:, : int(valid.max())], valid))
            layer_lengths.append(valid)
        projected = F.normalize(self.model.audio_projection(out.pooler_output), dim=-1)
        states.append(projected[:, None, :])
        layer_lengths.append(torch.ones_like(lengths))
        return EncoderOutput(tuple(states), layer_lengths[0], tuple(layer_lengths))

    def _time_sequence(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[batch, C, freq_ratio * f, w]`` Swin map -> ``[batch, freq_ratio * w, C]`` (mean over f)."""
        batch, channels, height, width = hidden.shape
        r = self.freq_ratio
        folded = hidden.reshape(batch, channels, r, height // r, width).mean(dim=3)
        return folded.reshape(batch, channels, r * width).transpose(1, 2)

    def describe_model(self) -> dict[str, Any]:
        """Checkpoint, revision, weights sha256, feature-extractor settings and layer rules."""
        if self._weights_digest is None:
            if self._weights == "pretrained" and self._checkpoint is not None:
                self._weights_digest = sha256_files(self._checkpoint.weight_files)
            else:
                self._weights_digest = {"state_dict": state_dict_sha256(self.model)}
        fe = self.feature_extractor
        config = self.model.config
        return {
            "checkpoint": self._checkpoint_id,
            "checkpoint_path": str(self._checkpoint.directory) if self._checkpoint else None,
            "revision": self._checkpoint.revision if self._checkpoint else None,
            "weights": self._weights,
            "seed": self._seed if self._weights == "random" else None,
            "weights_sha256": self._weights_digest,
            "architecture": "ClapAudioModelWithProjection (audio tower of ClapModel)",
            "architecture_config": {
                "spec_size": config.spec_size, "num_mel_bins": config.num_mel_bins,
                "patch_embeds_hidden_size": config.patch_embeds_hidden_size,
                "depths": list(config.depths), "hidden_size": config.hidden_size,
                "projection_dim": config.projection_dim, "enable_fusion": config.enable_fusion,
            },
            "preprocessing": {
                "feature_extractor": "ClapFeatureExtractor",
                "source": self._fe_source,
                "sampling_rate": fe.sampling_rate,
                "max_length_s": fe.max_length_s,
                "truncation": fe.truncation,
                "padding": fe.padding,
                "hop_length": fe.hop_length,
                "fft_window_size": fe.fft_window_size,
                "feature_size": fe.feature_size,
                "frequency_min": fe.frequency_min,
                "frequency_max": fe.frequency_max,
                "is_longer": "always False (inputs never exceed max_length_s)",
            },
            "layers": {
                "stages": "HTSAT Swin stages before patch merging, frequency-averaged, "
                          "time unfolded (freq_ratio chunks)",
                "stage_frames_per_window": list(self.stage_frames),
                "projection": "L2-normalised audio_projection(pooler_output), one frame",
                "valid_frames": "ceil(samples / max_samples * frames) per stage; 1 for projection",
            },
        }


def load(request: EncoderRequest) -> ClapEncoder:
    """CLAP audio encoder for ``request`` (hub id or local ``ClapModel`` directory)."""
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapFeatureExtractor

    if request.trust_remote_code:
        raise ModelError("clap: --trust-remote-code is not needed (transformers has ClapModel)")
    checkpoint = request.checkpoint or DEFAULT_CHECKPOINT
    loaded = load_model(
        replace(request, checkpoint=checkpoint),
        ClapAudioModelWithProjection,
        config_from_dir=lambda ckpt: ClapAudioConfig.from_pretrained(ckpt.directory),
        builtin_config=(lambda: _builtin_audio_config(checkpoint))
        if checkpoint in (DEFAULT_CHECKPOINT, UNFUSED_CHECKPOINT) else None,
    )
    pre = read_preprocessor(loaded.checkpoint)
    if pre:
        try:
            fe = ClapFeatureExtractor.from_pretrained(loaded.checkpoint.directory, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"{loaded.checkpoint.directory}: bad preprocessor_config.json ({exc})") from None
        source = "checkpoint"
    else:
        fe = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
        source = "built-in default (rand_trunc, repeatpad, 48 kHz, 10 s)"
    if fe.padding not in ("repeatpad", "repeat", "pad"):
        raise ModelError(f"{checkpoint}: unknown CLAP padding {fe.padding!r}")
    return ClapEncoder(
        name=request.name,
        model=loaded.model,
        feature_extractor=fe,
        window_seconds=request.window_seconds,
        checkpoint=loaded.checkpoint,
        checkpoint_id=loaded.checkpoint_id,
        weights=request.weights,
        seed=request.seed,
        autocast_dtype=request.dtype,
        feature_extractor_source=source,
    )
