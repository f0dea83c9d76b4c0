"""Score one trained bundle on the suite's test items, in the generation modes that its training allows.

Modes (greedy decoding, batched, the project's `Generator`):
- ``plain``      a baseline bundle: the prompt as it is.
- ``inferred``   a marker bundle with no markers given: it writes its own block, then answers.
- ``fixed``      the test item's `task` marker given (metadata a user has; nothing else about the answer).
- ``quality_1``  ``quality_bucket=1`` (best quartile) given; ``quality_4``, the worst, on the tasks where low-quality
                 answers concentrate (the lever should move those answers both ways).
- ``length``     on the word-limit prompts, a ``length_tokens`` budget that fits the limit.

What is measured: exact accuracy per task (the suite's checkers), word-limit violations, and in mode inferred the
marker-inference accuracy per category against the gold markers of the same annotate pipeline (scored by
evaluate/marker_accuracy.py, as `treasure eval` scores it).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from treasure.evaluate import marker_accuracy as ma
from treasure.suite.build import DEFAULT_SLOPPY, check
from treasure.suite.tasks import word_count

SLOPPY_TASKS = tuple(sorted(t for t, p in DEFAULT_SLOPPY.items() if p > 0.5))


def task_shares(train_records: list[dict]) -> dict[str, float]:
    counts: dict[str, int] = defaultdict(int)
    for r in train_records:
        counts[r["meta"]["suite_task"]] += 1
    return {t: n / len(train_records) for t, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def tokens_per_word(train_records: list[dict]) -> float:
    """Median `length_tokens` per word over the training answers that word limits apply to."""
    ratios = []
    for r in train_records:
        if r["meta"]["suite_task"] != "some_multiples" or "length_tokens" not in r.get("markers", {}):
            continue
        words = word_count(r["messages"][-1]["content"])
        if words:
            ratios.append(r["markers"]["length_tokens"] / words)
    return statistics.median(ratios) if ratios else 2.0


def block_budget(bundle: Any) -> int:
    """Tokens of the longest block the bundle can write, plus slack."""
    from treasure.markers import render_block

    longest: dict[str, Any] = {}
    for cat in bundle.marker_taxonomy:
        if cat.numeric:
            longest[cat.name] = 99999 if cat.kind == "int" else 0.99
        else:
            longest[cat.name] = max(cat.values, key=len)
    block = render_block(longest, bundle.marker_taxonomy, bundle.markers.format)
    return len(bundle.tokenizer(block, add_special_tokens=False)["input_ids"]) + 8


def _accuracy(items: list[dict], responses: list[str]) -> dict[str, float]:
    by_task: dict[str, list[bool]] = defaultdict(list)
    for item, text in zip(items, responses, strict=True):
        by_task[item["task"]].append(check(item, text))
    return {t: sum(v) / len(v) for t, v in by_task.items()}


def _violations(items: list[dict], responses: list[str]) -> dict[str, Any]:
    flags = [
        word_count(text) > item["params"]["word_limit"]
        for item, text in zip(items, responses, strict=True)
        if "word_limit" in item["params"]
    ]
    return {"rate": sum(flags) / len(flags) if flags else None, "n": len(flags)}


def score_bundle(
    folder: str | Path, test_records: list[dict], train_records: list[dict], *, batch_size: int = 64,
    cuda: bool = False, max_answer_tokens: int = 160,
) -> dict[str, Any]:  # fmt: skip
    """Generate for every test item in each mode the bundle supports; return accuracy and control metrics."""
    import torch

    from treasure.bundle import load_bundle
    from treasure.generate.engine import Generator

    bundle = load_bundle(folder, dtype=torch.float32)
    if cuda:
        bundle.model.to("cuda")
    markers_on = bundle.markers.mode == "markers"
    budget = block_budget(bundle) if markers_on and bundle.markers.completion_markers else 0
    gen = Generator(bundle, max_block_tokens=budget or None)
    cats = {c.name for c in bundle.marker_taxonomy} if markers_on else set()
    limited = [t for t in test_records if "word_limit" in t["params"]]
    ratio = tokens_per_word(train_records)

    def run(items: list[dict], markers: list[dict] | None, mode: str):
        convs = [[{"role": "user", "content": t["prompt"]}] for t in items]
        return gen.generate_batch(convs, markers, mode=mode, max_new_tokens=budget + max_answer_tokens,
                                  batch_size=batch_size)  # fmt: skip

    out: dict[str, Any] = {"arm": bundle.markers.mode, "modes": {}, "shares": task_shares(train_records),
                           "sloppy_tasks": list(SLOPPY_TASKS), "n_test": len(test_records)}  # fmt: skip
    samples: dict[str, list[dict]] = {}

    def record(name: str, items: list[dict], gens) -> None:
        texts = [g.text for g in gens]
        out["modes"][name] = {"accuracy": _accuracy(items, texts), "violations": _violations(items, texts)}
        samples[name] = [{"id": t["id"], "prompt": t["prompt"], "answer": t["answer"], "response": g.text,
                          "markers": g.markers} for t, g in zip(items[:3], gens[:3], strict=True)]  # fmt: skip

    if not markers_on:
        record("plain", test_records, run(test_records, None, "inferred"))
    else:
        gens = run(test_records, None, "inferred")
        record("inferred", test_records, gens)
        if bundle.markers.completion_markers:
            out["marker_accuracy"] = marker_accuracy(test_records, gens, bundle)
        if "task" in cats and bundle.markers.prompt_markers:
            fixed = [{"task": t["markers"]["task"]} for t in test_records]
            record("fixed", test_records, run(test_records, fixed, "fixed"))
        if "quality_bucket" in cats and bundle.markers.prompt_markers:
            q1 = [{"quality_bucket": 1} for _ in test_records]
            record("quality_1", test_records, run(test_records, q1, "fixed"))
            sloppy_items = [t for t in test_records if t["task"] in SLOPPY_TASKS]
            q4 = [{"quality_bucket": 4} for _ in sloppy_items]
            record("quality_4", sloppy_items, run(sloppy_items, q4, "fixed"))
        if "length_tokens" in cats and bundle.markers.prompt_markers and limited:
            budgets = [
                {"length_tokens": max(1, math.floor(t["params"]["word_limit"] * ratio))} for t in limited
            ]
            record("length", limited, run(limited, budgets, "fixed"))
            out["tokens_per_word"] = round(ratio, 3)
    out["samples"] = samples
    return out


def marker_accuracy(test_records: list[dict], gens, bundle: Any) -> dict[str, Any]:
    """Per category of the bundle: the share of test items whose inferred value equals the gold one (with how many
    gold values occur), or for a numeric category the median relative error (evaluate/marker_accuracy.py)."""
    gold = [t["markers"] for t in test_records]
    inferred = [g.inferred for g in gens]
    result: dict[str, Any] = {}
    for cat in bundle.marker_taxonomy:
        if cat.numeric:
            scores = ma.numeric_scores(gold, inferred, cat.name)
            if scores:
                result[cat.name] = scores
            continue
        scores = ma.marker_accuracy(gold, inferred, [cat.name]).get(cat.name)
        if scores:
            # a confusion row per label; the rows with counts are the gold values that occur
            gold_values = sum(any(row) for row in scores["confusion"])
            result[cat.name] = {"accuracy": scores["accuracy"], "n": scores["n"], "gold_values": gold_values}
    return result
