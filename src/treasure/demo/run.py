"""The real-model demo: the paper's experiment in miniature, on SmolLM2-135M-Instruct and OpenAssistant data.

    out = run_demo(DemoConfig(), Path("demo_out"), on_stage=print)

Per seed, a baseline arm and a marker arm are fine-tuned with LoRA from the same base model on the same annotated
records, in the same order, for the same steps (the baseline's records carry no markers); then both answer the
same held-out prompts. Every stage writes its result to `out` and is skipped when found there, so an interrupted
demo continues where it stopped. What is measured (score.py): word-limit violations with the AlpacaEval-LI
wording (baseline, markers inferred, markers fixed with `length_tokens`), marker inference on held-out prompts,
the quality lever by likelihood, and each arm's compute.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from treasure.arms import QUIET_RUN, read_jsonl, train_from_yaml, use_cuda, write_json, write_jsonl
from treasure.demo import score
from treasure.demo.data import fitting, prepare_data

INFER_CATEGORIES = ("task", "domain", "format", "length_bucket")
# The most ids one marker block takes, per block format: 13 compact categories take ~20 ids, the paper's text tags
# ~110. The budget of a block generated alone, and (twice: prompt and completion) the room `fit` leaves for them.
BLOCK_IDS = {"compact": 28, "paper": 120}
# The three conditions every generation row compares: condition -> (arm, generation mode). "fixed" is the marker
# arm given the row's markers.
CONDITIONS = {
    "baseline": ("baseline", "inferred"),
    "inferred": ("markers", "inferred"),
    "fixed": ("markers", "fixed"),
}
TAIL_CATEGORIES = ("task", "domain")
# The marker arm's block (DemoConfig.categories): the paper's categories less quality, length_sentences and
# length_paragraphs.
DEMO_CATEGORIES = ("quality_bucket", "length_tokens", "length_bucket", "task", "domain", "code_type", "format",
                   "source", "style", "language")  # fmt: skip
# The request in words for each format the report controls (the `format` marker asks for the same thing).
FORMAT_REQUESTS = {
    "Enumeration": "Answer with a numbered list.",
    "JSON": "Answer with a JSON document only.",
    "Markdown": "Format your answer in Markdown, with headings.",
    "Tabular": "Present your answer as a table.",
}


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    seeds: tuple[int, ...] = (0,)
    steps: int = 16  # what 2 CPU cores afford in the 20-minute budget (README); --steps for more
    batch_size: int = 8
    learning_rate: float = 1e-3
    lora_r: int = 16
    max_length: int = 256
    format: str = "compact"
    dataset_dropout: float = 0.5
    sample_dropout: float = 0.5
    length_views: int = 0  # cut copies of each training reply (data.prefix_views)
    # train only on the replies whose whole conversation fits max_length with both blocks (data.fitting), so that
    # each shows its end of turn and the length its marker says. Off: at 32 steps it gave terse, degenerate marker
    # answers (docs/findings.md); every reply, the longer ones cut, is the default
    fit: bool = False
    # the categories the marker arm's blocks hold (None: every annotated category of the paper's taxonomy). The
    # default leaves out the three numbers the block needs no lever for (quality, length_sentences,
    # length_paragraphs; quality_bucket stays): at this budget a number written digit by digit runs on, and its
    # digits spill into the reply (docs/findings.md)
    categories: tuple[str, ...] | None = DEMO_CATEGORIES
    # the learning rate of the marker arm's new token rows (`treasure train` embedding_learning_rate; compact
    # format only: the paper's tags add no tokens); None: learning_rate. 10x: at LoRA's rate the rows lag what the
    # model wants to write, so its constrained blocks close early (docs/findings.md)
    embedding_learning_rate: float | None = 1e-2
    countdown: bool = True  # the marker arm's length countdown (treasure/countdown.py; docs/findings.md)
    # the fixed length_tokens for an "at most N words" request: this share of N words in tokens, an answer under
    # the limit (chosen on the lever probe's MT-Bench development prompts, never on the demo's: docs/findings.md)
    length_target: float = 0.8
    limits: tuple[int, ...] = (20, 40, 80)
    n_length_prompts: int = 12  # held-out prompts, each asked at every limit
    n_infer: int = 48  # held-out prompts whose block the marker arm writes
    n_quality_pairs: int = 16  # held-out prompts with a top- and a bottom-ranked reply
    n_format_prompts: int = 3  # held-out prompts, each asked for every format of FORMAT_REQUESTS
    format_tokens: int = 80  # enough for a list, a table or a JSON object to be recognisable
    n_code_repair: int = 6  # HumanEvalFix problems (a seeded sample of the shorter half; 82 at most)
    code_tokens: int = 160  # a short function rewritten whole
    eval_seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # more `treasure train` keys for both arms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_config(
    cfg: DemoConfig, *, train_file: Path, output_dir: Path, mode: str, seed: int
) -> dict[str, Any]:
    """The `treasure train` YAML of one arm: the two arms differ only in `markers.mode`."""
    cuda = use_cuda(cfg.device)
    rows_rate = {}  # only the marker arm with compact tokens has new rows (the baseline arm's records carry none)
    if cfg.embedding_learning_rate is not None and mode == "markers" and cfg.format == "compact":
        rows_rate = {"embedding_learning_rate": cfg.embedding_learning_rate}
    return {
        "model_name_or_path": cfg.model,
        "train_file": str(train_file.resolve()),
        "taxonomy": "paper",
        "markers": {
            "mode": mode,
            "format": cfg.format,
            "placement": "both",
            "dataset_dropout": cfg.dataset_dropout,
            "sample_dropout": cfg.sample_dropout,
            "countdown": cfg.countdown,
            **({"categories": list(cfg.categories)} if cfg.categories else {}),
        },
        "use_peft": True,
        "lora_r": cfg.lora_r,
        "lora_alpha": 2 * cfg.lora_r,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "output_dir": str(output_dir.resolve()),
        "max_steps": cfg.steps,
        "per_device_train_batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, cfg.steps // 10),
        "weight_decay": 0.0,
        "max_length": cfg.max_length,
        "seed": seed,
        "bf16": cuda,
        "use_cpu": not cuda,
        **QUIET_RUN,
        **rows_rate,
        **cfg.extra,
    }


def train_arm(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Train one arm (arms.train_from_yaml) unless folder/train.json says it was; what it cost."""
    done = folder / "train.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    result, seconds = train_from_yaml(config, folder)
    metrics = result.metrics
    out = {
        "seconds": seconds,
        "steps": config["max_steps"],
        "examples": config["max_steps"] * config["per_device_train_batch_size"],
        "tokens": metrics.get("num_input_tokens_seen"),
        "loss": metrics.get("train_loss"),
    }
    write_json(done, out)
    return out


def evaluate_arms(
    cfg: DemoConfig, baseline: Path, markers: Path, train: list[dict], test: list[dict]
) -> dict:
    """Every measurement of one seed's two arms on the held-out records."""
    import torch

    from treasure.bundle import load_bundle
    from treasure.evaluate.control import format_ok
    from treasure.evaluate.marker_accuracy import marker_accuracy
    from treasure.generate.engine import Generator
    from treasure.stats import TAIL_SHARE

    dtype = torch.float32
    gens = {
        "baseline": Generator(load_bundle(baseline, dtype=dtype)),
        "markers": Generator(load_bundle(markers, dtype=dtype)),
    }
    if use_cuda(cfg.device):
        for g in gens.values():
            g.model.to("cuda")
    out: dict[str, Any] = {}

    # The length lever: each held-out prompt at every limit.
    tpw = score.tokens_per_word(train)
    single = score.first_per_tree(score.single_turn(test))  # held-out single-turn prompts, one per tree
    prompts = score.sample(single, cfg.n_length_prompts, cfg.eval_seed)
    convs, limits = [], []
    for lim in cfg.limits:
        for r in prompts:
            text = score.LENGTH_INSTRUCTION.format(n=lim, instruction=r["messages"][0]["content"])
            convs.append([{"role": "user", "content": text}])
            limits.append(lim)
    # Each limit's budget lets an answer run just past its limit (a violation is then seen), no further: the
    # produced/asked ratio is capped near 1.25.
    budgets = {lim: int((lim + 1) * tpw * 1.25) + 4 for lim in cfg.limits}
    length: dict[str, Any] = {
        "tokens_per_word": round(tpw, 3),
        "length_target": cfg.length_target,
        "max_new_tokens": budgets,
        "conditions": {},
    }
    for name, (arm, mode) in CONDITIONS.items():
        counts, texts = [], []
        for lim in cfg.limits:
            rows = [c for c, m in zip(convs, limits, strict=True) if m == lim]
            target = max(1, round(cfg.length_target * lim * tpw))
            fixed = [{"length_tokens": target}] * len(rows) if mode == "fixed" else None
            outs = gens[arm].generate_batch(
                rows, fixed, mode=mode, max_new_tokens=budgets[lim], batch_size=len(rows)
            )
            counts += [score.words(o.text) for o in outs]
            texts += [o.text for o in outs]
        length["conditions"][name] = {
            **score.length_summary(limits, counts),
            "samples": [
                {"limit": lim, "words": c, "text": t[:300]}
                for lim, c, t in zip(limits, counts, texts, strict=True)
            ][::8],
        }
    out["length"] = length

    # Marker inference: the marker arm's own block for held-out prompts vs the annotation of the held-out reply.
    infer = score.sample(test, cfg.n_infer, cfg.eval_seed + 1)
    outs = gens["markers"].generate_batch(
        [r["messages"][:-1] for r in infer],
        mode="inferred",
        max_new_tokens=BLOCK_IDS[cfg.format],
        batch_size=16,
    )
    acc = marker_accuracy([r["markers"] for r in infer], [o.markers for o in outs], INFER_CATEGORIES)
    out["inference"] = {
        c: {"accuracy": s["accuracy"], "n": s["n"], "missing": s["missing"]} for c, s in acc.items()
    }

    # The long tail: the held-out human reply's likelihood per token, baseline vs the marker arm after the block it
    # wrote itself (inferred), over the head and the tail (< TAIL_SHARE of training) of task and domain.
    items = [(r["messages"][:-1], r["messages"][-1]["content"]) for r in infer]
    lp = {
        "baseline": score.reply_logprobs(gens["baseline"].bundle, items, None),
        "markers": score.reply_logprobs(
            gens["markers"].bundle, items, [o.markers for o in outs], in_prompt=False
        ),
    }
    out["tail"] = {
        "measure": "mean log-probability per token of the held-out human reply (first 96 tokens)",
        "tail_share": TAIL_SHARE,
        "groups": score.by_frequency(infer, lp, score.tail_values(train, TAIL_CATEGORIES, TAIL_SHARE)),
    }

    # Format control: a fixed `format` marker on the bare prompt vs the same request written in words.
    fprompts = score.sample(single, cfg.n_format_prompts, cfg.eval_seed + 3)
    fmt_out: dict[str, Any] = {"n": len(fprompts) * len(FORMAT_REQUESTS), "conditions": {}}
    for name, (arm, mode) in CONDITIONS.items():
        in_words = mode != "fixed"
        rows, targets = [], []
        for target, request in FORMAT_REQUESTS.items():
            for r in fprompts:
                text = r["messages"][0]["content"] + (f"\n\n{request}" if in_words else "")
                rows.append([{"role": "user", "content": text}])
                targets.append(target)
        fixed = None if in_words else [{"format": t} for t in targets]
        outs_f = gens[arm].generate_batch(
            rows, fixed, mode=mode, max_new_tokens=cfg.format_tokens, batch_size=16
        )
        ok = [format_ok(o.text, t) for o, t in zip(outs_f, targets, strict=True)]
        fmt_out["conditions"][name] = {
            "compliance_rate": sum(ok) / len(ok) if ok else 0.0,
            "by_format": {
                t: sum(k for k, tt in zip(ok, targets, strict=True) if tt == t) for t in FORMAT_REQUESTS
            },
            "samples": [{"format": t, "text": o.text[:200]} for o, t in zip(outs_f, targets, strict=True)][
                ::4
            ],
        }
    out["format"] = fmt_out
    if cfg.n_code_repair:
        out["code_repair"] = code_repair(cfg, gens)

    # The quality lever: does conditioning on bucket 1 (best) prefer the human top-ranked reply more than bucket 4?
    pairs = score.quality_pairs(test, cfg.n_quality_pairs, cfg.eval_seed + 2)
    quality: dict[str, Any] = {"n": len(pairs)}
    for name, bundle, markers in (
        ("baseline", gens["baseline"].bundle, None),
        ("quality_bucket 1", gens["markers"].bundle, {"quality_bucket": 1}),
        ("quality_bucket 4", gens["markers"].bundle, {"quality_bucket": 4}),
    ):
        top = score.reply_logprobs(bundle, [(m, t) for m, t, _ in pairs], markers)
        bottom = score.reply_logprobs(bundle, [(m, b) for m, _, b in pairs], markers)
        quality[name] = score.preference_rate(top, bottom)
    out["quality"] = quality
    return out


# The CodeRepair row's fixed markers: what the annotators give a bug-fixing request.
CODE_REPAIR_MARKERS = {"task": "CodeFix", "domain": "Code"}


def code_repair(cfg: DemoConfig, gens: dict[str, Any]) -> dict[str, Any]:
    """HumanEvalFix pass@1 in the sandbox: baseline vs markers inferred vs markers fixed (task CodeFix)."""
    from treasure.demo.data import shipped_humanevalpack
    from treasure.evaluate.code_repair import build_fix_prompt, load_problems, pass_at_1

    problems = sorted(
        load_problems(shipped_humanevalpack()), key=lambda p: (len(p.buggy_solution), p.task_id)
    )
    chosen = score.sample(problems[: len(problems) // 2], cfg.n_code_repair, cfg.eval_seed + 4)
    convs = [[{"role": "user", "content": build_fix_prompt(p)}] for p in chosen]
    res: dict[str, Any] = {"n": len(chosen), "problems": [p.task_id for p in chosen], "conditions": {}}
    for name, (arm, mode) in CONDITIONS.items():
        fixed = [CODE_REPAIR_MARKERS] * len(chosen) if mode == "fixed" else None
        outs = gens[arm].generate_batch(
            convs, fixed, mode=mode, max_new_tokens=cfg.code_tokens, batch_size=len(convs)
        )
        scored = pass_at_1(chosen, [o.text for o in outs])
        res["conditions"][name] = {"pass_at_1": scored.pass_at_1, "passed": scored.passed}
    return res


# Settings added after demo folders were first made, with the value every folder made before them ran with
# (where that is not the default now).
BEFORE_ADDED = {"countdown": False, "length_target": 1.0, "categories": None, "embedding_learning_rate": None}


def check_settings(settings: Path, cfg: DemoConfig) -> None:
    """Refuse to resume a folder made with other settings; a setting added since it was made counts as what that
    folder ran with (BEFORE_ADDED, else the default)."""
    if not settings.exists():
        return
    wanted = json.loads(json.dumps(cfg.to_dict()))
    made = {
        **json.loads(json.dumps(DemoConfig().to_dict())),
        **BEFORE_ADDED,
        **json.loads(settings.read_text(encoding="utf-8")),
    }
    differ = sorted(k for k in made.keys() | wanted.keys() if made.get(k) != wanted.get(k))
    if differ:
        from treasure.errors import TreasureError

        raise TreasureError(
            f"{settings.parent}: made with other settings ({settings}: {', '.join(differ)}); use another --out"
        )


def fit_train(cfg: DemoConfig, train_path: Path, train: list[dict]) -> tuple[Path, list[dict]]:
    """The training records that fit cfg.max_length whole (data.fitting), written beside `train_path` as
    train.fit{max_length}.jsonl, the file both arms train on; a TreasureError when fewer than a batch fit."""
    kept = fitting(train, cfg.model, cfg.max_length, 2 * BLOCK_IDS[cfg.format])
    if len(kept) < cfg.batch_size:
        from treasure.errors import TreasureError

        raise TreasureError(
            f"fit: {len(kept)} of {len(train)} training records fit max_length {cfg.max_length} whole; "
            "raise max_length or set fit=false"
        )
    path = train_path.with_name(f"train.fit{cfg.max_length}.jsonl")
    write_jsonl(path, kept)
    return path, kept


def run_demo(cfg: DemoConfig, out: Path, *, on_stage: Callable[[str], None] = print) -> dict[str, Any]:
    """Data, both arms per seed, their evaluation; returns (and writes out/results.json) everything measured."""
    from treasure.model_source import resolve_model
    from treasure.train.tiny import is_tiny

    out.mkdir(parents=True, exist_ok=True)
    settings = out / "settings.json"
    check_settings(settings, cfg)
    write_json(settings, cfg.to_dict())
    on_stage(f"model: {cfg.model}")
    # length_tokens in the model's own tokens (tiny-llama's are the packaged GPT-2 tokenizer, annotate's default)
    tokenizer = None if is_tiny(cfg.model) else resolve_model(cfg.model)
    on_stage("data: OpenAssistant oasst1 (English validation) -> annotate -> split by tree")
    train_path, test_path = prepare_data(out / "data", tokenizer, length_views=cfg.length_views)
    train, test = read_jsonl(train_path), read_jsonl(test_path)
    annotated = len(train)
    if cfg.fit:
        train_path, train = fit_train(cfg, train_path, train)
        on_stage(f"data: {len(train)} of {annotated} train records fit {cfg.max_length} tokens whole")
    on_stage(f"data: {len(train)} train records, {len(test)} held-out records")
    results: dict[str, Any] = {
        "config": cfg.to_dict(),
        "data": {"train": len(train), "annotated": annotated, "test": len(test)},
        "seeds": {},
    }
    for seed in cfg.seeds:
        arms, train_stats = {}, {}
        for mode in ("baseline", "markers"):
            folder_arm = out / f"seed{seed}" / mode
            on_stage(f"seed {seed}: train {mode} ({cfg.steps} steps x {cfg.batch_size})")
            config = train_config(
                cfg, train_file=train_path, output_dir=folder_arm / "bundle", mode=mode, seed=seed
            )
            train_stats[mode] = train_arm(config, folder_arm)
            arms[mode] = folder_arm / "bundle"
        done = out / f"seed{seed}" / "eval.json"
        if done.exists():
            evaluation = json.loads(done.read_text(encoding="utf-8"))
        else:
            on_stage(f"seed {seed}: evaluate both arms on held-out prompts")
            t0 = time.perf_counter()
            evaluation = evaluate_arms(cfg, arms["baseline"], arms["markers"], train, test)
            evaluation["seconds"] = round(time.perf_counter() - t0, 1)
            write_json(done, evaluation)
        results["seeds"][str(seed)] = {"train": train_stats, "eval": evaluation}
    write_json(out / "results.json", results)
    return results
