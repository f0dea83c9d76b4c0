"""Does a trained marker arm read its `length_tokens` marker? A likelihood test that needs no decoding (issue 13).

For held-out OASST replies (the demo's test split by tree) short enough to be scored whole, the reply is scored
by the trained bundle after its own annotated block, rendered as training renders it (`score.reply_logprobs`:
the markers in the prompt and as the completion's block), once with the true `length_tokens` L and once with it
replaced by round(L / 3) and by 3L (every other marker, the other length markers included, left true). Measured:
- the end of turn: log p(end-of-turn token | the whole true reply), true L vs the wrong ones. A model that reads
  the marker ends a reply of L tokens more readily when told L than when told 3L (and less readily than when told
  L / 3, which it should have stopped before);
- the reply itself: mean log-probability per token, true vs wrong L (a model that plans length from the marker
  finds the true reply likelier under the true L).
Each as the share of replies where the true L wins, with its n, and the mean difference.

    .venv/bin/python bench/length_marker_likelihood.py BUNDLE [BUNDLE ...] [--data runs/length_probe/data]
        [--max-tokens 90] [--n 64] [--out bench/results/length_marker_likelihood.json]

The data folder is `bench/length_lever_probe.py`'s (made there once by `treasure.demo.data.prepare_data`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=REPO / "runs" / "length_probe" / "data")
    ap.add_argument("--max-tokens", type=int, default=90, help="replies of at most this many tokens")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "length_marker_likelihood.json")
    args = ap.parse_args(argv)

    import torch

    from treasure.arms import read_jsonl
    from treasure.bundle import load_bundle
    from treasure.demo import score

    test = [
        r
        for r in read_jsonl(args.data / "test.annotated.jsonl")
        if 5 <= r["markers"].get("length_tokens", 0) <= args.max_tokens
    ]
    test = score.sample(test, args.n, 0)
    res: dict = {"n": len(test), "max_tokens": args.max_tokens, "bundles": {}}
    for path in args.bundles:
        bundle = load_bundle(path, dtype=torch.float32)
        tok = bundle.tokenizer
        eot = tok.eos_token
        lengths = [
            len(tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in test
        ]

        def scored(factor: float, rows=test, lengths=lengths, bundle=bundle, eot=eot):
            marks = [
                dict(r["markers"], length_tokens=max(1, round(r["markers"]["length_tokens"] * factor)))
                for r in rows
            ]
            items = [(r["messages"][:-1], r["messages"][-1]["content"]) for r in rows]
            ended = [(m, t + eot) for m, t in items]
            plain = score.reply_logprobs(bundle, items, marks, max_reply_tokens=256)
            with_end = score.reply_logprobs(bundle, ended, marks, max_reply_tokens=257)
            end = [w * (n + 1) - p * n for w, p, n in zip(with_end, plain, lengths, strict=True)]
            return plain, end

        true_plain, true_end = scored(1.0)
        out = {}
        for name, factor in (("L/3", 1 / 3), ("3L", 3.0)):
            plain, end = scored(factor)
            out[name] = {
                "end_of_turn_true_wins": sum(t > w for t, w in zip(true_end, end, strict=True)) / len(test),
                "end_of_turn_mean_diff": statistics.fmean(t - w for t, w in zip(true_end, end, strict=True)),
                "reply_true_wins": sum(t > w for t, w in zip(true_plain, plain, strict=True)) / len(test),
                "reply_mean_diff": statistics.fmean(t - w for t, w in zip(true_plain, plain, strict=True)),
            }
        out["true_end_of_turn_logprob_median"] = statistics.median(true_end)
        res["bundles"][str(path)] = out
        print(path, json.dumps(out, indent=1), flush=True)
    args.out.write_text(json.dumps(res, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
