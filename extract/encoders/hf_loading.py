"""Loading transformers models for the encoders: pretrained (strict) or random (seeded).

Pretrained loads always go through ``from_pretrained(local_dir, local_files_only=True)`` after
:func:`~.checkpoints.resolve_checkpoint` has put the files on disk, and refuse a checkpoint that
lacks weights the model needs (transformers would otherwise initialise them at random, silently).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from embedstore.errors import ModelError

from .base import seeded
from .checkpoints import PREPROCESSOR_NAME, ResolvedCheckpoint, resolve_checkpoint, try_resolve_config
from .registry import EncoderRequest

# Parameters that exist only for training-time masking and never affect inference.
INFERENCE_IRRELEVANT_KEYS = frozenset({"masked_spec_embed"})


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning logging (load reports, progress) inside the block."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    root = logging.getLogger("transformers")
    old_level = root.level
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        root.setLevel(old_level)


@dataclass
class LoadedModel:
    """A transformers model plus where it came from.

    Attributes:
        model: the model in eval mode, float32, on CPU.
        checkpoint: the resolved checkpoint (None for a built-in config with random weights).
        checkpoint_id: the id or path to record (the built-in config's name when no checkpoint).
    """

    model: torch.nn.Module
    checkpoint: ResolvedCheckpoint | None
    checkpoint_id: str


def load_model(
    request: EncoderRequest,
    model_cls: Any,
    *,
    config_from_dir: Callable[[ResolvedCheckpoint], Any],
    builtin_config: Callable[[], Any] | None,
) -> LoadedModel:
    """Build ``model_cls`` from ``request.checkpoint``: pretrained weights, or seeded random init.

    Args:
        request: checkpoint, weights mode and seed.
        model_cls: a transformers model class (``Wav2Vec2Model``, ``ClapAudioModelWithProjection``).
        config_from_dir: config of the architecture from a checkpoint directory (random weights).
        builtin_config: config matching the default checkpoint, used for random weights when the
            checkpoint is not available offline; None to require the checkpoint.

    Raises:
        ModelError: checkpoint missing/unreadable or lacking weights.
    """
    checkpoint_id = str(request.checkpoint)
    if request.weights == "pretrained":
        ckpt = resolve_checkpoint(checkpoint_id)
        _check_standard_weights_file(ckpt)
        try:
            with quiet_transformers():
                model, info = model_cls.from_pretrained(
                    ckpt.directory, local_files_only=True, output_loading_info=True,
                    dtype=torch.float32,
                )
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelError(f"{ckpt.directory}: cannot load {model_cls.__name__} ({_one_line(exc)})") from None
        missing = sorted(set(info.get("missing_keys", ())) - INFERENCE_IRRELEVANT_KEYS)
        mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
        if missing or mismatched:
            bad = (missing or mismatched)[:3]
            raise ModelError(
                f"{ckpt.directory}: weights do not fit {model_cls.__name__} "
                f"({len(missing)} missing, {len(mismatched)} mismatched, e.g. {', '.join(bad)})"
            )
        return LoadedModel(model.eval(), ckpt, checkpoint_id)

    ckpt = try_resolve_config(checkpoint_id)
    if ckpt is not None:
        config = config_from_dir(ckpt)
    elif builtin_config is not None:
        config = builtin_config()
    else:
        raise ModelError(
            f"checkpoint {checkpoint_id!r}: its config.json is not available offline, and there is "
            "no built-in config for it; pass a local directory with config.json"
        )
    return LoadedModel(random_model(model_cls, config, request.seed), ckpt, checkpoint_id)


def random_model(model_cls: Any, config: Any, seed: int) -> torch.nn.Module:
    """``model_cls(config)`` initialised by transformers' own init scheme under ``seed``, eval mode."""
    with seeded(seed), quiet_transformers():
        model = model_cls(config)
    return model.float().eval()


def read_preprocessor(ckpt: ResolvedCheckpoint | None) -> dict[str, Any]:
    """``preprocessor_config.json`` of the checkpoint, ``{}`` when there is none."""
    if ckpt is None:
        return {}
    return ckpt.read_json(PREPROCESSOR_NAME) or {}


def _check_standard_weights_file(ckpt: ResolvedCheckpoint) -> None:
    """``from_pretrained`` reads the directory's standard file; a different file must be refused."""
    from .checkpoints import find_weight_files

    if ckpt.from_hub or not ckpt.weight_files:
        return
    if set(ckpt.weight_files) != set(find_weight_files(ckpt.directory)):
        raise ModelError(
            f"{ckpt.weight_files[0]}: this encoder loads a checkpoint directory; pass "
            f"{ckpt.directory} (with the weights saved as model.safetensors or pytorch_model.bin)"
        )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
