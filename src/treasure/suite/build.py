"""Build the suite's training and test records: Zipf-like task shares, low-quality answers, word limits.

Training records carry the metadata a real dataset would carry (`meta.task`, `meta.source`, a human-like
`meta.rating`); every other marker is computed by the normal annotate stage. Test items never appear in training
(prompts are checked against the training set), and their prompts are the same for every arm.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from treasure.suite.tasks import TASKS, Item, word_count

# Where low-quality answers concentrate: a real long tail is often scraped from noisier sources.
DEFAULT_SLOPPY = {name: 0.15 for name in TASKS} | {"spell": 0.55, "swap_ends": 0.55, "upper": 0.55}
WORD_LIMIT_SHARE = 0.35  # share of `some_multiples` prompts that carry an explicit word limit
MAX_TEST = 200  # test items per task that training never sees (experiments use a prefix)


@dataclass
class SuiteConfig:
    n_train: int = 20000
    n_test_per_task: int = 100
    seed: int = 0
    sloppy: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SLOPPY))
    shares: dict[str, float] | None = None  # override the tasks' default shares


def _with_word_limit(item: Item, rng: random.Random, *, exact: bool) -> Item:
    """Add 'Answer using N words or less.' with N >= the answer's words (training) or any N (test)."""
    words = word_count(item.answer)
    limit = words + (0 if exact else rng.randint(0, 3))
    return Item(item.task, f"{item.prompt} Answer using {limit} words or less.", item.answer,
                {**item.params, "word_limit": limit})  # fmt: skip


def train_record(item: Item, idx: int, rng: random.Random, sloppy_p: float) -> dict:
    sloppy = rng.random() < sloppy_p
    answer = TASKS[item.task].sloppy(item, rng) if sloppy else item.answer
    # A rating like a human's: clearly lower for sloppy answers, with overlap-free noise inside each group.
    rating = round(rng.uniform(0.05, 0.35) if sloppy else rng.uniform(0.6, 1.0), 3)
    return {
        "id": f"suite-train-{idx:06d}",
        "messages": [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": answer}],
        "meta": {
            "task": TASKS[item.task].task_marker,
            "source": "Synthetic",
            "rating": rating,
            "suite_task": item.task,
            "sloppy": sloppy,
        },  # fmt: skip
    }


def test_items(seed: int, name: str, n: int) -> list[dict]:
    """The first `n` test items of one task. Each task draws from its own stream, so a smaller test set is a prefix
    of a larger one, and the training draw can exclude the largest test set any experiment uses (MAX_TEST)."""
    rng = random.Random(f"suite-test:{seed}:{name}")
    items, seen, tries = [], set(), 0
    while len(items) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"task {name}: too few distinct prompts for {n} test items")
        item = TASKS[name].make(rng)
        if name == "some_multiples" and len(items) % 2 == 0:
            item = _with_word_limit(item, rng, exact=False)
        if item.prompt in seen:
            continue
        seen.add(item.prompt)
        items.append({"id": f"suite-test-{name}-{len(items):04d}", "task": name, "prompt": item.prompt,
                      "answer": item.answer, "params": item.params,
                      "meta": {"task": TASKS[name].task_marker, "source": "Synthetic"}})  # fmt: skip
    return items


def build_suite(cfg: SuiteConfig, *, stream: str = "train") -> tuple[list[dict], list[dict]]:
    """(training records, test items as dicts with the reference answer and parameters).

    `stream` names the training draw: another name (the demo's base model uses "base") gives other records from the
    same mix. No training record has the prompt of any of the first MAX_TEST test items of a task."""
    if cfg.n_test_per_task > MAX_TEST:
        raise ValueError(f"n_test_per_task: at most {MAX_TEST}")
    shares = cfg.shares or {name: t.share for name, t in TASKS.items()}
    names = list(shares)
    weights = [shares[n] for n in names]
    excluded = {t["prompt"] for name in names for t in test_items(cfg.seed, name, MAX_TEST)}
    test = [t for name in names for t in test_items(cfg.seed, name, cfg.n_test_per_task)]
    rng = random.Random(f"suite-{stream}:{cfg.seed}")
    train: list[dict] = []
    while len(train) < cfg.n_train:
        name = rng.choices(names, weights)[0]
        item = TASKS[name].make(rng)
        if name == "some_multiples" and rng.random() < WORD_LIMIT_SHARE:
            item = _with_word_limit(item, rng, exact=True)
        if item.prompt in excluded:  # never train on a test prompt
            continue
        rec = train_record(item, len(train), rng, cfg.sloppy.get(name, 0.0))
        rec["id"] = rec["id"].replace("suite-train", f"suite-{stream}")
        train.append(rec)
    return train, test


def check(test_item: dict, response: str) -> bool:
    """Exact check of a response to a test item."""
    item = Item(test_item["task"], test_item["prompt"], test_item["answer"], test_item["params"])
    return TASKS[item.task].check(item, response)


def task_shares(records: list[dict]) -> dict[str, float]:
    c = Counter(r["meta"]["suite_task"] for r in records)
    return {k: v / len(records) for k, v in c.most_common()}
