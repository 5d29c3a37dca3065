"""Find a checkpoint on disk: a local directory / weights file, or a hub id (cache or download).

Every learned encoder goes through :func:`resolve_checkpoint`, so that a hub id and a local
directory take the same code path afterwards (``from_pretrained(local_dir)``), the weights files are
known (for their sha256) and a missing checkpoint is one clear :class:`ModelError` line instead of a
traceback. A hub id is looked up in the local hub cache first; the network is tried only when the
cache lacks it and neither ``HF_HUB_OFFLINE`` nor ``TRANSFORMERS_OFFLINE`` is set (read at call time),
after one short request shows the hub answers, so a machine without network fails in seconds.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedstore.errors import ModelError

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
# Preferred first; an index file names its shards.
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint found on local disk.

    Attributes:
        source: what the user asked for (hub id or path).
        directory: local directory holding ``config.json`` (and the rest).
        weight_files: the weights files (shards in order); empty when only the config was needed.
        revision: hub commit hash when known (hub cache snapshots), else None.
        from_hub: True when ``source`` was a hub id.
    """

    source: str
    directory: Path
    weight_files: tuple[Path, ...] = ()
    revision: str | None = None
    from_hub: bool = False
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        """``config.json`` of the checkpoint."""
        return self.directory / CONFIG_NAME

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Parsed JSON file ``name`` of the checkpoint, or None when it is absent."""
        path = self.directory / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: unreadable JSON ({exc})") from None


def hub_offline() -> bool:
    """True when the environment asks for no hub traffic (read at call time)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - hub library absent or changed
        return False


def resolve_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    need_weights: bool = True,
    extra_files: tuple[str, ...] = (PREPROCESSOR_NAME,),
    local_only: bool = False,
) -> ResolvedCheckpoint:
    """Locate ``checkpoint`` on local disk, downloading from the hub when it is an id and allowed.

    Args:
        checkpoint: hub id (``"m-a-p/MERT-v1-95M"``), a local directory with ``config.json``, or a
            weights file inside such a directory.
        need_weights: also locate the weights files (False: config and extra files only).
        extra_files: optional files fetched alongside when present (missing ones are skipped).
        local_only: look in the hub cache only, never on the network.

    Returns:
        :class:`ResolvedCheckpoint`.

    Raises:
        ModelError: one line naming the checkpoint and how to obtain it.
    """
    text = os.fspath(checkpoint)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_local(text, path, need_weights)
    if not _HUB_ID.match(text):
        raise ModelError(
            f"checkpoint {text!r}: no such file or directory (pass a local directory with "
            "config.json and weights, or a hub id like owner/name)"
        )
    return _resolve_hub(text, need_weights, extra_files, offline=local_only or hub_offline())


def _resolve_local(text: str, path: Path, need_weights: bool) -> ResolvedCheckpoint:
    if path.is_file():
        directory, weights = path.parent, (path,)
        if not path.name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            raise ModelError(f"{path}: not a weights file (.safetensors or .bin) or a directory")
    else:
        directory, weights = path, ()
    if not (directory / CONFIG_NAME).is_file():
        raise ModelError(f"{directory}: no {CONFIG_NAME}; not a transformers checkpoint directory")
    if need_weights and not weights:
        weights = find_weight_files(directory)
    revision = directory.name if _COMMIT.match(directory.name) else None
    return ResolvedCheckpoint(text, directory, tuple(weights), revision, from_hub=False)


def find_weight_files(directory: Path) -> tuple[Path, ...]:
    """Weights files of a checkpoint directory (safetensors preferred; shards via index files)."""
    for name in WEIGHT_NAMES:
        path = directory / name
        if path.is_file():
            if name.endswith(".index.json"):
                return tuple(directory / shard for shard in _shards(path))
            return (path,)
    raise ModelError(
        f"{directory}: no weights file ({', '.join(n for n in WEIGHT_NAMES if 'index' not in n)})"
    )


def _shards(index_path: Path) -> list[str]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{index_path}: unreadable shard index ({exc})") from None
    return sorted(set(weight_map.values()))


#: seconds the one reachability request to the hub may take before a checkpoint counts as unavailable
HUB_PROBE_TIMEOUT = 5.0


class _CacheMiss(Exception):
    """A needed file of a hub checkpoint is not in the local hub cache."""


def _resolve_hub(
    repo_id: str, need_weights: bool, extra_files: tuple[str, ...], *, offline: bool
) -> ResolvedCheckpoint:
    """The local hub cache first (no network); then, unless ``offline``, one short request to see whether
    the hub answers at all, and only then a download (so no network means one line in seconds, not a
    30-second retry loop)."""
    try:
        from huggingface_hub import hf_hub_download  # noqa: F401
    except ImportError:  # pragma: no cover
        raise ModelError(f"checkpoint {repo_id!r}: huggingface_hub is not installed; {_how_to_get(repo_id)}") from None
    try:
        return _fetch_hub(repo_id, need_weights, extra_files, local_only=True)
    except _CacheMiss:
        pass
    if offline:
        state = "the model hub is offline (HF_HUB_OFFLINE)"
    else:
        state = _hub_unreachable(repo_id)
        if state is None:
            try:
                return _fetch_hub(repo_id, need_weights, extra_files, local_only=False)
            except _CacheMiss as exc:
                state = f"the download failed ({exc})"
    raise ModelError(f"checkpoint {repo_id!r} is not in the local hub cache and {state}; {_how_to_get(repo_id)}")


def _how_to_get(repo_id: str) -> str:
    return (f"pass a local copy with --checkpoint DIR (config.json and weights; `hf download {repo_id}` on a "
            "machine with internet), or use --weights random (same architecture, nothing to download)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _hub_unreachable(repo_id: str) -> str | None:
    """None when the hub answers for ``repo_id`` (one HEAD request, :data:`HUB_PROBE_TIMEOUT`, no retries),
    else why not, as a phrase for the error line."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_NAME), timeout=HUB_PROBE_TIMEOUT)
    except Exception as exc:  # no route, DNS, timeout, unknown or gated repository, ...
        return f"the model hub did not answer for it ({_one_line(exc)})"
    return None


def _fetch_hub(
    repo_id: str, need_weights: bool, extra_files: tuple[str, ...], *, local_only: bool
) -> ResolvedCheckpoint:
    """Config, present ``extra_files`` and (``need_weights``) the weights of ``repo_id`` through the hub
    cache (``local_only``: never the network). Raises :class:`_CacheMiss` when a needed file is missing."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch_optional(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=local_only))
        except EntryNotFoundError:  # absent in the repo or (local only) in the cache
            return None
        except Exception as exc:  # (online) network error, unknown or gated repository, ...
            raise _CacheMiss(_one_line(exc)) from None

    def fetch(name: str) -> Path:
        got = fetch_optional(name)
        if got is None:
            raise _CacheMiss(f"{name} not found")
        return got

    config = fetch(CONFIG_NAME)
    files: dict[str, Path] = {CONFIG_NAME: config}
    for name in extra_files:
        got = fetch_optional(name)
        if got is not None:
            files[name] = got
    weights: tuple[Path, ...] = ()
    if need_weights:
        for name in WEIGHT_NAMES:
            got = fetch_optional(name)
            if got is None:
                continue
            weights = tuple(fetch(shard) for shard in _shards(got)) if name.endswith(".index.json") else (got,)
            break
        if not weights:
            if local_only:
                raise _CacheMiss("no weights file in the cache")
            raise ModelError(f"checkpoint {repo_id!r}: no weights file found; {_how_to_get(repo_id)}")
    directory = config.parent
    revision = directory.name if _COMMIT.match(directory.name) else None
    return ResolvedCheckpoint(repo_id, directory, weights, revision, from_hub=True, files=files)


def try_resolve_config(checkpoint: str) -> ResolvedCheckpoint | None:
    """The config of ``checkpoint`` from a local path or the hub cache (never the network), else None.

    Used for random weights, which need only the architecture: callers fall back to their built-in
    config of the default checkpoint, so ``--weights random`` runs offline without waiting on the hub.
    """
    try:
        return resolve_checkpoint(checkpoint, need_weights=False, local_only=True)
    except ModelError:
        return None
