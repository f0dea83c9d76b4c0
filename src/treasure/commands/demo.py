"""`treasure demo`: the end-to-end job that exists so far: annotate the bundled sample and show its statistics.

(The full demo, which trains and evaluates baseline and marker models on a long-tail suite, replaces this when
the training, generation and evaluation stages land.)
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="annotate the bundled sample dataset and show its marker statistics")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from treasure.annotate.pipeline import AnnotateOptions, run_annotate
    from treasure.records import load_records
    from treasure.stats import format_stats, marker_stats, plot_stats
    from treasure.taxonomy import paper_taxonomy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sample = resources.files("treasure.data").joinpath("sample.jsonl")
    annotated = out / "sample.annotated.jsonl"
    opts = AnnotateOptions(field_map={"source": "meta.origin", "style": "meta.tone"})
    summary = run_annotate(str(sample), annotated, opts)
    print(f"annotate: {summary.line()} -> {annotated}")
    for cat, why in summary.not_annotated.items():
        print(f"note: {cat} not annotated: {why}")
    tax = paper_taxonomy()
    stats = marker_stats(load_records(annotated, tax), tax)
    print()
    print(format_stats(stats))
    print(f"\nplot: {plot_stats(stats, out / 'sample.stats.png')}")
    return 0
