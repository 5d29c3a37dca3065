"""``embedstore demo``: the whole study in miniature, offline, with nothing to download.

1. Generate a small labelled audio set in the GTZAN layout (:mod:`embedstore.extract.synthetic`).
2. Extract every layer of the weight-free ``mfcc`` baseline and of a randomly initialised, full-size
   wav2vec 2.0 (base) architecture into one Zarr store.
3. Probe every layer of both with logistic regression and print the comparison table.
4. Draw the PCA of each model's best layer (chosen by the probes' validation accuracy; the demo's
   split has no valid rows, so logistic regression validates by inner cross-validation on train)
   and the per-layer curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from embedstore.extract.synthetic import RECIPES, make_gtzan_like

DEMO_GENRES = tuple(RECIPES)  # the ten GTZAN genre names


@dataclass
class DemoReport:
    """Where the demo put things, and the text it printed."""

    dataset_dir: Path
    store: Path
    figures: list[Path] = field(default_factory=list)
    results_dir: Path | None = None
    text: list[str] = field(default_factory=list)


def run_demo(
    out: str | Path = "embedstore-demo",
    *,
    clips_per_genre: int = 6,
    seconds: float = 3.0,
    models: tuple[str, ...] = ("mfcc", "wav2vec2"),
    head: str = "logreg",
    workers: int | None = None,
    progress: bool = True,
) -> DemoReport:
    """Run the offline demo into ``out`` and return what it wrote.

    ``wav2vec2`` runs with ``weights="random"`` (its full-size architecture, seeded): the demo needs no
    download. Re-running resumes: nothing already extracted is computed again.
    """
    from embedstore.analysis import format_layers, format_projection, layers, pca
    from embedstore.extract.datasets import discover_dataset
    from embedstore.extract.encoders import load_encoder
    from embedstore.extract.pipeline import ExtractOptions, extract_dataset, format_summary, model_key
    from embedstore.heads.probe import format_comparison, run_probe

    out = Path(out)
    data = out / "audio"
    report = DemoReport(dataset_dir=data, store=out / "embedstore.zarr")

    def say(text: str) -> None:
        report.text.append(text)
        print(text, flush=True)

    if not (data / "genres_original").is_dir():
        say(f"[1/4] generating {clips_per_genre} clips x {len(DEMO_GENRES)} genres of {seconds:g} s in {data}")
        make_gtzan_like(data, n_per_class=clips_per_genre, genres=DEMO_GENRES, seconds=seconds, broken=False)
    dataset = discover_dataset(data, "gtzan", split="random", name="demo")

    say(f"[2/4] extracting every layer of {', '.join(models)} into {report.store}")
    encoders = []
    for name in models:
        weights = "pretrained" if name == "mfcc" else "random"
        enc = load_encoder(name, weights=weights, device="cpu")
        encoders.append((model_key(enc, weights), enc))
    summary = extract_dataset(dataset, encoders, report.store, ExtractOptions(workers=workers, progress=progress))
    say(format_summary(summary))

    say(f"[3/4] probing every layer with {head}")
    probe = run_probe(report.store, "genre", head=head, layer="all", progress=progress)
    say(format_comparison(probe))
    report.results_dir = Path(probe.paths[0]).parent if probe.paths else None

    say("[4/4] drawing PCA of each model's best layer (chosen on validation, never test) and the per-layer curves")
    projection = pca(report.store, layer="best", split=None)
    curves = layers(report.store, split=None)
    report.figures = [*map(Path, projection.figures), *map(Path, curves.figures)]
    say(format_projection(projection))
    say(format_layers(curves))
    say(f"\nstore: {report.store}\nresults: {report.results_dir}\nfigures: " + ", ".join(map(str, report.figures)))
    say(
        "next: `embedstore info --store "
        f"{report.store}`, `embedstore analyze cosine --store {report.store}`, "
        f"`embedstore analyze cka wav2vec2+random --store {report.store}`"
    )
    return report
