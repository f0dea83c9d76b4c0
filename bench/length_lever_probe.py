"""What makes the length lever move on SmolLM2 (issue 13, item 4): one arm trained as the demo trains it, then
probed on development prompts that are not the demo's evaluation prompts.

    .venv/bin/python bench/length_lever_probe.py NAME [--steps 8] [--set FIELD=VALUE ...]
        [--train KEY=VALUE ...] [--arm markers|baseline] [--n 16] [--runs runs/length_probe]

Training: `treasure.demo.run.train_config` (the demo's LoRA run; `--set` overrides a DemoConfig field, `--train` adds
a `treasure train` key) on the demo's annotated OASST train records, as the demo keeps them: every record, the
longer ones cut, or with `--set fit=true` only those whose whole conversation fits max_length with room for both
blocks (demo.data.fitting), so every kept reply shows its end of turn. (Probes run before `fit` was a demo setting
passed `--fit`, with 60 tokens of room: 290 records at 256, now 302.)
Development prompts: the first `--n` MT-Bench first turns outside math, coding and reasoning (never the
demo's held-out OASST prompts, so nothing here is tuned on what the demo reports). Greedy. Measured:
- the lever alone: `length_tokens` fixed at 16 / 48 / 144 SmolLM2 tokens, no instruction, 240 new tokens at most
  (the block included): median reply tokens per target and the Spearman correlation of reply tokens with target;
- the marker arm's inferred blocks (no markers given) and their replies' median length;
- the AlpacaEval-LI wording at 20 / 40 / 80 words, inferred and (marker arm) fixed `length_tokens` = limit x the
  training records' tokens per word; one budget for every limit (the demo's rule for 80 words: an answer can run
  past any limit): violation rate, median words / limit, Spearman of words with the limit.
Writes RUNS/NAME/probe.json (the trained bundle beside it; a second call with the same NAME reuses it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MT_BENCH = REPO.parent / "shared" / "data" / "prompts" / "mt_bench_question.jsonl"
TARGETS = (16, 48, 144)  # length_tokens of the lever-alone probe
LENGTH_GRID = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def dev_prompts(n: int) -> list[str]:
    """The development prompts: the first `n` MT-Bench first turns outside math, coding and reasoning."""
    with MT_BENCH.open(encoding="utf-8") as f:
        questions = [json.loads(line) for line in f]
    return [q["turns"][0] for q in questions if q["category"] not in ("math", "coding", "reasoning")][:n]


def on_grid(n: int) -> int:
    return min(LENGTH_GRID, key=lambda g: abs(math.log(g) - math.log(max(n, 1))))


LIMITS = (20, 40, 80)  # words, AlpacaEval-LI wording


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a DemoConfig field")
    ap.add_argument(
        "--train", action="append", default=[], metavar="KEY=VALUE", help="a `treasure train` key"
    )
    ap.add_argument("--arm", default="markers", choices=("markers", "baseline"))
    ap.add_argument("--n", type=int, default=16, help="development prompts")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "length_probe")
    ap.add_argument(
        "--length-grid",
        action="store_true",
        help="round every length_tokens (training records and fixed values) to the nearest of LENGTH_GRID in log "
        "scale: a few frequent values instead of every integer",
    )
    args = ap.parse_args(argv)

    import torch

    from treasure.arms import read_jsonl, write_jsonl
    from treasure.bundle import load_bundle
    from treasure.commands.demo import _assignments
    from treasure.demo import score
    from treasure.demo.data import prepare_data
    from treasure.demo.run import DemoConfig, fit_train, train_arm, train_config
    from treasure.errors import TreasureError
    from treasure.generate.engine import Generator
    from treasure.model_source import resolve_model

    try:  # `treasure demo --set / --train`: the same parsing and checks
        settings = _assignments(args.set, "--set", allowed=DemoConfig.__dataclass_fields__)
        extra = _assignments(args.train, "--train")
    except TreasureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = DemoConfig(steps=args.steps, **settings, extra=extra)
    tokenizer_path = resolve_model(cfg.model)
    data = args.runs / ("data" if not cfg.length_views else f"data_views{cfg.length_views}")
    train_path, _ = prepare_data(data, tokenizer_path, length_views=cfg.length_views)
    train = read_jsonl(train_path)
    keep = train
    if cfg.fit:
        train_path, keep = fit_train(cfg, train_path, train)
        print(f"fit: {len(keep)} of {len(train)} records", flush=True)
    snap = on_grid if args.length_grid else (lambda n: n)
    if args.length_grid:
        keep = [{**r, "markers": {**r["markers"], "length_tokens": snap(r["markers"]["length_tokens"])}}
                if "length_tokens" in r.get("markers", {}) else r for r in keep]  # fmt: skip
        train_path = train_path.with_name(train_path.stem + ".grid.jsonl")
        write_jsonl(train_path, keep)
    folder = args.runs / args.name
    conf = train_config(cfg, train_file=train_path, output_dir=folder / "bundle", mode=args.arm, seed=0)
    stats = train_arm(conf, folder)
    print("train", stats, flush=True)

    gen = Generator(load_bundle(folder / "bundle", dtype=torch.float32))
    tok = gen.bundle.tokenizer
    prompts = dev_prompts(args.n)
    res: dict = {"name": args.name, "train": stats, "args": {k: str(v) for k, v in vars(args).items()}}

    # the lever alone: a fixed length_tokens, no instruction
    rows = [[{"role": "user", "content": p}] for _ in TARGETS for p in prompts]
    asked = [t for t in TARGETS for _ in prompts]
    mode = "fixed" if args.arm == "markers" else "inferred"
    fixed = [{"length_tokens": snap(t)} for t in asked] if mode == "fixed" else None
    outs = gen.generate_batch(rows, fixed, mode=mode, max_new_tokens=240, batch_size=48)
    ntok = [len(tok(o.text)["input_ids"]) for o in outs]
    res["lever"] = {
        "median_tokens": {
            t: statistics.median(n for n, a in zip(ntok, asked, strict=True) if a == t) for t in TARGETS
        },
        "spearman": score.spearman(asked, ntok),
        "samples": [
            (a, n, o.text[:160], o.markers) for a, n, o in list(zip(asked, ntok, outs, strict=True))[::7]
        ],
    }
    print("lever", res["lever"]["median_tokens"], "spearman", round(res["lever"]["spearman"], 3), flush=True)

    if args.arm == "markers":  # the blocks it infers
        outs = gen.generate_batch(
            [[{"role": "user", "content": p}] for p in prompts], None, mode="inferred", max_new_tokens=240,
            batch_size=16,
        )  # fmt: skip
        res["inferred"] = {
            "median_tokens": statistics.median(len(tok(o.text)["input_ids"]) for o in outs),
            "blocks": [o.markers for o in outs[:6]],
        }
        print("inferred", res["inferred"]["median_tokens"], res["inferred"]["blocks"][:3], flush=True)

    # AlpacaEval-LI wording, inferred and (marker arm) fixed length_tokens
    tpw = score.tokens_per_word(train)
    rows = [
        [{"role": "user", "content": score.LENGTH_INSTRUCTION.format(n=lim, instruction=p)}]
        for lim in LIMITS
        for p in prompts
    ]
    limits = [lim for lim in LIMITS for _ in prompts]
    budget = int((max(LIMITS) + 1) * tpw * 1.25) + 4
    for m in ["inferred", "fixed"] if args.arm == "markers" else ["inferred"]:
        fx = [{"length_tokens": snap(round(lim * tpw))} for lim in limits] if m == "fixed" else None
        outs = gen.generate_batch(rows, fx, mode=m, max_new_tokens=budget, batch_size=48)
        summary = score.length_summary(limits, [score.words(o.text) for o in outs])
        res[f"li_{m}"] = summary
        print(f"li {m}", {k: v for k, v in summary.items() if k not in ("by_limit", "words")}, flush=True)
    (folder / "probe.json").write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
