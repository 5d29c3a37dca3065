"""``embedstore info``: what a store holds, as a JSON-able dict and as readable text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from embedstore.store.failures import failure_list, format_reason_groups
from embedstore.store.schema import model_node
from embedstore.store.store import Store, open_store

#: the gain rule of entries written before the ``gain`` metadata key existed (always peak-normalised)
_GAIN_BEFORE_RECORDED = "peak"


def info(path: str | Path | Store) -> dict:
    """Describe a store. Returns a JSON-able dict::

        {"path", "backend", "schema_version", "embedstore_version", "size_bytes",
         "datasets": [{"name", "tracks", "splits": {split: count}, "attrs",
                       "models": [{"name", "layers", "layer_names", "layer_widths", "storage_dtype",
                                   "codec", "frame_layers", "max_frames", "done", "failed",
                                   "failures": [[row, track_id, reason], ...], "size_bytes",
                                   "preprocessing": {...}, "versions": {...}, "metadata"}],
                       "failures": [{"path", "stage", "reason", "models"}, ...]}]}

    ``preprocessing`` collects the rules the extraction recorded (gain, mono, resampler, windows, the
    feature extractor's normalisation); ``versions`` the software versions it ran with (entries made
    before they were recorded hold only ``embedstore``).

    A dataset's ``failures`` is its failure list: every file not extracted, named once, whether it
    was skipped while scanning (``stage`` ``"scan"``) or failed in extraction (``"extract"``, with
    the model entries it failed in); see :func:`~embedstore.store.failures.failure_list`.
    """
    st = path if isinstance(path, Store) else open_store(path, "r")
    with st.snapshot():
        return _describe(st)


def _describe(st: Store) -> dict:
    root = st.root_attrs()
    out = {"path": str(st.path), "backend": st.kind, "schema_version": root.get("schema_version"),
           "embedstore_version": root.get("embedstore_version"), "size_bytes": st.backend.size_bytes(),
           "datasets": []}
    for dataset in st.datasets():
        table = st.tracks(dataset)
        attrs = st.dataset_attrs(dataset)
        entry = {"name": dataset, "tracks": len(table),
                 "splits": dict(sorted(Counter(s or "(none)" for s in table.splits.tolist()).items())),
                 "attrs": {k: v for k, v in attrs.items() if k not in ("models", "n_tracks")}, "models": []}
        failed_paths: dict[str, list[tuple[str, str]]] = {}
        for model in st.models(dataset):
            meta = st.model_attrs(dataset, model)
            failures = st.failures(dataset, model)
            failed_paths[model] = [(str(table.paths[row]), reason) for row, _, reason in failures]
            entry["models"].append({
                "name": model, "layers": len(meta["layer_widths"]), "layer_names": meta["layer_names"],
                "layer_widths": meta["layer_widths"], "storage_dtype": meta["storage_dtype"],
                "codec": meta.get("codec", "not recorded"),
                "frame_layers": meta.get("frame_layers", []), "max_frames": meta.get("max_frames", 0),
                "done": int(st.done(dataset, model).sum()), "failed": len(failures),
                "failures": [list(f) for f in failures],
                "size_bytes": st.backend.size_bytes(model_node(dataset, model)),
                "preprocessing": _preprocessing(meta), "versions": _versions(meta), "metadata": meta})
        entry["failures"] = failure_list(attrs.get("skipped", []), failed_paths)
        out["datasets"].append(entry)
    return out


def _preprocessing(meta: dict) -> dict:
    """The preprocessing rules of a model entry's metadata, flat (None where not recorded)."""
    decoding = meta.get("decoding") or {}
    windowing = meta.get("windowing") or {}
    feature = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    return {
        "gain": meta.get("gain", _GAIN_BEFORE_RECORDED),
        "gain_recorded": "gain" in meta,
        "mono": decoding.get("mono"),
        "resampler": decoding.get("resampler"),
        "resample_quality": decoding.get("resample_quality"),
        "sample_rate": meta.get("sample_rate"),
        "window_seconds": windowing.get("window_seconds"),
        "last_window": windowing.get("last_window"),
        "do_normalize": feature.get("do_normalize"),
        "pipeline": meta.get("audio_preprocessing"),
    }


def _versions(meta: dict) -> dict:
    """Software versions a model entry was made with (``embedstore`` only for entries that predate them)."""
    return dict(meta.get("versions") or {"embedstore": meta.get("embedstore_version")})


def _preprocessing_line(pre: dict) -> str:
    gain = pre["gain"] if pre["gain_recorded"] else f"{pre['gain']} (not recorded: made before --gain)"
    parts = [f"gain {gain}"]
    if pre["mono"]:
        parts.append(f"mono: {pre['mono']}")
    if pre["resampler"]:
        parts.append(f"resample: {pre['resampler']} {pre['resample_quality']} to {pre['sample_rate']} Hz")
    if pre["window_seconds"]:
        parts.append(f"windows of {pre['window_seconds']:g} s")
    if pre["do_normalize"] is not None:
        parts.append(f"feature extractor do_normalize {str(pre['do_normalize']).lower()}")
    return "; ".join(parts)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _layers(widths: list[int]) -> str:
    return f"{len(widths)} x {widths[0]}" if len(set(widths)) == 1 else f"{len(widths)} layers, widths {widths}"


def format_info(d: dict, *, verbose: bool = False) -> str:
    """Readable text of :func:`info`'s dict, a few lines per dataset and model, then the dataset's
    failure list grouped by reason (every file with ``verbose``)."""
    lines = [f"{d['path']}  ({d['backend']}, schema {d['schema_version']}, embedstore "
             f"{d['embedstore_version']}, {_size(d['size_bytes'])})"]
    if not d["datasets"]:
        lines.append("  no datasets")
    for ds in d["datasets"]:
        splits = ", ".join(f"{k} {v}" for k, v in ds["splits"].items())
        tasks = ", ".join(ds["attrs"].get("tasks", {})) or "none"
        lines.append(f"  dataset {ds['name']}: {ds['tracks']} tracks ({splits}); tasks: {tasks}")
        for m in ds["models"]:
            meta = m["metadata"]
            source = meta.get("checkpoint") or meta.get("encoder") or meta.get("model_name") or "?"
            lines.append(f"    model {m['name']}: {_layers(m['layer_widths'])} {m['storage_dtype']} "
                         f"(codec {m.get('codec', 'not recorded')}), "
                         f"done {m['done']}/{ds['tracks']}, failed {m['failed']}, {_size(m['size_bytes'])}; "
                         f"from {source}" + (f", frames of layers {m['frame_layers']} (max {m['max_frames']})"
                                             if m["frame_layers"] else ""))
            lines.append(f"      preprocessing: {_preprocessing_line(m['preprocessing'])}")
            lines.append("      versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
        bad = ds.get("failures", [])
        if bad:
            scanned = sum(f["stage"] == "scan" for f in bad)
            lines.append(f"    {len(bad):,} file(s) not extracted ({scanned:,} skipped while scanning, "
                         f"{len(bad) - scanned:,} failed in extraction):")
            every = {m["name"] for m in ds["models"]}
            named = [(f["path"] + (f" ({', '.join(f['models'])})" if f["models"] and set(f["models"]) != every else ""),
                      f["reason"]) for f in bad]
            lines += format_reason_groups(named, indent="      ", verbose=verbose)
    return "\n".join(lines)
