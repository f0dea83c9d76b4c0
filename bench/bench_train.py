"""Training throughput of marker training against plain TRL `SFTTrainer`, same records, model and steps, one run.

    .venv/bin/python bench/bench_train.py                      # tiny-llama on CPU, writes bench/RESULTS_train.md
    .venv/bin/python bench/bench_train.py --model Qwen/Qwen2.5-0.5B-Instruct --batch 8 --steps 20   # on a GPU

Arms, each training the same model from the same weights on the same examples in the same order for the same steps:
- ``trl``: plain TRL, the conversational prompt/completion records handed to `SFTTrainer` as they are (the baseline);
- ``baseline``: treasure's `markers.mode: baseline` (our rendering and tokenisation, no markers);
- ``compact`` and ``paper``: the paper's marker recipe (all 13 categories unless `--categories`, 50/50 dropout) in
  each format (`--arms` picks them).
The figure is the ratio of response tokens trained per second against ``trl``: marker blocks cost time but are not
response tokens, so the ratio prices the markers. Response tokens per step are the same in every arm (same examples,
no truncation), so the ratio is ``trl``'s time over the arm's time for the same steps, summed over the timed steps of
all rounds. Arms are interleaved over rounds so a busy machine slows all arms alike; on a CPU the process's own CPU
time is the main measure (steadier than wall time on a machine shared with other jobs), wall time is reported too,
and so is the token ratio (what the ratio would be if a step's cost were proportional to its tokens). Tokenisation
is not timed (it is reported): it happens once, before training.

Records: OpenAssistant conversations (../shared/data/conversations, 100 English trees; `--data single`: the prompt
and its first reply, `--data thread`: the chain of first replies, multi-turn),
those that fit `--max-length` without truncation in every arm. Markers: the length markers computed from the text,
the others drawn at random from the taxonomy's values (only their token cost matters here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OASST = REPO.parent / "shared" / "data" / "conversations" / "oasst_en_100_tree.jsonl"
ARMS = ("trl", "baseline", "compact", "paper")


def _thread(node: dict, turns: bool) -> list[dict]:
    """The prompt and its first reply; with `turns`, the whole chain of first replies down to the last reply."""
    messages = [{"role": "user", "content": node["text"]}]
    while node.get("replies"):
        node = node["replies"][0]
        messages.append(
            {"role": "user" if node["role"] == "prompter" else "assistant", "content": node["text"]}
        )
        if not turns and len(messages) == 2:
            break
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    return messages


def oasst_records(data: str = "single") -> list[dict]:
    """One conversation per tree (`single`: prompt + first reply; `thread`: the chain of first replies), with markers."""
    from treasure.annotate.length import count_paragraphs, count_sentences, length_bucket
    from treasure.taxonomy import paper_taxonomy
    from treasure.train.tiny import tiny_tokenizer

    tax, tok, rng = paper_taxonomy(), tiny_tokenizer(), random.Random(0)
    out = []
    for line in OASST.read_text(encoding="utf-8").splitlines():
        messages = _thread(json.loads(line)["prompt"], turns=data == "thread")
        if len(messages) < 2:
            continue
        reply = messages[-1]["content"]
        n = len(tok(reply, add_special_tokens=False)["input_ids"])
        markers = {
            "quality": round(rng.uniform(0, 5), 2),
            "quality_bucket": rng.choice(tax["quality_bucket"].values),
            "length_tokens": n,
            "length_sentences": count_sentences(reply),
            "length_paragraphs": count_paragraphs(reply),
            "length_bucket": length_bucket(n),
            **{c: rng.choice(tax[c].values) for c in ("task", "domain", "format", "source", "style")},
            "language": "English",
        }
        if markers["domain"] == "Code":
            markers["code_type"] = rng.choice(tax["code_type"].values)
        out.append({"messages": messages, "markers": markers})
    return out


def write_config(tmp: Path, arm: str, opts: argparse.Namespace) -> Path:
    markers = {"mode": "baseline"} if arm in ("trl", "baseline") else {"format": arm}
    if opts.categories and arm not in ("trl", "baseline"):
        markers["categories"] = opts.categories.split(",")
    config = {
        "model_name_or_path": opts.model,
        "train_file": str(tmp / "train.jsonl"),
        "output_dir": str(tmp / arm),
        "markers": markers,
        "max_steps": opts.steps,
        "per_device_train_batch_size": opts.batch,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "max_length": opts.max_length,
        "save_strategy": "no",
        "logging_steps": 1000,
        "seed": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "activation_checkpointing": False,
        **({"bf16": False, "use_cpu": True} if opts.cpu else {"bf16": True}),
    }
    path = tmp / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def build(arm: str, tmp: Path, opts: argparse.Namespace):
    """(trainer, seconds spent tokenising, per-example trained-token counts in training order)."""
    from treasure.train.config import load_config
    from treasure.train.trainer import build_trainer, epoch_copies, prepare, trl_args

    run = load_config(write_config(tmp, arm, opts))
    t0 = time.perf_counter()
    if arm != "trl":
        trainer = build_trainer(run, prepare(run))
    else:  # plain TRL on the same examples in the same order: the records as conversational prompt/completion
        from datasets import Dataset
        from trl import SFTTrainer

        from treasure.train.render import epoch_plan

        prep = prepare(run, build_datasets=False)
        prep.copies = epoch_copies(run.args, len(prep.records))
        plan = epoch_plan(len(prep.records), prep.copies, prep.spec.seed)
        rows = [prep.records[i]["messages"] for _, i in plan]
        ds = Dataset.from_dict({"prompt": [m[:-1] for m in rows], "completion": [m[-1:] for m in rows]})
        args = trl_args(run.args, len(prep.records), prep.copies)
        args.completion_only_loss = None  # TRL's default: completion-only for prompt/completion data
        prep.tokenizer.chat_template = prep.spec.chat_template  # the model's own template, unwrapped
        trainer = SFTTrainer(model=prep.model, args=args, train_dataset=ds, processing_class=prep.tokenizer)
    seconds = time.perf_counter() - t0
    trained = [sum(1 for x in row["labels"] if x != -100) for row in trainer.train_dataset]
    lengths = [len(row["input_ids"]) for row in trainer.train_dataset]
    return trainer, seconds, trained, lengths


class StepTimer:
    """Wall time and this process's CPU time between consecutive optimizer steps (data loading included).

    On a CPU shared with other jobs, CPU time is the steadier measure of the work a step costs."""

    def __init__(self):
        self.stamps: list[tuple[float, float]] = []

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                timer.stamps.append((time.perf_counter(), time.process_time()))

        return _CB()


def measure(arm: str, tmp: Path, opts: argparse.Namespace) -> dict:
    trainer, prep_s, trained, lengths = build(arm, tmp, opts)
    timer = StepTimer()
    trainer.add_callback(timer.callback())
    trainer.train()
    pairs = list(zip(timer.stamps, timer.stamps[1:], strict=False))[opts.warmup - 1 :]
    n = opts.steps * opts.batch
    return {
        "wall": [b[0] - a[0] for a, b in pairs],
        "cpu": [b[1] - a[1] for a, b in pairs],
        "prep_s": prep_s,
        "trained": trained[:n],
        "lengths": lengths[:n],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per arm and round")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of all arms")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument(
        "--data", choices=["single", "thread"], default="single", help="first replies or whole threads"
    )
    p.add_argument("--categories", default="", help="marker categories (comma list; default: all 13)")
    p.add_argument("--out", default=str(REPO / "bench" / "RESULTS_train.md"))
    p.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--arms", default="compact,paper", help="marker arms to run besides trl and baseline")
    opts = p.parse_args()
    import torch

    opts.cpu = not torch.cuda.is_available()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    recs = oasst_records(opts.data)
    from treasure.records import write_records

    arms = tuple(a for a in ARMS if a in {"trl", "baseline", *opts.arms.split(",")})
    results: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # keep the records that fit max_length in every arm (so no arm trains a truncated response)
        write_records(tmp / "train.jsonl", recs)
        from treasure.train.config import load_config
        from treasure.train.trainer import prepare

        opts_all = argparse.Namespace(**{**vars(opts), "steps": 1})
        keep = set(range(len(recs)))
        for arm in ("baseline", "paper", "compact"):
            prep = prepare(
                load_config(write_config(tmp, arm, opts_all)), load_model=False, build_datasets=False
            )
            for i, r in enumerate(recs):
                if (
                    i in keep
                    and len(prep.spec.example(prep.tokenizer, r, epoch=0, index=i)["input_ids"])
                    > opts.max_length
                ):
                    keep.discard(i)
        recs = [r for i, r in enumerate(recs) if i in keep]
        write_records(tmp / "train.jsonl", recs)
        print(f"{len(recs)} records fit max_length {opts.max_length}", flush=True)
        for r in range(opts.rounds):
            for arm in arms if r % 2 == 0 else arms[::-1]:
                res = measure(arm, tmp, opts)
                results[arm].append(res)
                print(
                    f"round {r + 1} {arm:>8}: median step {statistics.median(res['wall']):.3f}s wall, "
                    f"{statistics.median(res['cpu']):.3f}s cpu",
                    flush=True,
                )
    report = summarize(results, recs, opts)
    print(report)
    out = Path(opts.out)
    previous = out.read_text(encoding="utf-8") if out.exists() and opts.append else ""
    out.write_text(previous + ("\n" if previous else "") + report, encoding="utf-8")
    return 0


def summarize(results: dict[str, list[dict]], recs: list[dict], opts: argparse.Namespace) -> str:
    response = results["baseline"][0]["trained"]  # response + end of turn: the same text in every arm
    per_step = sum(response) / opts.steps
    timed = opts.steps - opts.warmup

    def total(arm: str, key: str, rnd: int | None = None) -> float:
        """Seconds over the timed steps (of one round, or of all)."""
        runs = results[arm] if rnd is None else [results[arm][rnd]]
        return sum(sum(res[key]) for res in runs)

    def ratio(arm: str, key: str) -> tuple[float, float, float]:
        """Response tokens per second relative to trl: over all rounds, and the lowest and highest round."""
        rounds = [total("trl", key, r) / total(arm, key, r) for r in range(opts.rounds)]
        return total("trl", key) / total(arm, key), min(rounds), max(rounds)

    tokens = {a: statistics.mean(results[a][0]["lengths"]) for a in results}
    rows = []
    for arm in results:
        first = results[arm][0]
        cpu_s = total(arm, "cpu") / (timed * opts.rounds)
        wall_s = total(arm, "wall") / (timed * opts.rounds)
        r_cpu, lo, hi = ratio(arm, "cpu")
        r_wall = ratio(arm, "wall")[0]
        rows.append(
            f"| {arm} | {tokens[arm]:.0f} | {statistics.mean(first['trained']):.0f} | {tokens['trl'] / tokens[arm]:.3f} | "
            f"{cpu_s:.3f} | {per_step / cpu_s:.0f} | **{r_cpu:.3f}** ({lo:.2f}-{hi:.2f}) | {wall_s:.3f} | "
            f"{r_wall:.3f} | {first['prep_s']:.1f} |"
        )
    import torch
    import transformers
    import trl

    cmd = "python bench/bench_train.py " + " ".join(sys.argv[1:])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    cats = opts.categories.replace(",", ", ") if opts.categories else "all 13 paper categories"
    data = "prompt + first reply" if opts.data == "single" else "whole threads of first replies (multi-turn)"
    return "\n".join(
        [
            f"## `{cmd.strip()}`",
            "",
            f"Model {opts.model}; {device}; torch {torch.__version__}, transformers {transformers.__version__}, "
            f"trl {trl.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} torch threads. "
            f"Data: {len(recs)} OpenAssistant conversations ({data}); markers: {cats}, 50/50 dropout. Batch "
            f"{opts.batch}, {opts.steps} steps per arm and round ({opts.warmup} untimed), {opts.rounds} interleaved "
            f"rounds; {per_step:.0f} response tokens per step in every arm.",
            "",
            "| arm | tokens / example | trained / example | token ratio | cpu s / step | response tok / cpu s | "
            "**ratio (cpu)** (rounds) | wall s / step | ratio (wall) | tokenising s |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
