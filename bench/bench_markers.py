"""Tokens per marker block, paper text format vs compact format, with the GPT-2 tokenizer.

Blocks are rendered for the markers of real annotated records (the bundled sample annotated offline), so the
mix of categories and values is realistic; the compact tokens are added to the tokenizer as the trainer does.

    .venv/bin/python bench/bench_markers.py
"""

from __future__ import annotations

import statistics
import tempfile
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from treasure.annotate.options import AnnotateOptions
from treasure.annotate.pipeline import run_annotate
from treasure.markers import compact_tokens, render_block
from treasure.records import load_records
from treasure.taxonomy import paper_taxonomy


def main() -> None:
    tax = paper_taxonomy()
    sample = resources.files("treasure.data").joinpath("sample.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a.jsonl"
        run_annotate(str(sample), out, AnnotateOptions(field_map={"source": "meta.origin", "style": "meta.tone"}),
                     progress=False)  # fmt: skip
        records = load_records(out, tax)
    tok_path = resources.files("treasure.assets").joinpath("gpt2-tokenizer.json")
    plain = Tokenizer.from_file(str(tok_path))
    compact = Tokenizer.from_file(str(tok_path))
    compact.add_tokens([AddedToken(t, special=False, normalized=False) for t in compact_tokens(tax)])
    rows = []
    for rec in records:
        markers = rec["markers"]
        rows.append(
            (len(markers), len(plain.encode(render_block(markers, tax, "paper")).ids),
             len(compact.encode(render_block(markers, tax, "compact")).ids))
        )  # fmt: skip
    n_markers = statistics.mean(r[0] for r in rows)
    paper_t = statistics.mean(r[1] for r in rows)
    compact_t = statistics.mean(r[2] for r in rows)
    print(f"{len(rows)} blocks, {n_markers:.1f} markers per block on average (GPT-2 tokenizer)")
    print("| format | tokens per block (mean) | tokens per marker | ratio to paper |")
    print("|---|---|---|---|")
    print(f"| paper | {paper_t:.1f} | {paper_t / n_markers:.2f} | 1.00 |")
    print(f"| compact | {compact_t:.1f} | {compact_t / n_markers:.2f} | {compact_t / paper_t:.3f} |")


if __name__ == "__main__":
    main()
