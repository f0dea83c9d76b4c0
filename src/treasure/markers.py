"""The marker block: render, parse, sanitise user text, prompt-side dropout. Pure functions, no I/O.

Two formats:
- ``paper``: the paper's plain text, ``<MARKER_LIST> <domain> Sciences </domain> </MARKER_LIST>``.
- ``compact``: one added token per categorical ``category=value`` (``<|domain=Sciences|>``), one added token per
  numeric category followed by its number as text (``<|length_tokens|>120``), between ``<|markers|>`` and
  ``<|/markers|>``. With the tokens added to the tokenizer a categorical marker costs one token.
Markers are always rendered in the taxonomy's category order, so a block is a deterministic function of its markers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from treasure.errors import TaxonomyError
from treasure.taxonomy import Category, Taxonomy

MarkerFormat = Literal["paper", "compact"]
FORMATS: tuple[str, ...] = ("paper", "compact")

PAPER_OPEN, PAPER_CLOSE = "<MARKER_LIST>", "</MARKER_LIST>"
COMPACT_OPEN, COMPACT_CLOSE = "<|markers|>", "<|/markers|>"
# What separates a completion's block from the response that follows it.
SEPARATOR = {"paper": "\n", "compact": ""}
_ZWSP = "\u200b"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise TaxonomyError(f"unknown marker format {fmt!r} (valid: {', '.join(FORMATS)})")


def format_value(category: Category, value: Any) -> str:
    """The text of one (already canonical) value inside a block."""
    if category.kind == "float":
        return f"{float(value):.2f}"
    return str(value)


def render_block(markers: Mapping[str, Any], taxonomy: Taxonomy, fmt: str = "paper") -> str:
    """Render markers as one block in taxonomy order. Raises TaxonomyError on an unknown category or value."""
    _check_format(fmt)
    canonical = taxonomy.validate_markers(dict(markers))
    parts = []
    for name, value in canonical.items():
        cat = taxonomy[name]
        text = format_value(cat, value)
        if fmt == "paper":
            parts.append(f"<{name}> {text} </{name}>")
        elif cat.numeric:
            parts.append(f"<|{name}|>{text}")
        else:
            parts.append(f"<|{name}={text}|>")
    if fmt == "paper":
        return " ".join([PAPER_OPEN, *parts, PAPER_CLOSE])
    return COMPACT_OPEN + "".join(parts) + COMPACT_CLOSE


def compact_tokens(taxonomy: Taxonomy) -> list[str]:
    """Every added token the compact format needs for `taxonomy`, in a stable order."""
    tokens = [COMPACT_OPEN, COMPACT_CLOSE]
    for cat in taxonomy:
        if cat.numeric:
            tokens.append(f"<|{cat.name}|>")
        else:
            tokens.extend(f"<|{cat.name}={v}|>" for v in cat.values)
    return tokens


def marker_syntax(taxonomy: Taxonomy) -> list[str]:
    """Every string that reads as marker syntax for `taxonomy`: both formats' delimiters and every compact marker
    token. None of them may appear in a response (generate.guard keeps them out; `find_marker_syntax` finds them)."""
    return [PAPER_OPEN, PAPER_CLOSE, *compact_tokens(taxonomy)]


def find_marker_syntax(text: str, taxonomy: Taxonomy) -> int:
    """The offset of the first marker string (`marker_syntax`) in `text`, or -1 when it holds none."""
    return first_of(text, marker_syntax(taxonomy))


def first_of(text: str, strings: list[str]) -> int:
    """The offset of the first of `strings` (marker strings, each starting with '<') in `text`, or -1."""
    if "<" not in text:
        return -1
    hits = [i for s in strings if (i := text.find(s)) >= 0]
    return min(hits, default=-1)


@dataclass
class ParsedBlock:
    """What `parse_block` found. `markers` holds only valid, canonical values; `problems` says what was not valid."""

    markers: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    found: bool = False  # an opening delimiter was at the start of the text
    complete: bool = False  # ... and its closing delimiter too
    end: int = 0  # offset just past the block and its separator (0 when no block was found)


_PAPER_ITEM = re.compile(r"\s*<([A-Za-z_]\w*)>\s*(.*?)\s*</([A-Za-z_]\w*)>", re.S)
_PAPER_CLOSE = re.compile(r"\s*</MARKER_LIST>")
_COMPACT_ITEM = re.compile(r"<\|([A-Za-z_]\w*)(?:=([^\s<>|=]+))?\|>([^<]*)")


def _accept(taxonomy: Taxonomy, out: ParsedBlock, name: str, raw: str) -> None:
    if name not in taxonomy:
        out.problems.append(f"unknown category {name!r}")
        return
    if name in out.markers:
        out.problems.append(f"duplicate category {name!r} (kept the first)")
        return
    try:
        out.markers[name] = taxonomy[name].coerce(raw)
    except TaxonomyError as e:
        out.problems.append(str(e))


def parse_block(text: str, taxonomy: Taxonomy, fmt: str = "paper") -> ParsedBlock:
    """Parse the block at the start of `text` (leading whitespace allowed). Never raises.

    Only a block at the very start counts: a block-like string later in the text is content, not markers.
    A truncated or malformed block yields the valid markers before the damage and a problem for the rest.
    """
    out = ParsedBlock()
    if fmt not in FORMATS or not isinstance(text, str):
        out.problems.append(f"unknown marker format {fmt!r}" if fmt not in FORMATS else "not a string")
        return out
    opener = PAPER_OPEN if fmt == "paper" else COMPACT_OPEN
    closer = PAPER_CLOSE if fmt == "paper" else COMPACT_CLOSE
    pos = len(text) - len(text.lstrip())
    if not text.startswith(opener, pos):
        if text.strip() and opener.startswith(text.strip()):
            out.problems.append("truncated block: the opening delimiter is incomplete")
        return out
    out.found = True
    pos += len(opener)
    if fmt == "paper":
        while True:
            close = _PAPER_CLOSE.match(text, pos)
            if close:
                out.complete, pos = True, close.end()
                break
            item = _PAPER_ITEM.match(text, pos)
            if not item or PAPER_OPEN in item.group(0):
                break
            name, raw, closing = item.groups()
            if name != closing:
                out.problems.append(f"mismatched tags <{name}> ... </{closing}>")
            else:
                _accept(taxonomy, out, name, raw)
            pos = item.end()
    else:
        while True:
            if text.startswith(closer, pos):
                out.complete, pos = True, pos + len(closer)
                break
            item = _COMPACT_ITEM.match(text, pos)
            if not item or item.group(0).startswith(closer):
                break
            name, value, trailing = item.groups()
            if value is None:  # a numeric token: its value is the text that follows
                _accept(taxonomy, out, name, trailing.strip())
            else:
                _accept(taxonomy, out, name, value)
                if trailing.strip():
                    out.problems.append(f"unexpected text {trailing.strip()[:40]!r} after <|{name}={value}|>")
            pos = item.end()
    if not out.complete:
        rest = text[pos:].strip()
        out.problems.append(
            "truncated block: no closing delimiter" if not rest else f"malformed block near {rest[:40]!r}"
        )
        out.end = len(text) if not rest or closer not in text[pos:] else text.index(closer, pos) + len(closer)
        return out
    sep = SEPARATOR[fmt]
    if sep and text.startswith(sep, pos):
        pos += len(sep)
    out.end = pos
    return out


def split_completion(text: str, taxonomy: Taxonomy, fmt: str = "paper") -> tuple[ParsedBlock, str]:
    """Split a model completion into (parsed block, response). Without a block the whole text is the response."""
    parsed = parse_block(text, taxonomy, fmt)
    if not parsed.found:
        return parsed, text
    return parsed, text[parsed.end :].lstrip(" ") if parsed.complete else text[parsed.end :].strip()


_SANITIZE = re.compile(r"<(/?MARKER_LIST)>|<\|(/?[A-Za-z_][\w]*(?:=[^\s<>|]*)?)\|>", re.I)


def sanitize(text: str) -> str:
    """Neutralise marker syntax typed inside message text so no stage reads it as markers.

    A zero-width space goes after each `<` of a block delimiter or a compact marker token: the text reads the
    same to people, but it no longer matches a delimiter or an added token. Applied when a record is rendered for
    the model; stored records keep the user's text as given.
    """
    if "<" not in text:
        return text
    return _SANITIZE.sub(lambda m: "<" + _ZWSP + m.group(0)[1:], text)


def dropout_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A generator for one example in one epoch: reproducible from the seed, fresh every epoch."""
    return random.Random(f"treasure-dropout:{seed}:{epoch}:{index}")


def drop_prompt_markers(
    markers: Mapping[str, Any], rng: random.Random, dataset_rate: float = 0.5, sample_rate: float = 0.5
) -> dict[str, Any]:
    """The paper's prompt-side dropout: with probability `dataset_rate` drop every marker of the example;
    otherwise drop each marker independently with probability `sample_rate`."""
    if rng.random() < dataset_rate:
        return {}
    return {k: v for k, v in markers.items() if rng.random() >= sample_rate}


def merge_markers(fixed: Mapping[str, Any], inferred: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed markers win over inferred ones for the same category."""
    return {**inferred, **fixed}
