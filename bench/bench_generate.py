"""Generation latency: what the completion's marker block costs, and what constrained decoding costs per token.

    .venv/bin/python bench/bench_generate.py [--model DIR] [--response-tokens 32] [--repeats 5]

Without --model it builds an untrained tiny-llama bundle per format (paper, compact) in a temporary folder: the
costs measured here are structural (decode steps, logits processing), not a matter of what the model learned.
Every timed generation is greedy with min_new_tokens = max_new_tokens, so each run decodes exactly the number of
tokens it is meant to; one model, one prompt, side by side in one process:

- ``block written``: the generator's fixed mode with a representative marker set; the model decodes the block
  (B tokens, constrained) and then N response tokens: B + N decode steps.
- ``block given``: the same prompt with the same block already appended to it (prefilled), N response tokens
  decoded, unconstrained: the same output length with no block to write. Their ratio against (B + N) / N tells
  whether the block costs about its token count.
- ``unconstrained``: the block-written run without the constraint (same B + N steps): the difference is the
  constraint's overhead, reported per generated token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

USER = [{"role": "user", "content": "Fix this line of Python: prnt(1 + 2)"}]
MARKERS = {"quality": 3.5, "length_tokens": 120, "length_bucket": "concise", "task": "CodeFix", "domain": "Code",
           "language": "English"}  # fmt: skip


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def bench(model_dir: Path, n_response: int, repeats: int) -> dict:
    import torch

    from treasure.bundle import load_bundle
    from treasure.generate.engine import Generator

    bundle = load_bundle(model_dir)
    con = Generator(bundle)
    unc = Generator(bundle, constrained=False)
    tok = bundle.tokenizer
    markers = {k: v for k, v in MARKERS.items() if k in con.taxonomy}
    prompt, fixed = con.plan(USER, markers, "fixed")
    # The block the model writes (greedy: the fixed markers plus whatever it adds between them), measured once.
    probe = con.generate(USER, markers, max_new_tokens=80 + n_response, min_new_tokens=80 + n_response)
    parsed, _ = bundle.split_completion(probe.raw)
    assert parsed.complete, probe.raw[:300]
    block_text = probe.raw[: parsed.end]
    n_block = len(tok(block_text, add_special_tokens=False)["input_ids"])
    total = n_block + n_response
    check = con.generate(USER, markers, max_new_tokens=total, min_new_tokens=total)
    assert check.raw.startswith(block_text) and check.completion_tokens == total, check.raw[:300]

    def written() -> None:
        con.generate(USER, markers, max_new_tokens=total, min_new_tokens=total)

    def unconstrained() -> None:
        unc.generate(USER, markers, max_new_tokens=total, min_new_tokens=total)

    enc = tok([prompt + block_text], return_tensors="pt", add_special_tokens=False)
    kw = con._generate_kwargs(n_response, 0.0, 1.0, n_response)

    def given() -> None:
        with torch.inference_mode():
            out = bundle.model.generate(**enc, **kw)
        assert out.shape[1] - enc["input_ids"].shape[1] == n_response

    t_written, t_given, t_unc = (_time(f, repeats) for f in (written, given, unconstrained))
    return {
        "format": bundle.markers.format,
        "block_tokens": n_block,
        "response_tokens": n_response,
        "prompt_tokens": check.prompt_tokens,
        "written_s": t_written,
        "given_s": t_given,
        "unconstrained_s": t_unc,
        "ratio": t_written / t_given,
        "expected_ratio": total / n_response,
        "constraint_ms_per_token": 1000 * (t_written - t_unc) / total,
        "ms_per_token": 1000 * t_unc / total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default=None, help="a bundle (default: untrained tiny bundles, paper and compact)"
    )
    ap.add_argument("--response-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    if args.model:
        dirs = [Path(args.model)]
    else:
        from test_generate import make_bundle

        tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
        dirs = [make_bundle(tmp / fmt, fmt) for fmt in ("paper", "compact")]
    print("| format | block tokens (B) | response tokens (N) | block written | block given | ratio | (B+N)/N "
          "| unconstrained | decode ms/token | constraint ms/token |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in dirs:
        r = bench(d, args.response_tokens, args.repeats)
        print(f"| {r['format']} | {r['block_tokens']} | {r['response_tokens']} | {r['written_s'] * 1000:.0f} ms "
              f"| {r['given_s'] * 1000:.0f} ms | {r['ratio']:.2f} | {r['expected_ratio']:.2f} "
              f"| {r['unconstrained_s'] * 1000:.0f} ms | {r['ms_per_token']:.2f} "
              f"| {r['constraint_ms_per_token']:+.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
