"""Per-token generation latency with and without the marker-block constraint (MarkerLogitsProcessor).

A ~26M-parameter Llama (random weights, GPT-2 tokenizer, 50,257 ids) generates 64 new tokens per call, batch 1 and
batch 8, sampling at temperature 1. Arms, interleaved within each repetition so that machine load hits them alike:

- plain: no processor (the baseline);
- constrained: the paper format, no fixed markers; a random model's block takes part of the 64 steps, the rest
  is the free response (the processor then only checks that the row is done);
- constrained+fixed: the same with fixed markers per row (`quality`, `length_tokens`, `domain` ...);
- in-block: fixed markers whose block alone takes most of the 64 steps (plus whatever the model adds), so the
  processor masks (nearly) every step: the worst case for overhead per token.

Wall-clock ratios on a shared CPU are noisy (other jobs steal cycles mid-call), so the table gives the ratio of the
fastest repetitions (min: the least disturbed runs) beside the ratio of medians, and it times the processor's own
calls: the processor's share of a step is the overhead without the model's noise. Also: the machine's build time
(cold, then cached).

    .venv/bin/python bench/bench_constrain.py [--reps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from importlib import resources

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from treasure.generate.constrain import MarkerConstraint
from treasure.taxonomy import paper_taxonomy

NEW_TOKENS = 64
PROMPTS = [
    "Write a haiku about the sea.",
    "Hi",
    "Explain recursion to a child, with one example please.",
    "Translate 'good morning' into French.",
    "What is 17 times 23?",
    "Fix the bug: for i in range(10) print(i)",
    "Summarise the plot of Hamlet in two sentences.",
    "Tell me a joke about cats.",
]
FIXED = [{"quality": 0.9, "length_tokens": 120}, {"domain": "Code"}, None, {"language": "French"}]
# Long fixed values: their block alone takes most of the steps, so (nearly) every step is masked.
HEAVY = {"quality": 12345.67, "length_tokens": 123456, "length_sentences": 9876, "task": "CodeGeneration"}


class Timed:
    """Wraps a processor and adds up the time spent in its calls."""

    def __init__(self, proc):
        self.proc, self.seconds, self.calls = proc, 0.0, 0

    def __call__(self, input_ids, scores):
        t = time.perf_counter()
        out = self.proc(input_ids, scores)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tax = paper_taxonomy()
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(resources.files("treasure.assets") / "gpt2-tokenizer.json")
    )
    tok.pad_token, tok.padding_side = "<|endoftext|>", "left"

    t = time.perf_counter()
    con = MarkerConstraint(tok, tax, "paper")
    cold = time.perf_counter() - t
    t = time.perf_counter()
    MarkerConstraint(tok, tax, "paper")
    cached = time.perf_counter() - t

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
        num_key_value_heads=6, max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None  # every call writes exactly NEW_TOKENS tokens
    model.generation_config.pad_token_id = tok.pad_token_id
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gen = {"do_sample": True, "temperature": 1.0, "top_k": 0, "max_new_tokens": NEW_TOKENS}

    print(f"model: Llama {params:.1f}M parameters (random init), vocab {len(tok)}, {NEW_TOKENS} new tokens, "
          f"sampling T=1; torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    print(f"machine build (paper format, 13 categories): cold {cold * 1000:.0f} ms, cached {cached * 1e6:.0f} us; "
          f"in-block arm: its fixed markers alone take {con.min_block_tokens(HEAVY)} ids")  # fmt: skip
    print()
    print("| batch | arm | ms/token min | ms/token median | ratio to plain (min) | ratio (median) "
          "| block steps | processor us/call | processor share of a step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        enc = tok(PROMPTS[:batch], return_tensors="pt", padding=True)
        arms = {
            "plain": lambda b=batch: None,
            "constrained": lambda b=batch: con.logits_processor(),
            "constrained+fixed": lambda b=batch: con.logits_processor(
                [FIXED[i % len(FIXED)] for i in range(b)]
            ),
            "in-block": lambda b=batch: con.logits_processor(HEAVY),
        }
        times: dict[str, list[float]] = {name: [] for name in arms}
        proc_us: dict[str, list[float]] = {name: [] for name in arms}
        block_steps: dict[str, list[float]] = {name: [] for name in arms}
        model.generate(**enc, **gen)  # warm-up
        for rep in range(args.reps):
            for name, make in arms.items():
                proc = make()
                timed = Timed(proc) if proc is not None else None
                torch.manual_seed(rep)
                t = time.perf_counter()
                out = model.generate(**enc, logits_processor=[timed] if timed else None, **gen)
                times[name].append((time.perf_counter() - t) / NEW_TOKENS)
                if timed:
                    proc_us[name].append(timed.seconds / timed.calls * 1e6)
                    results = proc.results(out)
                    block_steps[name].append(statistics.mean(min(r.tokens, NEW_TOKENS) for r in results))
        base_min, base_med = min(times["plain"]), statistics.median(times["plain"])
        for name in arms:
            t_min, t_med = min(times[name]), statistics.median(times[name])
            steps = f"{statistics.mean(block_steps[name]):.0f} of {NEW_TOKENS}" if block_steps[name] else "-"
            us = statistics.mean(proc_us[name]) if proc_us[name] else None
            share = f"{us / (t_med * 1e6):.1%}" if us is not None else "-"
            print(f"| {batch} | {name} | {t_min * 1000:.2f} | {t_med * 1000:.2f} | {t_min / base_min:.3f} "
                  f"| {t_med / base_med:.3f} | {steps} | {'-' if us is None else f'{us:.0f}'} | {share} |")  # fmt: skip


if __name__ == "__main__":
    main()
