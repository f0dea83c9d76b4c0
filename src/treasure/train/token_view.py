"""The token-role view: a rendered example with the tokens the loss is computed on marked.

Consecutive tokens with the same role are decoded together, so the text reads as the model sees it. On a terminal
trained spans are green and context is dim; otherwise trained spans are wrapped in [[ and ]].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

GREEN, DIM, RESET = "\x1b[32m", "\x1b[2m", "\x1b[0m"
OPEN, CLOSE = "[[", "]]"


def role_spans(tokenizer: Any, input_ids: Sequence[int], mask: Sequence[int]) -> list[tuple[str, bool]]:
    """[(text, trained)] for runs of tokens with the same mask value."""
    spans: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or bool(mask[i]) != bool(mask[start]):
            text = tokenizer.decode(list(input_ids[start:i]), skip_special_tokens=False)
            spans.append((text, bool(mask[start])))
            start = i
    return spans


def render_spans(spans: Sequence[tuple[str, bool]], color: bool) -> str:
    if color:
        return "".join(f"{GREEN if trained else DIM}{text}{RESET}" for text, trained in spans)
    return "".join(f"{OPEN}{text}{CLOSE}" if trained else text for text, trained in spans)


def legend(color: bool) -> str:
    if color:
        return f"{GREEN}green{RESET}: trained (in the loss)   {DIM}dim{RESET}: context (masked)"
    return f"{OPEN}...{CLOSE}: trained (in the loss); the rest is context (masked)"


def describe(
    example: dict[str, Any], tokenizer: Any, *, title: str, max_length: int | None, color: bool
) -> str:
    """A header line, the markers each side carries, and the token-role view of `example` (data.DataSpec.example)."""
    ids, mask = example["input_ids"], example["completion_mask"]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    head = (
        f"== {title}: {len(ids)} tokens, {sum(mask)} trained"
        + (f" (truncated to max_length {max_length})" if truncated else "")
        + (
            "; completion tokenised apart from the prompt (see docs/training.md)"
            if example["split"] == "text"
            else ""
        )
    )
    markers = (
        f"prompt markers: {json.dumps(example['prompt_markers'], ensure_ascii=False)}\n"
        f"completion markers: {json.dumps(example['completion_markers'], ensure_ascii=False)}"
    )
    return f"{head}\n{markers}\n{render_spans(role_spans(tokenizer, ids, mask), color)}"
