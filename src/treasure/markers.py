"""The marker block: its syntax per format, render, parse, sanitise user text, prompt-side dropout. Pure, no I/O.

Two formats, each one `BlockFormat` below (the only place their delimiters and segment shapes are written; the
renderer, the parser, sanitize, the constrained decoder, the guard and the Jinja chat template all read it):
- ``paper``: the paper's plain text, ``<MARKER_LIST> <domain> Sciences </domain> </MARKER_LIST>``.
- ``compact``: one added token per categorical ``category=value`` (``<|domain=Sciences|>``), one added token per
  numeric category followed by its number as text (``<|length_tokens|>120``), between ``<|markers|>`` and
  ``<|/markers|>``. With the tokens added to the tokenizer a categorical marker costs one token.
Markers are always rendered in the taxonomy's category order, so a block is a deterministic function of its markers.
A third format is one more `BlockFormat` passed to `register_format`.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from treasure.errors import TaxonomyError
from treasure.taxonomy import Category, Taxonomy

# What sanitize puts after the "<" of marker syntax typed by a user: invisible, and it breaks every match.
ZWSP = "\u200b"
_NAME = r"[A-Za-z_]\w*"  # a category name as the parser and sanitize read it


@dataclass(frozen=True)
class BlockFormat:
    """How one format writes a marker block.

    `categorical` and `numeric` are segment templates with the holes ``{name}`` and ``{value}``; a block is
    `open`, the segments and `close` joined by `joiner` (whitespace or ""). `separator` joins the block to the
    text beside it (after a prompt's text, before a completion's response). `added_tokens`: the delimiters, every
    categorical segment and every numeric segment's text before its value are tokens added to the tokenizer;
    then every piece has the bracket shape of `open` (``<|`` name ``|>``, with ``=`` between a categorical
    segment's name and value) and a value is one token's text (no space, no bracket); otherwise values are free
    text and only the two delimiters are reserved. Floats are written with `float_decimals` decimals.

    Every string that reads as marker syntax starts with "<" and holds no other "<" (the guard and `first_of`
    rely on it); `__post_init__` checks this and the shapes the parser, sanitize and the Jinja template support.
    """

    name: str
    open: str
    close: str
    categorical: str
    numeric: str
    joiner: str = ""
    separator: str = ""
    added_tokens: bool = False
    float_decimals: int = 2

    def __post_init__(self) -> None:
        def bad(why: str) -> TaxonomyError:
            return TaxonomyError(f"marker format {self.name!r}: {why}")

        for template in (self.categorical, self.numeric):
            holes = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            if holes.count("value") != 1 or not holes or set(holes) - {"name", "value"} or holes[0] != "name":
                raise bad(f"segment {template!r} needs {{name}} first and {{value}} once")
        if self.joiner.strip():
            raise bad("the joiner must be whitespace or empty")
        for delim in (self.open, self.close):
            if not (delim.startswith("<") and delim.endswith(">")) or "<" in delim[1:] or not delim.isascii():
                raise bad(
                    f"delimiter {delim!r} must be ASCII, start with '<', end with '>', hold no other '<'"
                )
        if self.added_tokens:
            lead, end, mid = self.token_shape
            # sanitize's Jinja twin reads these characters one at a time: none may read as part of a name or a space
            marks = (lead[1:2], mid, end[:1])
            if len(lead) != 2 or len(end) != 2 or len(mid) != 1 or mid == end[0]:
                raise bad("token pieces need a 2-character lead and end and a 1-character name/value mark")
            if any(re.fullmatch(r"[\w\s<>]", c) for c in marks):
                raise bad("a token piece's lead, end and name/value mark cannot be letters, digits or spaces")
            want = (f"{lead}{{name}}{mid}{{value}}{end}", f"{lead}{{name}}{end}{{value}}")
            body = re.compile(rf"{re.escape(lead)}/?{_NAME}{re.escape(end)}")
            if (self.categorical, self.numeric) != want or not all(
                body.fullmatch(d) for d in (self.open, self.close)
            ):
                raise bad(f"token segments must read {want[0]!r} and {want[1]!r}, delimiters {lead}name{end}")
        elif any(not re.fullmatch(r"</?[\w]+", d[:-1]) for d in (self.open, self.close)):
            raise bad("a text format's delimiters must be tags: '<' + optional '/' + a word + '>'")

    @property
    def token_shape(self) -> tuple[str, str, str]:
        """(lead, end, name/value mark) of an added-token format's pieces, e.g. ("<|", "|>", "=")."""
        lead, end = self.open[:2], self.open[-2:]
        between = self.categorical.split("{name}", 1)[1].split("{value}", 1)[0]
        return lead, end, between

    def value_text(self, category: Category, value: Any) -> str:
        """The text of one (already canonical) value inside a block."""
        if category.kind == "float":
            return f"{float(value):.{self.float_decimals}f}"
        return str(value)

    def template(self, category: Category) -> str:
        return self.numeric if category.numeric else self.categorical

    def around_value(self, category: Category) -> tuple[str, str]:
        """The segment text of `category` before and after its value."""
        pre, post = self.template(category).split("{value}")
        return pre.replace("{name}", category.name), post.replace("{name}", category.name)

    def segment(self, category: Category, text: str) -> str:
        """One marker's segment, `text` being its `value_text`."""
        pre, post = self.around_value(category)
        return pre + text + post

    def block(self, segments: list[str]) -> str:
        return self.joiner.join([self.open, *segments, self.close])

    def tokens(self, taxonomy: Taxonomy) -> list[str]:
        """Every added token the format needs for `taxonomy`, in a stable order (none for a text format)."""
        if not self.added_tokens:
            return []
        tokens = [self.open, self.close]
        for cat in taxonomy:
            if cat.numeric:
                tokens.append(self.around_value(cat)[0])
            else:
                tokens.extend(self.segment(cat, v) for v in cat.values)
        return tokens

    def syntax(self, taxonomy: Taxonomy) -> list[str]:
        """The strings of this format that must never appear in a response."""
        return self.tokens(taxonomy) if self.added_tokens else [self.open, self.close]


PAPER = BlockFormat(
    name="paper",
    open="<MARKER_LIST>",
    close="</MARKER_LIST>",
    categorical="<{name}> {value} </{name}>",
    numeric="<{name}> {value} </{name}>",
    joiner=" ",
    separator="\n",
)
COMPACT = BlockFormat(
    name="compact",
    open="<|markers|>",
    close="<|/markers|>",
    categorical="<|{name}={value}|>",
    numeric="<|{name}|>{value}",
    added_tokens=True,
)
_REGISTRY: dict[str, BlockFormat] = {f.name: f for f in (PAPER, COMPACT)}
# Read-only live views: the registered formats by name, and what separates each one's block from its text.
FORMATS: Mapping[str, BlockFormat] = MappingProxyType(_REGISTRY)
PAPER_OPEN, PAPER_CLOSE = PAPER.open, PAPER.close
COMPACT_OPEN, COMPACT_CLOSE = COMPACT.open, COMPACT.close


class _Separators(Mapping[str, str]):
    def __getitem__(self, name: str) -> str:
        return _REGISTRY[name].separator

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


SEPARATOR: Mapping[str, str] = _Separators()


def register_format(fmt: BlockFormat) -> BlockFormat:
    """Make `fmt` a marker format every stage accepts by name (its syntax is then reserved in all user text)."""
    if fmt.name in _REGISTRY and _REGISTRY[fmt.name] != fmt:
        raise TaxonomyError(f"marker format {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    _patterns.cache_clear()
    return fmt


def unregister_format(name: str) -> None:
    """Forget a format registered with `register_format` (the two built-in ones stay)."""
    if name in (PAPER.name, COMPACT.name):
        raise TaxonomyError(f"marker format {name!r} is built in")
    _REGISTRY.pop(name, None)
    _patterns.cache_clear()


def block_format(name: str) -> BlockFormat:
    """The format called `name`, or a TaxonomyError listing the valid ones."""
    fmt = _REGISTRY.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise TaxonomyError(f"unknown marker format {name!r} (valid: {', '.join(_REGISTRY)})")
    return fmt


def format_value(category: Category, value: Any, fmt: str = "paper") -> str:
    """The text of one (already canonical) value inside a block of format `fmt`."""
    return block_format(fmt).value_text(category, value)


def render_block(markers: Mapping[str, Any], taxonomy: Taxonomy, fmt: str = "paper") -> str:
    """Render markers as one block in taxonomy order. Raises TaxonomyError on an unknown category or value."""
    syntax = block_format(fmt)
    canonical = taxonomy.validate_markers(dict(markers))
    return syntax.block(
        [
            syntax.segment(taxonomy[name], syntax.value_text(taxonomy[name], v))
            for name, v in canonical.items()
        ]
    )


def compact_tokens(taxonomy: Taxonomy) -> list[str]:
    """Every added token the compact format needs for `taxonomy`, in a stable order."""
    return COMPACT.tokens(taxonomy)


def marker_syntax(taxonomy: Taxonomy) -> list[str]:
    """Every string that reads as marker syntax for `taxonomy`: every format's delimiters and every added marker
    token. None of them may appear in a response (generate.guard keeps them out; `find_marker_syntax` finds them)."""
    return [s for fmt in _REGISTRY.values() for s in fmt.syntax(taxonomy)]


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


@dataclass(frozen=True)
class _Segment:
    """One segment shape as the parser reads it."""

    template: str
    pattern: re.Pattern[str]
    value_last: bool  # the value runs to the next "<" (a numeric token followed by its number)


@functools.cache
def _reader(fmt: BlockFormat) -> tuple[re.Pattern[str], tuple[_Segment, ...]]:
    """(closing delimiter, segment shapes) of `fmt` as regular expressions built from its templates.

    A space in a template reads as any whitespace (so does the joiner); a text format's value is any text up to
    what follows it, an added-token format's value is one token's text; a value that ends its segment runs to the
    next "<", and so does text after an added-token segment (reported as unexpected)."""
    gap = r"\s*" if fmt.joiner else ""

    def literal(text: str) -> str:
        return r"\s*".join(re.escape(part) for part in re.split(r"\s+", text))

    segments = []
    for template in dict.fromkeys((fmt.categorical, fmt.numeric)):
        value_last = template.endswith("{value}")
        out, names = [gap], 0
        for text, hole, _, _ in string.Formatter().parse(template):
            out.append(literal(text))
            if hole == "name":
                out.append(f"(?P<{'closing' if names else 'name'}>{_NAME})")
                names += 1
            elif hole == "value" and value_last:
                out.append("(?P<value>[^<]*)")
            elif hole == "value" and fmt.added_tokens:
                lead, end, mid = fmt.token_shape
                out.append(rf"(?P<value>[^\s<>{re.escape(end[0] + mid)}]+)")
            elif hole == "value":
                out.append("(?P<value>.*?)")
        if fmt.added_tokens and not value_last:
            out.append("(?P<trailing>[^<]*)")
        segments.append(_Segment(template, re.compile("".join(out), re.S), value_last))
    return re.compile(gap + re.escape(fmt.close)), tuple(segments)


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
    syntax = _REGISTRY.get(fmt) if isinstance(fmt, str) else None
    if syntax is None or not isinstance(text, str):
        out.problems.append(f"unknown marker format {fmt!r}" if syntax is None else "not a string")
        return out
    opener, closer = syntax.open, syntax.close
    close_pattern, segments = _reader(syntax)
    pos = len(text) - len(text.lstrip())
    if not text.startswith(opener, pos):
        if text.strip() and opener.startswith(text.strip()):
            out.problems.append("truncated block: the opening delimiter is incomplete")
        return out
    out.found = True
    pos += len(opener)
    while True:
        close = close_pattern.match(text, pos)
        if close:
            out.complete, pos = True, close.end()
            break
        item, shape = next(
            ((m, seg) for seg in segments if (m := seg.pattern.match(text, pos))), (None, None)
        )
        # A text format's free value could swallow the opener of a second block: that ends this one.
        if item is None or shape is None or (not syntax.added_tokens and opener in item.group(0)):
            break
        name, raw = item.group("name"), item.group("value")
        groups = item.groupdict()
        closing, trailing = groups.get("closing"), groups.get("trailing")
        if closing is not None and closing != name:
            pre, post = shape.template.split("{value}")
            out.problems.append(
                f"mismatched tags {pre.replace('{name}', name).strip()} ... {post.replace('{name}', closing).strip()}"
            )
        else:
            _accept(taxonomy, out, name, raw.strip() if shape.value_last else raw)
            if trailing and trailing.strip():
                segment = shape.template.replace("{name}", name).replace("{value}", raw)
                out.problems.append(f"unexpected text {trailing.strip()[:40]!r} after {segment}")
        pos = item.end()
    if not out.complete:
        rest = text[pos:].strip()
        out.problems.append(
            "truncated block: no closing delimiter" if not rest else f"malformed block near {rest[:40]!r}"
        )
        out.end = len(text) if not rest or closer not in text[pos:] else text.index(closer, pos) + len(closer)
        return out
    sep = syntax.separator
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


@dataclass(frozen=True)
class SanitizeRules:
    """What `sanitize` neutralises, for every registered format (the Jinja template re-implements it from this).

    `tags`: a text format's delimiters without their "<" and ">" ("MARKER_LIST", "/MARKER_LIST"), matched
    case-insensitively. `tokens`: (lead, end, name/value mark) of each added-token format: every string of that
    shape (lead, an optional "/", a name, optionally the mark and a value without spaces or brackets, end) is
    neutralised, whatever the taxonomy, because the tokenizer would read any added token of that shape whole.
    """

    tags: tuple[str, ...]
    tokens: tuple[tuple[str, str, str], ...]


def sanitize_rules() -> SanitizeRules:
    tags: dict[str, None] = {}
    tokens: dict[tuple[str, str, str], None] = {}
    for fmt in _REGISTRY.values():
        if fmt.added_tokens:
            tokens[fmt.token_shape] = None
        else:
            tags.update(dict.fromkeys(d[1:-1] for d in (fmt.open, fmt.close)))
    return SanitizeRules(tuple(tags), tuple(tokens))


@functools.cache
def _patterns() -> re.Pattern[str]:
    rules = sanitize_rules()
    alternatives = [f"<({re.escape(tag)})>" for tag in rules.tags] + [
        rf"{re.escape(lead)}(/?{_NAME}(?:{re.escape(mid)}[^\s<>{re.escape(end[0])}]*)?){re.escape(end)}"
        for lead, end, mid in rules.tokens
    ]
    return re.compile("|".join(alternatives), re.I)


def sanitize(text: str) -> str:
    """Neutralise marker syntax typed inside message text so no stage reads it as markers.

    A zero-width space goes after each `<` of a block delimiter or a marker token (`sanitize_rules`): the text
    reads the same to people, but it no longer matches a delimiter or an added token. Applied when a record is
    rendered for the model; stored records keep the user's text as given.
    """
    if "<" not in text:
        return text
    return _patterns().sub(lambda m: "<" + ZWSP + m.group(0)[1:], text)


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
