"""`treasure stats FILE [--json] [--plot PNG]`: marker value counts, shares and the long tail."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("stats", help="marker value counts and shares per category; marks the long tail")
    p.add_argument("file", help="annotated records (JSONL, JSON, Parquet or dataset folder)")
    p.add_argument("--taxonomy", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a bar chart")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from treasure.records import load_records
    from treasure.stats import format_stats, marker_stats, plot_stats
    from treasure.taxonomy import load_taxonomy

    tax = load_taxonomy(args.taxonomy)
    stats = marker_stats(load_records(args.file, tax), tax)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    if args.plot:
        print(f"plot: {plot_stats(stats, args.plot)}")
    return 0
