"""Which length marker does a trained marker arm read? Inference only, on a bundle the probe trained (issue 13).

`bench/length_lever_probe.py` fixes `length_tokens` alone. The block also holds `length_sentences` and
`length_paragraphs`: small counts that a model could track by counting sentence ends and blank lines, instead of
comparing its position with a number. This fixes each of the three at a low and a high value, with nothing else
given and no instruction, on the probe's development prompts (MT-Bench first turns outside math, coding and
reasoning; greedy, 240 new tokens at most). It counts each reply the way the annotators count it
(`annotate.length`): tokens, sentences, paragraphs.

    .venv/bin/python bench/length_markers_read.py BUNDLE [--n 16] [--out bench/results/length_markers_read.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
SETTINGS = {"length_tokens": (16, 144), "length_sentences": (1, 6), "length_paragraphs": (1, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "length_markers_read.json")
    args = ap.parse_args(argv)

    import torch
    from length_lever_probe import dev_prompts

    from treasure.annotate.length import count_paragraphs, count_sentences
    from treasure.bundle import load_bundle
    from treasure.demo import score
    from treasure.generate.engine import Generator

    gen = Generator(load_bundle(args.bundle, dtype=torch.float32))
    tok = gen.bundle.tokenizer
    prompts = dev_prompts(args.n)
    res: dict = {"bundle": str(args.bundle), "n": len(prompts), "markers": {}}
    for marker, values in SETTINGS.items():
        asked = [v for v in values for _ in prompts]
        rows = [[{"role": "user", "content": p}] for _ in values for p in prompts]
        outs = gen.generate_batch(
            rows, [{marker: v} for v in asked], mode="fixed", max_new_tokens=240, batch_size=32
        )
        counts = {
            "tokens": [len(tok(o.text)["input_ids"]) for o in outs],
            "sentences": [count_sentences(o.text) for o in outs],
            "paragraphs": [count_paragraphs(o.text) for o in outs],
        }
        res["markers"][marker] = {
            str(v): {
                k: statistics.median(c for c, a in zip(cs, asked, strict=True) if a == v)
                for k, cs in counts.items()
            }
            for v in values
        }
        res["markers"][marker]["spearman_with_asked"] = {
            k: score.spearman(asked, cs) for k, cs in counts.items()
        }
        print(marker, json.dumps(res["markers"][marker]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
