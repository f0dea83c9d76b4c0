"""Control: does the model follow a requested length, format or language, by instruction or by marker?

Each `ControlItem` asks for one thing in two ways: `instructed` (the request written into the prompt, as a
baseline model must get it) and `bare` + `markers` (the prompt without the request and the markers that ask
for it, as the paper does for marker modes). Length requests follow AlpacaEval-LI ("Answer the following
instruction using N words or less."); the markers are `length_tokens` (N words at 4/3 tokens a word) and the
matching `length_bucket`. Prompts come from the prompt sets shipped in evaluate/data/prompts (MT-Bench,
Arena-Hard, IFEval; data/SOURCES.md).

Metrics (pure functions of the response text):
- length: `violation` (more words than the limit) and `bucket_hit` (the response's length bucket, counted in
  the packaged GPT-2 tokens the length annotator uses, is the requested one);
- format: the format detector of `treasure.annotate.format` fires (JSON parses, a table is a table, ...);
- language: `treasure.annotate.language` identifies the requested language.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treasure.annotate.length import length_bucket

KINDS = ("length", "format", "language")
# The prompt sets shipped with the package (data/SOURCES.md: where each comes from, its license).
DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPT_FILES = ("mt_bench_question.jsonl", "arena_hard_v0.1_question.jsonl", "ifeval_input_data.jsonl")

LENGTH_INSTRUCTION = "Answer the following instruction using {n} words or less.\n\n{prompt}"  # AlpacaEval-LI
WORD_LIMITS = (10, 25, 50, 100, 200, 400)
TOKENS_PER_WORD = 4 / 3
FORMAT_INSTRUCTIONS = {
    "JSON": "Answer with a JSON document only.",
    "Tabular": "Present your answer as a table.",
    "Enumeration": "Answer with a numbered list.",
}
LANGUAGES = ("French", "Spanish", "German", "Italian", "Portuguese")
LANGUAGE_INSTRUCTION = "Answer in {language}."


@dataclass(frozen=True)
class ControlItem:
    """One request for a length, a format or a language, asked by instruction and by markers."""

    id: str
    kind: str  # length | format | language
    target: Any  # word limit (int), format name or language name
    prompt: str  # the task without the request
    markers: dict[str, Any] = field(default_factory=dict)

    @property
    def instructed(self) -> str:
        """The prompt with the request written in (for baselines and mode `inferred`)."""
        if self.kind == "length":
            return LENGTH_INSTRUCTION.format(n=self.target, prompt=self.prompt)
        if self.kind == "format":
            return f"{self.prompt}\n\n{FORMAT_INSTRUCTIONS[self.target]}"
        return f"{self.prompt}\n\n{LANGUAGE_INSTRUCTION.format(language=self.target)}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "markers": self.markers}


def load_prompts(data_dir: str | Path = DATA_DIR, max_chars: int = 400) -> list[tuple[str, str]]:
    """(id, prompt) pairs from the prompt sets under `data_dir`/prompts: single-turn, at most `max_chars` characters."""
    out = []
    for name in PROMPT_FILES:
        path = Path(data_dir) / "prompts" / name
        if not path.is_file():
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            raw = json.loads(line)
            text = raw.get("prompt") or (raw.get("turns") or [""])[0]
            if text and len(text) <= max_chars:
                out.append((f"{path.stem}:{i}", text.strip()))
    return out


def length_markers(words: int) -> dict[str, Any]:
    """The markers that ask for at most `words` words: a token budget and its bucket."""
    tokens = math.ceil(words * TOKENS_PER_WORD)
    return {"length_tokens": tokens, "length_bucket": length_bucket(tokens)}


def build_items(
    prompts: Sequence[tuple[str, str]], n_per_kind: int = 20, *, seed: int = 0, kinds: Sequence[str] = KINDS
) -> list[ControlItem]:
    """`n_per_kind` items of each kind over a seeded sample of the prompts, cycling through the targets."""
    rng = random.Random(seed)
    items: list[ControlItem] = []
    for kind in kinds:
        chosen = rng.sample(list(prompts), min(n_per_kind, len(prompts)))
        for k, (pid, text) in enumerate(chosen):
            if kind == "length":
                words = WORD_LIMITS[k % len(WORD_LIMITS)]
                items.append(ControlItem(f"length:{pid}", kind, words, text, length_markers(words)))
            elif kind == "format":
                fmt = list(FORMAT_INSTRUCTIONS)[k % len(FORMAT_INSTRUCTIONS)]
                items.append(ControlItem(f"format:{pid}", kind, fmt, text, {"format": fmt}))
            elif kind == "language":
                lang = LANGUAGES[k % len(LANGUAGES)]
                items.append(ControlItem(f"language:{pid}", kind, lang, text, {"language": lang}))
            else:
                raise ValueError(f"unknown control kind {kind!r} (valid: {', '.join(KINDS)})")
    return items


_WORD = re.compile(r"\S+")


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def format_ok(text: str, fmt: str) -> bool:
    """Whether the response is in format `fmt` by the annotator's detector for it."""
    from treasure.annotate.format import DETECTORS

    return bool(DETECTORS[fmt](text))


def language_ok(text: str, language: str) -> bool:
    """Whether the response's identified language is `language`."""
    from treasure.annotate.language import detect_language

    return detect_language(text) == language


def score_item(item: ControlItem, text: str, n_tokens: int | None = None) -> dict[str, Any]:
    """The per-example result: length -> words, violation, bucket_hit; format/language -> ok."""
    if item.kind == "length":
        words = word_count(text)
        out: dict[str, Any] = {"words": words, "limit": item.target, "violation": words > item.target}
        if n_tokens is not None:
            out["tokens"] = n_tokens
            out["bucket_hit"] = length_bucket(n_tokens) == item.markers["length_bucket"]
        return out
    ok = format_ok(text, item.target) if item.kind == "format" else language_ok(text, item.target)
    return {"ok": ok}


def _rate(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(items: Sequence[ControlItem], scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates per kind: length violation and bucket-hit rates; format and language compliance (also per target)."""
    out: dict[str, Any] = {}
    length = [s for i, s in zip(items, scores, strict=True) if i.kind == "length"]
    if length:
        hits = [s["bucket_hit"] for s in length if "bucket_hit" in s]
        out["length"] = {
            "n": len(length),
            "violation_rate": _rate([s["violation"] for s in length]),
            "bucket_hit_rate": _rate(hits),
            "mean_words": sum(s["words"] for s in length) / len(length),
            "mean_limit": sum(s["limit"] for s in length) / len(length),
        }
    for kind in ("format", "language"):
        pairs = [(i.target, s["ok"]) for i, s in zip(items, scores, strict=True) if i.kind == kind]
        if pairs:
            by: dict[str, list[bool]] = {}
            for target, ok in pairs:
                by.setdefault(target, []).append(ok)
            out[kind] = {
                "n": len(pairs),
                "compliance_rate": _rate([ok for _, ok in pairs]),
                "by_target": {t: {"n": len(v), "compliance_rate": _rate(v)} for t, v in sorted(by.items())},
            }
    return out


def token_counter() -> Callable[[list[str]], list[int]]:
    """Counts tokens the way the length annotator does (the packaged GPT-2 tokenizer)."""
    from treasure.annotate.length import LengthAnnotator

    return LengthAnnotator().count_tokens
