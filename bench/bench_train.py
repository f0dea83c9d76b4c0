"""Training throughput of marker training against plain TRL `SFTTrainer`, same records, model and steps, one run.

    .venv/bin/python bench/bench_train.py                      # tiny-llama on CPU, writes bench/RESULTS_train.md
    .venv/bin/python bench/bench_train.py --model Qwen/Qwen2.5-0.5B-Instruct --batch 8 --steps 40   # on a GPU

Arms, each training the same model from the same weights on the same examples in the same order for the same steps:
- ``trl``: plain TRL, the conversational prompt/completion records handed to `SFTTrainer` as they are (the reference);
- ``baseline``: treasure's `markers.mode: baseline` (our rendering and tokenisation, no markers);
- ``compact`` and ``paper``: the paper's marker recipe (all 13 categories unless `--categories`, 50/50 dropout) in
  each format (`--arms` picks them).

The figure is response tokens trained per second relative to ``trl``. Marker blocks cost time but are not response
tokens, so the ratio prices the markers. Every arm trains the same response tokens at each step (same examples, no
truncation), so the ratio is ``trl``'s time over the arm's time, summed over the timed steps.

How it is timed: the arms' `SFTTrainer`s are built up front, then stepped in lockstep (step 1 of every arm, step 2 of
every arm, ...; the order rotates each step), each step being the trainer's own `training_step` (TRL's loss, forward
and backward) plus the optimizer and scheduler steps. Neighbouring steps of different arms run seconds apart, so a
machine shared with other jobs slows all arms alike. On a CPU, torch runs one thread and a step is timed by that
thread's CPU time; on a GPU by wall time with synchronisation. The token ratio says what the ratio would be if a
step cost in proportion to its tokens. Tokenisation is not timed (it is reported): it happens once, before training.

Records: OpenAssistant conversations (../shared/data/conversations, 100 English trees; `--data single`: the prompt
and its first reply, `--data thread`: the chain of first replies, multi-turn), those that fit `--max-length`
without truncation in every arm. Markers: the length markers computed from the text, the others drawn at random
from the taxonomy's values (only their token cost matters here).
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


def lockstep(trainers: dict[str, object], opts: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per step of every arm, stepping the arms in turn (see the module docstring)."""
    import torch

    cuda = torch.cuda.is_available()
    clock = time.perf_counter if cuda else time.thread_time
    loaders, times = {}, {arm: [] for arm in trainers}
    for arm, trainer in trainers.items():
        trainer.create_optimizer_and_scheduler(num_training_steps=opts.steps)
        loaders[arm] = iter(trainer.get_train_dataloader())
    arms = list(trainers)
    for step in range(opts.steps):
        for arm in arms[step % len(arms) :] + arms[: step % len(arms)]:
            trainer = trainers[arm]
            batch = trainer._prepare_inputs(next(loaders[arm]))
            items = (batch["labels"][..., 1:] != -100).sum()
            if cuda:
                torch.cuda.synchronize()
            t0 = clock()
            trainer.training_step(trainer.model, batch, items)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.optimizer.zero_grad()
            if cuda:
                torch.cuda.synchronize()
            if step >= opts.warmup:
                times[arm].append(clock() - t0)
        print(f"step {step + 1}/{opts.steps}", flush=True)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per arm")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument(
        "--data", choices=["single", "thread"], default="single", help="first replies or whole threads"
    )
    p.add_argument("--categories", default="", help="marker categories (comma list; default: all 13)")
    p.add_argument("--arms", default="compact,paper", help="marker arms to run besides trl and baseline")
    p.add_argument("--out", default=str(REPO / "bench" / "RESULTS_train.md"))
    p.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    opts = p.parse_args()
    import torch

    from treasure.records import write_records
    from treasure.train.config import load_config
    from treasure.train.trainer import prepare

    opts.cpu = not torch.cuda.is_available()
    if opts.cpu:
        torch.set_num_threads(1)  # all of a step's work in this thread, so its CPU time is the step's cost
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    arms = tuple(a for a in ARMS if a in {"trl", "baseline", *opts.arms.split(",")})
    recs = oasst_records(opts.data)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # keep the records that fit max_length in every arm, so no arm trains a truncated response
        write_records(tmp / "train.jsonl", recs)
        keep = set(range(len(recs)))
        for arm in ("baseline", "paper", "compact"):
            prep = prepare(load_config(write_config(tmp, arm, opts)), load_model=False, build_datasets=False)
            for i, r in enumerate(recs):
                ex = prep.spec.example(prep.tokenizer, r, epoch=0, index=i)
                if len(ex["input_ids"]) > opts.max_length:
                    keep.discard(i)
        recs = [r for i, r in enumerate(recs) if i in keep]
        write_records(tmp / "train.jsonl", recs)
        print(f"{len(recs)} records fit max_length {opts.max_length}", flush=True)
        built = {arm: build(arm, tmp, opts) for arm in arms}
        times = lockstep({arm: b[0] for arm, b in built.items()}, opts)
    report = summarize(built, times, recs, opts)
    print(report)
    out = Path(opts.out)
    previous = out.read_text(encoding="utf-8") if out.exists() and opts.append else ""
    out.write_text(previous + ("\n" if previous else "") + report, encoding="utf-8")
    return 0


def summarize(built: dict, times: dict[str, list[float]], recs: list[dict], opts: argparse.Namespace) -> str:
    import torch
    import transformers
    import trl

    n = opts.steps * opts.batch
    timed = slice(opts.warmup * opts.batch, n)
    lengths = {a: b[3][:n] for a, b in built.items()}
    trained = {a: b[2][:n] for a, b in built.items()}
    response = sum(trained["baseline"][timed])  # response + end of turn: the same text in every arm
    rows = []
    for arm in built:
        total = sum(times[arm])
        paired = sorted(t / a for t, a in zip(times["trl"], times[arm], strict=True))
        q1, q3 = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
        rows.append(
            f"| {arm} | {statistics.mean(lengths[arm]):.0f} | {statistics.mean(trained[arm]):.0f} | "
            f"{statistics.mean(lengths['trl']) / statistics.mean(lengths[arm]):.3f} | {total / len(times[arm]):.3f} | "
            f"{response / total:.0f} | **{sum(times['trl']) / total:.3f}** | {statistics.median(paired):.3f} "
            f"({q1:.2f}-{q3:.2f}) | {built[arm][1]:.1f} |"
        )
    cmd = "python bench/bench_train.py " + " ".join(sys.argv[1:])
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores, 1 thread)"
    )
    clock = "wall time" if torch.cuda.is_available() else "thread CPU time"
    cats = opts.categories.replace(",", ", ") if opts.categories else "all 13 paper categories"
    data = "prompt + first reply" if opts.data == "single" else "whole threads of first replies, multi-turn"
    return "\n".join(
        [
            f"### `{cmd.strip()}`",
            "",
            f"Model {opts.model}; {device}; torch {torch.__version__}, transformers {transformers.__version__}, "
            f"trl {trl.__version__}, Python {platform.python_version()}. Data: {len(recs)} OpenAssistant "
            f"conversations ({data}); markers: {cats}, 50/50 dropout. Batch {opts.batch}, {opts.steps} lockstep "
            f"steps per arm, the first {opts.warmup} untimed, timed by {clock}; {response} response tokens "
            f"trained per arm in the timed steps.",
            "",
            "| arm | tokens / example | trained tokens / example | token ratio | s / step | response tokens / s | "
            "**ratio vs trl** | per-step ratio, median (IQR) | tokenising s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
