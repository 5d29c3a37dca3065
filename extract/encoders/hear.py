"""Any installed module that implements the HEAR 2021 API, as an encoder: ``--model hear:MODULE``.

The module must provide ``load_model(model_file_path)``, ``get_scene_embeddings(audio, model)`` and
``get_timestamp_embeddings(audio, model)``; the model it loads must have ``sample_rate``,
``scene_embedding_size`` and ``timestamp_embedding_size``. ``--checkpoint`` is passed as
``model_file_path`` (no checkpoint: ``load_model()`` with the module's default).

Trust: importing the module runs its code, exactly as ``import MODULE`` would; naming it on the
command line is the same trust as having installed its package. Nothing is imported from a name read
from a store or a manifest: only a ``--model`` value (an :class:`EncoderRequest`) loads one.

Layers (two, of their own widths):

* ``timestamp``: ``get_timestamp_embeddings``, ``[batch, frames, timestamp_embedding_size]``; its frame
  rate is derived from the timestamps (ms) the module returns for 2 s of noise at load time
  (``1000 / median hop``). Pooled like any frame sequence, and stored as frames with ``--frames``.
* ``scene``: ``get_scene_embeddings``, one frame per window, ``[batch, 1, scene_embedding_size]``.

The model's rules are read from it and written into the entry's metadata (``hear``): its sample rate
(the pipeline resamples to it), its embedding sizes and timestamp hop. The HEAR API declares no
maximum input length (HEAR 2021 asks models to take up to 20 minutes), so the window is
``--window-seconds`` or 600 s: whole clips go in at once, as in the HEAR evaluation; longer clips are
cut into windows whose scene embeddings are pooled like CLAP's projection.

Batching: HEAR functions take ``[n_sounds, n_samples]`` of one length and the scene embedding of a
padded clip would include its padding, so batches run as groups of equal-length items
(``padding_exact = False``). ``--weights random`` does not apply (the module owns its weights).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from embedstore.errors import ModelError

from .base import Encoder, EncoderOutput, sha256_files, state_dict_sha256
from .registry import HEAR_PREFIX, EncoderRequest, get_spec

API_FUNCTIONS = ("load_model", "get_scene_embeddings", "get_timestamp_embeddings")
MODEL_ATTRIBUTES = ("sample_rate", "scene_embedding_size", "timestamp_embedding_size")
PROBE_SECONDS = 2.0


def import_hear_module(name: str) -> ModuleType:
    """Import the module of ``hear:MODULE`` (running its code) and check it has the HEAR functions.

    Raises:
        ModelError: the import fails, or an API function is missing (one line naming the module).
    """
    module_name = name[len(HEAR_PREFIX):]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any error of foreign code becomes one line
        raise ModelError(f"--model {name}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    missing = [f for f in API_FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise ModelError(f"--model {name}: module {module_name!r} does not implement the HEAR API: "
                         f"no function {', '.join(missing)}")
    return module


def _as_float(value: Any, name: str, what: str, shape: tuple[int | None, ...]) -> torch.Tensor:
    """``value`` (tensor or array) as a float32 tensor, checked against ``shape`` (None: any size)."""
    out = torch.as_tensor(value).float()
    if out.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, out.shape)):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise ModelError(f"--model {name}: {what} has shape {tuple(out.shape)}, expected {want}")
    return out


def timestamp_hop_ms(module: ModuleType, model: Any, name: str) -> float:
    """Median hop (ms) of the timestamps ``module`` gives for :data:`PROBE_SECONDS` of seeded noise."""
    sr = int(model.sample_rate)
    audio = 0.1 * torch.randn(1, int(PROBE_SECONDS * sr), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # the model is still on the CPU: it is moved after loading
        _, stamps = module.get_timestamp_embeddings(audio, model)
    stamps = _as_float(stamps, name, "the timestamps", (1, None))[0]
    if stamps.numel() < 2:
        raise ModelError(f"--model {name}: {stamps.numel()} timestamp(s) for {PROBE_SECONDS:g} s of audio; "
                         "the frame rate cannot be derived")
    hop = float(torch.diff(stamps).median())
    if not hop > 0:
        raise ModelError(f"--model {name}: timestamps do not increase ({stamps[:4].tolist()} ...)")
    return hop


class HearEncoder(Encoder):
    """A HEAR 2021 API module behind the encoder interface; layers ``timestamp`` and ``scene``."""

    padding_exact = False

    def __init__(self, *, name: str, module: ModuleType, model: Any, checkpoint: str | None,
                 window_seconds: float, autocast_dtype: str = "auto") -> None:
        hop_ms = timestamp_hop_ms(module, model, name)
        super().__init__(
            name=name,
            sample_rate=int(model.sample_rate),
            layer_names=("timestamp", "scene"),
            layer_widths=(int(model.timestamp_embedding_size), int(model.scene_embedding_size)),
            frame_rate=1000.0 / hop_ms,
            window_seconds=window_seconds,
            layer_frame_rates=(1000.0 / hop_ms, 1.0 / window_seconds),
            autocast_dtype=autocast_dtype,
        )
        self.model = model  # an nn.Module is registered, so .to(device) moves it
        self.hear_module = module
        self.hop_ms = hop_ms
        self._checkpoint = checkpoint
        self._digest: dict[str, str] | None = None

    def encode_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Timestamp embeddings ``[batch, frames, D_t]`` and scene embedding ``[batch, 1, D_s]`` of
        equal-length ``waveforms`` ``[batch, samples]``."""
        batch = waveforms.shape[0]
        width_t, width_s = self.layer_widths
        emb, _ = self.hear_module.get_timestamp_embeddings(waveforms, self.model)
        emb = _as_float(emb, self.name, "get_timestamp_embeddings", (batch, None, width_t)).to(self.device)
        scene = self.hear_module.get_scene_embeddings(waveforms, self.model)
        scene = _as_float(scene, self.name, "get_scene_embeddings", (batch, width_s)).to(self.device)
        frames = torch.full((batch,), emb.shape[1], dtype=torch.long, device=self.device)
        ones = torch.ones(batch, dtype=torch.long, device=self.device)
        return EncoderOutput((emb, scene[:, None, :]), frames, (frames, ones))

    def describe_model(self) -> dict[str, Any]:
        """Module, version, checkpoint, weights sha256, and the model's rules as read from it."""
        module_name = self.name[len(HEAR_PREFIX):]
        if self._digest is None:
            if self._checkpoint and Path(self._checkpoint).is_file():
                self._digest = sha256_files([Path(self._checkpoint)])
            elif isinstance(self.model, torch.nn.Module):
                self._digest = {"state_dict": state_dict_sha256(self.model)}
        return {
            "checkpoint": self._checkpoint,
            "revision": None,
            "weights": "pretrained",
            "weights_sha256": self._digest,
            "hear": {
                "module": module_name,
                "module_file": getattr(self.hear_module, "__file__", None),
                "version": _module_version(self.hear_module),
                "api": "HEAR 2021: load_model, get_scene_embeddings, get_timestamp_embeddings",
                "sample_rate": self.sample_rate,
                "timestamp_embedding_size": self.layer_widths[0],
                "scene_embedding_size": self.layer_widths[1],
                "timestamp_hop_ms": self.hop_ms,
                "max_seconds": None,
                "window_rule": "whole clips up to the window (HEAR declares no maximum length); "
                               "longer clips are cut into windows and their embeddings pooled",
            },
        }


def _module_version(module: ModuleType) -> str | None:
    """The installed distribution version of ``module``'s top-level package, else its ``__version__``."""
    top = module.__name__.partition(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    version = getattr(module, "__version__", None)
    return None if version is None else str(version)


def load(request: EncoderRequest) -> HearEncoder:
    """Import the HEAR module of ``request.name`` (``hear:MODULE``) and load its model.

    Raises:
        ModelError: random weights asked, import failure, a missing API function or model attribute,
            or ``load_model`` failing (one line naming the module).
    """
    name = request.name
    if request.weights != "pretrained":
        raise ModelError(f"--weights {request.weights} does not apply to {name}: the HEAR module owns its weights")
    module = import_hear_module(name)
    try:
        model = module.load_model(request.checkpoint) if request.checkpoint else module.load_model()
    except Exception as exc:  # noqa: BLE001
        where = f" with --checkpoint {request.checkpoint}" if request.checkpoint else ""
        raise ModelError(f"--model {name}: load_model{where} failed: {type(exc).__name__}: {exc}") from None
    missing = [a for a in MODEL_ATTRIBUTES if not hasattr(model, a)]
    if missing:
        raise ModelError(f"--model {name}: the model from load_model has no {', '.join(missing)} (HEAR API)")
    if isinstance(model, torch.nn.Module):
        model.eval()
    window = request.window_seconds or get_spec(name).window_seconds
    return HearEncoder(name=name, module=module, model=model, checkpoint=request.checkpoint,
                       window_seconds=window, autocast_dtype=request.dtype)
