"""Is the demo's small model tied to one layout? Insert neutral text where marker blocks go and re-score.

A trained demo bundle answers the suite's test items (a) as it was trained, (b) with `--insert` characters appended
to the user turn (where prompt markers go) and (c) with them written at the start of its answer, before it
continues (where the completion block goes); the inserted text carries no information. A model that copies by
content barely moves; one that copies by position loses accuracy.

    python bench/layout_probe.py demo_out/runs/baseline-s0 demo_out/runs/baseline-s1 ... --data demo_out/data
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def answer(model, tok, prompts: list[str]) -> list[str]:
    """Greedy continuations of ready-made prompt texts, cut at the end of turn."""
    import torch

    out = []
    for i in range(0, len(prompts), 128):
        enc = tok(prompts[i : i + 128], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=160, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1] :]:
            out.append(tok.decode(row, skip_special_tokens=False).split(tok.eos_token)[0])
    return out


def chat(tok, content: str) -> str:
    return tok.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--data", required=True, help="the experiment's data folder (test.annotated.jsonl)")
    p.add_argument(
        "--insert", type=int, default=8, help="characters inserted (default 8, a compact block's length)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    import torch

    from treasure.arms import read_jsonl
    from treasure.bundle import load_bundle
    from treasure.commands.demo import _quiet
    from treasure.suite.build import check

    _quiet()
    test = read_jsonl(Path(args.data) / "test.annotated.jsonl")
    rng = random.Random(0)
    fillers = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(args.insert)) for _ in test]
    results = {}
    for path in args.bundles:
        b = load_bundle(path, dtype=torch.float32)
        tok, model = b.tokenizer, b.model.eval()
        tok.padding_side = "left"

        plain = [chat(tok, t["prompt"]) for t in test]
        in_prompt = [chat(tok, f"{t['prompt']} {f}") for t, f in zip(test, fillers, strict=True)]
        in_answer = [chat(tok, t["prompt"]) + f + " " for t, f in zip(test, fillers, strict=True)]
        row = {}
        for name, prompts in (("as trained", plain), ("text after the question", in_prompt),
                              ("text before the answer", in_answer)):  # fmt: skip
            texts = answer(model, tok, prompts)
            by_task: dict[str, list[bool]] = {}
            for t, text in zip(test, texts, strict=True):
                by_task.setdefault(t["task"], []).append(check(t, text.strip()))
            row[name] = statistics.fmean(sum(v) / len(v) for v in by_task.values())
        results[path] = row
        print(path, {k: round(v * 100, 1) for k, v in row.items()}, flush=True)
    names = list(next(iter(results.values())))
    print("\n| layout | accuracy, all tasks (%, mean ± sd over bundles) |\n|---|---|")
    for n in names:
        vals = [r[n] * 100 for r in results.values()]
        sd = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""
        print(f"| {n} | {statistics.fmean(vals):.1f}{sd} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
