"""The demo's measurements on held-out OASST trees: the length lever, marker inference, the quality lever.

Each measurement can fail: a violation is counted in words against the limit the prompt states; a marker is right
only if it equals the annotation of the held-out reply; the quality lever is a preference between two human-ranked
replies to the same prompt, read off the model's own likelihood, compared between two conditions.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from statistics import median
from typing import Any

# AlpacaEval-LI's wording (the paper's length-instruction benchmark).
LENGTH_INSTRUCTION = "Answer the following instruction using {n} words or less.\n\n{instruction}"


def words(text: str) -> int:
    return len(text.split())


def single_turn(records: list[dict]) -> list[dict]:
    """Records whose conversation is one user turn and the reply."""
    return [r for r in records if len(r["messages"]) == 2 and r["messages"][0]["role"] == "user"]


def first_per_tree(records: list[dict]) -> list[dict]:
    """One record per message tree (its first), so a prompt is not counted once per sibling reply."""
    seen, out = set(), []
    for r in records:
        key = r.get("message_tree_id") or r["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def sample(rows: list[Any], n: int, seed: int) -> list[Any]:
    if n >= len(rows):
        return list(rows)
    return random.Random(seed).sample(rows, n)


def tokens_per_word(records: list[dict]) -> float:
    """The median `length_tokens` per word of the training replies: how a word limit becomes a token count."""
    ratios = [
        r["markers"]["length_tokens"] / words(r["messages"][-1]["content"])
        for r in records
        if r.get("markers", {}).get("length_tokens") and words(r["messages"][-1]["content"]) >= 5
    ]
    return median(ratios) if ratios else 1.3


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion `rate` observed on `n` items."""
    if n <= 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def length_summary(limits: list[int], counts: list[int]) -> dict[str, Any]:
    """Violation rate and the median produced/asked ratio of one condition."""
    n = len(limits)
    violations = sum(c > lim for lim, c in zip(limits, counts, strict=True))
    ratios = [c / lim for lim, c in zip(limits, counts, strict=True)]
    by_limit: dict[int, list[int]] = defaultdict(list)
    for lim, c in zip(limits, counts, strict=True):
        by_limit[lim].append(c)
    return {
        "n": n,
        "violation_rate": violations / n if n else 0.0,
        "median_ratio": median(ratios) if ratios else 0.0,
        "empty": sum(c == 0 for c in counts),
        "by_limit": {str(k): sum(c > k for c in v) / len(v) for k, v in sorted(by_limit.items())},
        # does the length follow the limit at all? (a lever that only shortens every answer does not)
        "median_words_by_limit": {str(k): median(v) for k, v in sorted(by_limit.items())},
        "follows_limit": spearman(limits, counts),
        "words": counts,
    }


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); 0.0 when either side is constant."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(xs) < 2:
        return 0.0
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx and vy else 0.0


def quality_pairs(records: list[dict], n: int, seed: int) -> list[tuple[list[dict], str, str]]:
    """(conversation before the replies, top-ranked reply, bottom-ranked reply) for prompts with ranked siblings."""
    groups: dict[Any, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("rank") is not None and r.get("parent_id"):
            groups[r["parent_id"]].append(r)
    pairs = []
    for _, rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(rows) < 2:
            continue
        rows = sorted(rows, key=lambda r: r["rank"])
        top, bottom = rows[0], rows[-1]
        if top["rank"] == bottom["rank"]:
            continue
        pairs.append(
            (top["messages"][:-1], top["messages"][-1]["content"], bottom["messages"][-1]["content"])
        )
    return sample(pairs, n, seed)


def reply_logprobs(
    bundle: Any,
    items: list[tuple[list[dict], str]],
    markers: dict[str, Any] | list[dict[str, Any]] | None,
    *,
    in_prompt: bool = True,
    max_reply_tokens: int = 96,
    batch_size: int = 8,
) -> list[float]:
    """Mean log-probability per token of each reply after its conversation, with `markers` (one dict for all
    items, or one per item) in the prompt (unless `in_prompt` is False) and, for a bundle whose completions start
    with a block, as the completion's block, as training rendered them.

    Rows are scored in batches of similar length, and the LM head and softmax run only over the columns where a
    batch's replies are predicted (`logits_to_keep`), not over its prompts."""
    import torch

    from treasure.markers import SEPARATOR

    tok, model = bundle.tokenizer, bundle.model
    writes_block = bundle.markers.mode == "markers" and bundle.markers.completion_markers
    per_item = markers if isinstance(markers, list) else [markers] * len(items)
    rows = []
    for (messages, reply), m in zip(items, per_item, strict=True):
        prefix = bundle.render_block(m) + SEPARATOR[bundle.markers.format] if writes_block and m else ""
        shown = m if in_prompt and m else None
        head = tok(bundle.prompt(messages, markers=shown) + prefix, add_special_tokens=False)["input_ids"]
        body = tok(reply, add_special_tokens=False)["input_ids"][:max_reply_tokens]
        rows.append((head, body))
    out = [math.nan] * len(rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = model.device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(rows[i][0]) + len(rows[i][1]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                h, b = rows[i]
                ids[r, : len(h) + len(b)] = torch.tensor(h + b)
                mask[r, : len(h) + len(b)] = 1
            # the columns that predict a reply token: from the shortest prompt's last token to the last reply's
            first = min(len(rows[i][0]) for i in chunk) - 1
            keep = torch.arange(first, width - 1, device=device)
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep
            ).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for r, i in enumerate(chunk):
                h, b = rows[i]
                if b:
                    pos = torch.arange(len(h) - 1 - first, len(h) + len(b) - 1 - first, device=device)
                    out[i] = float(logp[r, pos, ids[r, len(h) : len(h) + len(b)].to(device)].mean())
    return out


def tail_values(train: list[dict], categories: tuple[str, ...], share: float) -> dict[str, set]:
    """Per category, the values that mark fewer than `share` of the training records (the long tail)."""
    out: dict[str, set] = {}
    for cat in categories:
        counts = Counter(r.get("markers", {}).get(cat) for r in train)
        counts.pop(None, None)
        out[cat] = {v for v, k in counts.items() if k / len(train) < share}
    return out


def by_frequency(
    records: list[dict], scores: dict[str, list[float]], tails: dict[str, set]
) -> dict[str, dict[str, Any]]:
    """Mean of each arm's per-record score over the head and the tail of each category (by training share)."""
    out: dict[str, dict[str, Any]] = {}
    for cat, tail in tails.items():
        for part in ("head", "tail"):
            idx = [
                i
                for i, r in enumerate(records)
                if r.get("markers", {}).get(cat) is not None
                and (r["markers"][cat] in tail) == (part == "tail")
                and all(not math.isnan(v[i]) for v in scores.values())
            ]
            out[f"{cat} {part}"] = {
                "n": len(idx),
                **{arm: (sum(v[i] for i in idx) / len(idx) if idx else None) for arm, v in scores.items()},
            }
    return out


def preference_rate(top: list[float], bottom: list[float]) -> float:
    """The share of pairs whose top-ranked reply the model finds more likely than the bottom-ranked one."""
    pairs = [(t, b) for t, b in zip(top, bottom, strict=True) if not (math.isnan(t) or math.isnan(b))]
    return sum(t > b for t, b in pairs) / len(pairs) if pairs else 0.0
