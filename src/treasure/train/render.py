"""A record -> one conversational prompt/completion example with marker blocks (pure functions, no torch).

The paper's layout (arXiv 2506.14702, section 3): the prompt's block is appended to the last user turn, the
completion starts with the full block, then the response. Prompt markers are dropped (dataset- and sample-level) with
a generator drawn from (seed, epoch, record index), so every epoch sees a fresh draw and a rerun sees the same one.
All message text is sanitised (markers.sanitize) so marker syntax typed by a user is never read as a marker.

The output is TRL's conversational prompt-completion format: ``{"prompt": [messages], "completion": [message]}``.
Everything before the final assistant turn is the prompt; only the final assistant turn is trained on.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from treasure.errors import TreasureError
from treasure.markers import drop_prompt_markers, dropout_rng, render_block, sanitize
from treasure.recipe import MarkerConfig
from treasure.taxonomy import Taxonomy


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The record order of one epoch: a permutation drawn from (seed, epoch), the same in every arm and on every rank."""
    order = list(range(n))
    random.Random(f"treasure-order:{seed}:{epoch}").shuffle(order)
    return order


def epoch_plan(n: int, epochs: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, record index) for every example of `epochs` passes over `n` records, in training order."""
    return [(epoch, index) for epoch in range(epochs) for index in epoch_order(n, seed, epoch)]


def run_markers(record: Mapping[str, Any], marker_taxonomy: Taxonomy) -> dict[str, Any]:
    """The record's markers restricted to the categories that take part, canonical and in taxonomy order."""
    markers = record.get("markers") or {}
    return marker_taxonomy.validate_markers({k: v for k, v in markers.items() if k in marker_taxonomy})


def prompt_markers(
    markers: Mapping[str, Any], config: MarkerConfig, seed: int, epoch: int, index: int
) -> dict:
    """The markers the prompt keeps in this epoch after the paper's two-level dropout."""
    if not config.prompt_markers or not markers:
        return {}
    rng = dropout_rng(seed, epoch, index)
    return drop_prompt_markers(markers, rng, config.dataset_dropout, config.sample_dropout)


def prompt_block(markers: Mapping[str, Any], marker_taxonomy: Taxonomy, fmt: str) -> str:
    """The prompt's block, or "" when no marker is left: an empty prompt block is never rendered.

    Raises TaxonomyError on an unknown category or value (as render_block does)."""
    canonical = marker_taxonomy.validate_markers(dict(markers))
    return render_block(canonical, marker_taxonomy, fmt) if canonical else ""


def sanitize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `messages` with marker syntax in their text neutralised."""
    out = []
    for msg in messages:
        msg = dict(msg)
        if isinstance(msg.get("content"), str):
            msg["content"] = sanitize(msg["content"])
        out.append(msg)
    return out


def attach_prompt_block(messages: list[dict[str, Any]], block: str, separator: str) -> list[dict[str, Any]]:
    """Append `block` to the last user turn (in place on the copies `sanitize_messages` made)."""
    if not block:
        return messages
    for msg in reversed(messages):
        if msg.get("role") == "user":
            msg["content"] = msg["content"] + separator + block
            return messages
    raise TreasureError("no user turn to carry the prompt's marker block")


def render_example(
    record: Mapping[str, Any],
    config: MarkerConfig,
    taxonomy: Taxonomy,
    *,
    seed: int,
    epoch: int,
    index: int,
) -> dict[str, Any]:
    """One training example for `record` (index `index` in its file) in epoch `epoch`.

    Returns ``{"prompt": [...], "completion": [{"role": "assistant", ...}], "prompt_markers": {...},
    "completion_markers": {...}}``; the last two say which markers each side carries (for inspection and tests).
    """
    messages = record["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise TreasureError("the last turn must be the assistant's reply")
    if not any(m.get("role") == "user" for m in messages[:-1]):
        raise TreasureError("no user turn before the final assistant reply")
    mtax = config.marker_taxonomy(taxonomy)
    markers = run_markers(record, mtax) if config.mode == "markers" else {}
    kept = prompt_markers(markers, config, seed, epoch, index)
    prompt = attach_prompt_block(
        sanitize_messages(messages[:-1]), prompt_block(kept, mtax, config.format), config.separator
    )
    (reply,) = sanitize_messages(messages[-1:])
    completion_markers = markers if config.completion_markers else {}
    if config.completion_markers:
        # The block is always there (empty when the record has no marker) so a model always opens with one.
        reply["content"] = render_block(markers, mtax, config.format) + config.separator + reply["content"]
    return {
        "prompt": prompt,
        "completion": [reply],
        "prompt_markers": kept,
        "completion_markers": completion_markers,
    }


def render_prompt(
    messages: Sequence[Mapping[str, Any]],
    markers: Mapping[str, Any] | None,
    config: MarkerConfig,
    taxonomy: Taxonomy,
) -> list[dict[str, Any]]:
    """The messages a model trained with `config` is prompted with for `markers` (no dropout at inference).

    The markers-aware chat template (chat_template.py) renders the same thing from the raw messages; a baseline or
    completion-only run ignores `markers` there too, since its prompts never carried any.
    """
    block = ""
    if config.prompt_markers and markers is not None:
        block = prompt_block(markers, config.marker_taxonomy(taxonomy), config.format)
    return attach_prompt_block(sanitize_messages(messages), block, config.separator)
