"""`treasure annotate IN -o OUT`: fill markers offline (no model hub, no network)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("annotate", help="fill markers offline: length, format, language, code, domain, task, ...")
    p.add_argument("input", help="JSONL, JSON, Parquet or a saved HF dataset folder")
    p.add_argument("-o", "--output", required=True, help="output .jsonl or .parquet")
    p.add_argument("--taxonomy", default=None, help="taxonomy YAML (default: the paper's)")
    p.add_argument("--categories", default=None, help="comma-separated subset of categories to annotate")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or local HF tokenizer folder for length_tokens")
    p.add_argument("--map", action="append", default=[], metavar="CATEGORY=FIELD",
                   help="fill a category from an input field, e.g. source=meta.origin (repeatable)")  # fmt: skip
    p.add_argument("--seeds", default=None, help="extra labelled examples (JSONL) for the domain/task classifier")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    p.add_argument("--rejects", default=None, help="where skipped records go (default: OUTPUT.rejects.jsonl)")
    p.add_argument("--num-proc", type=int, default=1)
    p.add_argument("--split", default=None, help="split of a saved DatasetDict")
    p.add_argument("--chunk-size", type=int, default=512)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from treasure.annotate.fields import parse_field_map
    from treasure.annotate.pipeline import AnnotateOptions, run_annotate
    from treasure.errors import TreasureError

    if args.num_proc < 1:
        raise TreasureError("--num-proc must be at least 1")
    if args.chunk_size < 1:
        raise TreasureError("--chunk-size must be at least 1")
    opts = AnnotateOptions(
        taxonomy=args.taxonomy,
        categories=[c.strip() for c in args.categories.split(",")] if args.categories else None,
        tokenizer=args.tokenizer,
        field_map=parse_field_map(args.map),
        seeds=args.seeds,
        on_error=args.on_error,
        split=args.split,
        chunk_size=args.chunk_size,
    )
    summary = run_annotate(args.input, args.output, opts, rejects_path=args.rejects, num_proc=args.num_proc)
    for cat, why in summary.not_annotated.items():
        print(f"note: {cat} not annotated: {why}", file=sys.stderr)
    rejects = f" (rejects: {args.rejects or args.output + '.rejects.jsonl'})" if summary.rejected else ""
    print(f"annotate: {summary.line()}{rejects} -> {args.output}")
    return 0
