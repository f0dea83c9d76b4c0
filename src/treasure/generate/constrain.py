r"""Constrained decoding of the marker block: only well-formed blocks of the taxonomy come out of `generate`.

A model fine-tuned with markers writes its completion as ``block + SEPARATOR[fmt] + response``. While a row writes
its block, a small state machine over token ids (nanochat's engine idea: read the tokens as they come, force
tokens where it must) allows only:

- the opening delimiter; then categories of the allowed list (those the bundle was trained with) in taxonomy
  order, each at most once; then the closing delimiter and, in the paper format, the separator;
- for a categorical category one of its values; for a numeric one a well-formed number as `render_block` writes
  it: a minus only when the category has no minimum >= 0, 1 to `max_number_digits` integer digits without a
  leading zero, and for floats a point and exactly two decimals;
- every fixed marker with exactly its value (the model still chooses freely whether and how to write the others).

After the block the row's scores pass through untouched here; generate.guard keeps marker syntax out of the
response that follows.

Canonical tokenization. The machine walks the ids the model was trained on, i.e. how `render_block`'s text
tokenizes in context. Each piece (the opener, one ``<cat> value </cat>`` segment, the closer together with the
separator) is tokenized after the text that comes before it in a block, and the pieces of one "slot" (the next
category position plus the fixed markers still due) are joined in a token trie. This relies on pieces not merging
across their boundaries, which holds for byte-level BPE (a paper segment starts with a space, so no pre-token
spans two segments; GPT-2 style, and Llama-3/Qwen2 style, whose ">\n" pre-token is why the closer and the
separator make one piece) and for added tokens (compact format). The machine checks it for every category and
value when it is built and raises `MarkerTokenizationError` otherwise.

Numbers are the one relaxation: a char-level number grammar runs over every token made only of digits, '.', '-'
(and the paper format's leading space), so a number may come out split differently from how the tokenizer splits
its text ("1" + "20" for "120"): same text, same parse. The leading space must still be merged the way the
tokenizer merges it (" 1", never " " + "1").

Known exceptions with GPT-2's byte-level BPE (tests/test_constrain.py checks every category and value):
- a prompt that ends in a space: " <" is one token, so the prompt's space and the opener merge; the machine
  refuses such a `prompt_end` (TRL warns about the same boundary in training);
- a response that starts with two or more newlines: training saw "\n\n" (one id) where the machine forces the
  separator "\n" alone and lets the response continue; the text is the same, the ids differ by one merge.

Cost. Allowed-id sets are built once per state (per set of fixed markers, then cached with the machine); a step
costs a dict lookup per row and a few tensor ops, with no pass over the vocabulary in Python.

Length bound. Every state knows the fewest tokens that still close the block. With `max_block_tokens` set, a row
whose budget runs short may only take tokens that can still close in time, so a model that would run on still
yields a closed block and a response; `BlockResult.forced` says the budget had to cut in.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import torch
from transformers import LogitsProcessor

from treasure.errors import TaxonomyError, TreasureError
from treasure.markers import block_format, render_block
from treasure.taxonomy import Category, Taxonomy

_INF = 1 << 30
_MAX_STARTS = 256  # sets of fixed markers a machine keeps built before it starts its memo tables afresh
Fixed = Mapping[str, Any] | None


class MarkerTokenizationError(TreasureError):
    """The tokenizer merges marker pieces across their boundaries, so the block cannot be walked piece by piece."""


# ---------------------------------------------------------------------------------------------------------------
# Numbers: a char-level grammar run over digit-only tokens.


@dataclass(frozen=True)
class _NumberSpec:
    decimals: int  # 0 for int, the format's float_decimals for float (as render_block writes it)
    space: bool  # a space precedes the number (the paper format's segment has one)
    signed: bool  # a leading '-' is allowed
    max_digits: int  # integer digits at most


# A grammar state is (phase, n). Phases: "lead" before the paper format's space; "start" before the sign or first
# digit; "sign" after '-'; "zero" the integer part is 0; "int" n integer digits; "dot" after '.'; "frac" n decimals.
_State = tuple[str, int]
_DIGITS = frozenset("0123456789")
_NUMBER_CHARS = frozenset("0123456789.- ")


def _number_start(spec: _NumberSpec) -> _State:
    return ("lead", 0) if spec.space else ("start", 0)


def _number_step(spec: _NumberSpec, state: _State, ch: str) -> _State | None:
    phase, n = state
    if phase == "lead":
        return ("start", 0) if ch == " " else None
    if ch in _DIGITS:
        if phase in ("start", "sign"):
            if ch != "0":
                return ("int", 1)
            # "-0" is never how an int renders; "-0.50" is how a float does.
            return None if phase == "sign" and not spec.decimals else ("zero", 1)
        if phase == "int":
            return ("int", n + 1) if n < spec.max_digits else None
        if phase in ("dot", "frac"):
            k = 1 if phase == "dot" else n + 1
            return ("frac", k) if k <= spec.decimals else None
        return None  # after a leading 0 the integer part is over
    if ch == "-":
        return ("sign", 0) if phase == "start" and spec.signed else None
    if ch == ".":
        return ("dot", 0) if phase in ("zero", "int") and spec.decimals else None
    return None


def _number_accepts(spec: _NumberSpec, state: _State) -> bool:
    phase, n = state
    if spec.decimals:
        return phase == "frac" and n == spec.decimals
    return phase in ("zero", "int")


def _number_table(
    spec: _NumberSpec, pieces: Sequence[tuple[int, str]], merged_space: bool
) -> dict[_State, dict[int, _State]]:
    """For each reachable grammar state: token id -> the state after the token's characters."""
    table: dict[_State, dict[int, _State]] = {}
    todo = [_number_start(spec)]
    while todo:
        state = todo.pop()
        if state in table:
            continue
        row: dict[int, _State] = {}
        for tok, text in pieces:
            if merged_space and state[0] == "lead" and text == " ":
                continue  # the tokenizer merges the space into the number: " " + "1" is not what training saw
            cur: _State | None = state
            for ch in text:
                cur = _number_step(spec, cur, ch)
                if cur is None:
                    break
            if cur is not None:
                row[tok] = cur
                if cur not in table:
                    todo.append(cur)
        table[state] = row
    return table


# ---------------------------------------------------------------------------------------------------------------
# The machine: nodes with precomputed allowed ids, built from the taxonomy's pieces.


class _Node:
    """One state of a row inside its block."""

    __slots__ = ("edges", "ids", "cost", "worst", "final", "digit_limit", "_fits", "_on")

    def __init__(self, final: bool = False, digit_limit: bool = False):
        self.edges: dict[int, _Node] = {}
        self.ids: torch.Tensor | None = None  # sorted allowed ids; set when the node is finalised
        # fewest tokens from here to the end of the block (separator included); _INF: a dead end
        self.cost = 0 if final else _INF
        self.worst = 0  # most tokens the next step can commit to: 1 + the largest child cost
        self.final = final
        self.digit_limit = digit_limit  # a number just reached max_number_digits
        self._fits: dict[int, torch.Tensor] = {}
        self._on: dict[tuple[str, int], torch.Tensor] = {}

    def allowed(self, left: int | None) -> tuple[torch.Tensor, bool]:
        """The allowed ids with `left` tokens of budget (None: no budget), and whether the budget removed any."""
        if left is None or left >= self.worst:
            return self.ids, False  # type: ignore[return-value]
        fits = self._fits.get(left)
        if fits is None:
            fits = torch.tensor(
                sorted(t for t, c in self.edges.items() if 1 + c.cost <= left), dtype=torch.long
            )
            self._fits[left] = fits
        return fits, True

    def ids_on(self, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """`ids` (this node's own tensor) on `device`, copied once per device."""
        if device.type == "cpu":
            return ids
        key = (str(device), id(ids))
        moved = self._on.get(key)
        if moved is None:
            moved = self._on[key] = ids.to(device)
        return moved


_Due = tuple[tuple[int, str], ...]  # fixed markers still to write: (category position, value text), in order


class _Machine:
    """The block grammar of one (tokenizer, taxonomy, format, categories) as token-level nodes."""

    def __init__(
        self,
        tokenizer: Any,
        texts: list[str],
        taxonomy: Taxonomy,
        fmt: str,
        categories: tuple[str, ...],
        max_number_digits: int,
        prompt_end: str,
    ):
        self.tokenizer = tokenizer
        self.taxonomy = taxonomy
        self.fmt = fmt
        self.syntax = block_format(fmt)
        self.cats: tuple[Category, ...] = tuple(taxonomy[name] for name in categories)
        self.index = {c.name: i for i, c in enumerate(self.cats)}
        self.prompt_end = prompt_end
        self._lock = threading.RLock()
        self._slots: dict[tuple[int, _Due], _Node] = {}
        self._chains: dict[tuple[tuple[int, ...], int], _Node] = {}
        self._numbers: dict[tuple[_NumberSpec, _State, int], _Node] = {}
        self._starts: dict[_Due, _Node] = {}
        self.final = _Node(final=True)
        self.final.ids = torch.empty(0, dtype=torch.long)
        self._keep: list[_Node] = []  # nodes keyed by id() in the memo tables stay alive with the machine
        self.max_id = 0  # the largest id any block may use: the model must score at least this many

        syntax = self.syntax
        # Every segment follows ">" (the opener's or the previous segment's), so the opener is its context.
        self._before = prompt_end + syntax.open
        self.open_ids = self._piece(prompt_end, syntax.open)
        # The closer and the separator are one piece: Llama-3 and Qwen2 pre-tokenizers make ">\n" one pre-token.
        self.close_ids = self._piece(self._before, syntax.joiner + syntax.close + syntax.separator)
        self.values: dict[int, list[tuple[int, ...]]] = {}
        self.heads: dict[int, tuple[int, ...]] = {}
        self.tails: dict[int, tuple[int, ...]] = {}
        self.specs: dict[int, _NumberSpec] = {}
        pieces = [(i, t) for i, t in enumerate(texts) if t and set(t) <= _NUMBER_CHARS]
        tables: dict[_NumberSpec, dict[_State, dict[int, _State]]] = {}
        for j, cat in enumerate(self.cats):
            if not cat.numeric:
                self.values[j] = [self._piece(self._before, self._segment(cat, v)) for v in cat.values]
                continue
            # The segment's text before the number, less a space right before it: the number's grammar takes that
            # space (it may merge with the first digits), then the text after the number is its tail.
            pre, post = syntax.around_value(cat)
            space = pre.endswith(" ")
            head = syntax.joiner + (pre[:-1] if space else pre)
            lead = " " if space else ""
            self.heads[j] = self._piece(self._before, head)
            self.tails[j] = self._piece(self._before + head + lead + "1", post) if post else ()
            sample = self._piece(self._before + head, lead + "1")
            merged = bool(sample) and texts[sample[0]] != " "
            digits = max_number_digits
            if cat.max is not None and cat.max >= 0:
                digits = min(
                    digits, len(str(int(cat.max)))
                )  # a cheap part of the bound: no more digits than max
            decimals = syntax.float_decimals if cat.kind == "float" else 0
            spec = _NumberSpec(decimals, space, cat.min is None or cat.min < 0, digits)
            self.specs[j] = spec
            if spec not in tables:
                tables[spec] = _number_table(spec, pieces, merged)
                self.max_id = max(self.max_id, *(t for row in tables[spec].values() for t in row), 0)
        self._tables = tables

    # -- tokenization ---------------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _piece(self, before: str, text: str) -> tuple[int, ...]:
        """The ids `text` takes right after `before`, checking that the two tokenize apart."""
        head, full = self._encode(before), self._encode(before + text)
        if full[: len(head)] != head:
            raise MarkerTokenizationError(
                f"{text!r} merges with the text before it ({before[-24:]!r}) under this tokenizer, so the marker "
                "block cannot be constrained piece by piece"
            )
        ids = tuple(full[len(head) :])
        self.max_id = max(self.max_id, *ids, 0)
        return ids

    def _segment(self, cat: Category, text: str) -> str:
        return self.syntax.joiner + self.syntax.segment(cat, text)

    def render_ids(self, markers: Mapping[str, Any]) -> list[int]:
        """How the block of `markers` plus its separator tokenizes after `prompt_end` (what training saw)."""
        text = render_block(markers, self.taxonomy, self.fmt) + self.syntax.separator
        return list(self._piece(self.prompt_end, text))

    # -- fixed markers ----------------------------------------------------------------------------------------------

    def due(self, fixed: Fixed) -> _Due:
        """Validate fixed markers against the taxonomy and the allowed categories; canonical, in block order."""
        if not fixed:
            return ()
        canonical = self.taxonomy.validate_markers(dict(fixed))
        out = []
        for name, value in canonical.items():
            if name not in self.index:
                raise TaxonomyError(
                    f"fixed marker {name!r} is not among the categories this model writes "
                    f"({', '.join(c.name for c in self.cats) or 'none'})"
                )
            out.append((self.index[name], self.syntax.value_text(self.taxonomy[name], value)))
        return tuple(out)

    # -- building -----------------------------------------------------------------------------------------------------

    def start(self, due: _Due) -> _Node:
        """The first node of a block that must hold the markers in `due`."""
        with self._lock:
            node = self._starts.get(due)
            if node is None:
                if len(self._starts) >= _MAX_STARTS:
                    # Fixed numbers make the sets of fixed markers unbounded (a server sees any length_tokens): start
                    # the memo tables afresh. Processors in flight hold their own nodes, so nothing breaks.
                    self._slots, self._chains, self._numbers, self._starts, self._keep = {}, {}, {}, {}, []
                node = self._starts[due] = self._chain(self.open_ids, self._slot(0, due))
                self._finalise(node)
            return node

    def _chain(self, ids: Sequence[int], then: _Node) -> _Node:
        """Forced ids, then `then`."""
        key = (tuple(ids), id(then))
        node = self._chains.get(key)
        if node is None:
            node = then
            for tok in reversed(ids):
                step = _Node()
                step.edges[tok] = node
                node = step
            self._chains[key] = node
            self._keep.append(then)
        return node

    def _slot(self, i: int, due: _Due) -> _Node:
        """The trie of every piece that may come next when categories from position `i` on are still open."""
        key = (i, due)
        node = self._slots.get(key)
        if node is not None:
            return node
        fixed = dict(due)
        candidates: list[tuple[Sequence[int], _Node]] = []
        for j in range(i, len(self.cats)):
            after = self._slot(j + 1, tuple(d for d in due if d[0] != j))
            if j in fixed:  # a fixed marker cannot be skipped: nothing after it is reachable from here
                cat = self.cats[j]
                candidates.append((self._piece(self._before, self._segment(cat, fixed[j])), after))
                break
            if j in self.specs:
                spec = self.specs[j]
                follow = self._chain(self.tails[j], after)
                candidates.append((self.heads[j], self._number(spec, _number_start(spec), follow)))
            else:
                candidates.extend((ids, after) for ids in self.values[j])
        else:  # no fixed marker is due: the block may close here
            candidates.append((self.close_ids, self.final))
        node = self._slots[key] = self._trie(candidates)
        return node

    def _trie(self, candidates: Iterable[tuple[Sequence[int], _Node]]) -> _Node:
        root = _Node()
        inner = {id(root)}
        for ids, then in candidates:
            node = root
            for k, tok in enumerate(ids):
                child = node.edges.get(tok)
                if k == len(ids) - 1:
                    if child is not None:
                        raise MarkerTokenizationError(f"two marker pieces share the ids {list(ids)}")
                    node.edges[tok] = then
                    break
                if child is None:
                    child = node.edges[tok] = _Node()
                    inner.add(id(child))
                elif id(child) not in inner:
                    raise MarkerTokenizationError(f"marker piece {list(ids)} extends another piece")
                node = child
        return root

    def _number(self, spec: _NumberSpec, state: _State, follow: _Node) -> _Node:
        key = (spec, state, id(follow))
        node = self._numbers.get(key)
        if node is not None:
            return node
        node = _Node(digit_limit=state[0] == "int" and state[1] == spec.max_digits)
        self._numbers[key] = node
        self._keep.append(follow)
        for tok, nxt in self._tables[spec][state].items():
            node.edges[tok] = self._number(spec, nxt, follow)
        if _number_accepts(spec, state):
            # The number may end: whatever follows it is allowed right here (digits and followers never share ids).
            for tok, nxt in follow.edges.items():
                if tok in node.edges:
                    raise MarkerTokenizationError(f"token {tok} both continues a number and follows it")
                node.edges[tok] = nxt
        return node

    def _finalise(self, root: _Node) -> None:
        """Costs and allowed ids for every node reachable from `root`; dead ends are cut off."""
        stack: list[tuple[_Node, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node.ids is not None:
                continue
            if not expanded:
                stack.append((node, True))
                seen: set[int] = set()
                for child in node.edges.values():
                    if child.ids is None and id(child) not in seen:
                        seen.add(id(child))
                        stack.append((child, False))
                continue
            node.edges = {t: c for t, c in node.edges.items() if c.cost < _INF}
            costs = [c.cost for c in node.edges.values()]
            node.cost = 1 + min(costs) if costs else _INF
            node.worst = 1 + max(costs) if costs else 0
            node.ids = torch.tensor(sorted(node.edges), dtype=torch.long)
        if root.cost >= _INF:
            raise MarkerTokenizationError("no complete marker block can be written with this tokenizer")

    # -- walking ------------------------------------------------------------------------------------------------------

    def walk(self, ids: Iterable[int], due: _Due) -> int | None:
        """How many of `ids` a complete block takes (separator included), or None if they do not start with one."""
        node = self.start(due)
        for n, tok in enumerate(ids, 1):
            node = node.edges.get(int(tok))  # type: ignore[assignment]
            if node is None:
                return None
            if node.final:
                return n
        return None

    def verify(self) -> None:
        """Check that every category and value, and a block of all categories, walks as the tokenizer splits it."""
        samples: list[dict[str, Any]] = [{}]
        full: dict[str, Any] = {}
        for j, cat in enumerate(self.cats):
            if cat.numeric:
                spec = self.specs[j]
                numbers = [n for n in (0, 7, 120, 98765, -3) if len(str(abs(n))) <= spec.max_digits]
                values: list[Any] = []
                for n in numbers:
                    try:
                        values.append(cat.coerce(n + 0.25 if spec.decimals else n))
                    except TaxonomyError:
                        continue  # outside the category's bounds
            else:
                values = list(cat.values)
            samples.extend({cat.name: v} for v in values)
            if values:
                full[cat.name] = values[-1]
        samples.append(full)
        bad = []
        for markers in samples:
            ids = self.render_ids(markers)
            if self.walk(ids, ()) != len(ids):
                bad.append(render_block(markers, self.taxonomy, self.fmt))
        if bad:
            raise MarkerTokenizationError(
                f"{len(bad)} marker blocks do not tokenize piece by piece, e.g. {bad[0]!r}; "
                "constrained decoding would steer the model off the ids it was trained on"
            )


# ---------------------------------------------------------------------------------------------------------------
# The logits processor: one per generate call, one machine state per row.


@dataclass
class BlockResult:
    """How one row's block went.

    `closed`: the block and its separator were written completely. `forced`: max_block_tokens cut in, narrowing
    the row's choices so that its block could close in time. `digit_limit`: a number reached max_number_digits,
    so its end was forced. `tokens`: ids the block took, separator included (if not closed: the ids so far).
    """

    closed: bool
    forced: bool
    digit_limit: bool
    tokens: int


class MarkerLogitsProcessor(LogitsProcessor):
    """Masks each row's scores to the ids its marker block allows; rows whose block is closed pass through.

    Serves one `generate` call (greedy or sampling; not beam search, whose rows are reordered between steps).
    Rows are the prompts of the batch, left-padded, so every block starts right after the input columns; with
    `num_return_sequences=k` each prompt's fixed markers apply to its k rows. Put it in `logits_processor=[...]`:
    transformers runs it before the sampling warpers (temperature, top-k, top-p), so they see -inf outside the
    allowed ids.
    """

    supports_continuous_batching = False

    def __init__(self, machine: _Machine, starts: list[_Node], max_block_tokens: int | None):
        self._machine = machine
        self._starts = starts
        self._budget = max_block_tokens
        self._width: int | None = None
        self._last: torch.Tensor | None = None

    def _begin(self, batch: int, vocab: int) -> None:
        if batch % len(self._starts):
            raise ValueError(f"{len(self._starts)} sets of fixed markers for a batch of {batch} rows")
        if self._machine.max_id >= vocab:
            raise ValueError(
                f"the tokenizer has ids up to {self._machine.max_id} but the model scores {vocab} tokens: "
                "resize the model's embeddings after adding marker tokens"
            )
        per = batch // len(self._starts)
        self._nodes: list[_Node | None] = [self._starts[b // per] for b in range(batch)]
        self._budgets: list[int | None] = [
            None if self._budget is None else max(self._budget, node.cost)  # type: ignore[union-attr]
            for node in self._nodes
        ]
        self._used = [0] * batch
        self._forced = [False] * batch
        self._limit = [False] * batch
        self._closed = [False] * batch
        self._active = list(range(batch))
        self._active_set = set(self._active)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        width = input_ids.shape[1]
        if self._width is None:
            self._begin(input_ids.shape[0], scores.shape[-1])
        else:
            if width != self._width + 1 or (
                self._last is not None and not torch.equal(input_ids[:, -2], self._last)
            ):
                raise RuntimeError(
                    "a MarkerLogitsProcessor follows one generate call, one row per sequence, no beam search: "
                    "make a new one with MarkerConstraint.logits_processor() for each call"
                )
            if self._active:
                self._advance(input_ids[:, -1].tolist())
        self._width = width
        if not self._active:
            self._last = None
            return scores
        self._last = input_ids[:, -1].clone() if width > 0 else None
        return self._mask(scores)

    def in_block(self, row: int) -> bool:
        """Whether `row` is still writing its block (after this step's call); a closed or freed row is not."""
        return self._width is not None and row in self._active_set

    def _advance(self, tokens: list[int]) -> None:
        still = []
        for b in self._active:
            node = self._nodes[b].edges.get(tokens[b])  # type: ignore[union-attr]
            self._used[b] += 1
            if node is None:  # another processor or a caller's override put an id the block does not allow
                warnings.warn(
                    f"row {b}: id {tokens[b]} is not allowed in the marker block; the row is left free",
                    stacklevel=3,
                )
                self._nodes[b] = None
                continue
            self._limit[b] |= node.digit_limit
            if node.final:
                self._nodes[b], self._closed[b] = None, True
                continue
            self._nodes[b] = node
            still.append(b)
        self._active = still
        self._active_set = set(still)

    def _mask(self, scores: torch.Tensor) -> torch.Tensor:
        # Start from -inf and copy back only the allowed scores: a gather and a scatter of the allowed ids, never a
        # pass over the whole vocabulary beyond one fill (a boolean mask cost 5x more per step on CPU).
        device = scores.device
        cols, lengths = [], []
        for b in self._active:
            node = self._nodes[b]
            budget = self._budgets[b]
            ids, cut = node.allowed(None if budget is None else budget - self._used[b])  # type: ignore[union-attr]
            self._forced[b] |= cut
            cols.append(node.ids_on(ids, device))  # type: ignore[union-attr]
            lengths.append(ids.shape[0])
        active = torch.tensor(self._active, device=device)
        if len(self._active) == scores.shape[0]:
            out = torch.full_like(scores, float("-inf"))
        else:
            out = scores.clone()
            out.index_fill_(0, active, float("-inf"))
        local = torch.repeat_interleave(
            torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
        )
        rows, cols_t = active[local], torch.cat(cols)
        vals = scores[rows, cols_t]
        # A processor before this one (suppress_tokens, bad_words_ids) may have removed every allowed id; sampling
        # from all -inf would give NaN, so such a row falls back to a uniform choice among its allowed ids.
        finite = torch.zeros(len(lengths), device=device).index_add_(
            0, local, (~torch.isneginf(vals)).float()
        )
        vals = vals.masked_fill(finite[local] == 0, 0.0)
        out[rows, cols_t] = vals
        return out

    def results(self, sequences: torch.Tensor | None = None) -> list[BlockResult]:
        """Per row. Pass `generate`'s output so that its last token, which no processor call sees, is counted."""
        if self._width is None:
            raise RuntimeError("the processor has not been called yet")
        out = []
        for b in range(len(self._nodes)):
            node, used, closed, limit = self._nodes[b], self._used[b], self._closed[b], self._limit[b]
            if node is not None and sequences is not None:
                for tok in sequences[b, self._width :].tolist():
                    node, used = node.edges.get(tok), used + 1
                    if node is None:
                        break
                    limit |= node.digit_limit
                    if node.final:
                        closed = True
                        break
            out.append(BlockResult(closed=closed, forced=self._forced[b], digit_limit=limit, tokens=used))
        return out


# ---------------------------------------------------------------------------------------------------------------
# The public face: one constraint per (tokenizer, taxonomy, format, categories), machines cached per tokenizer.

_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def token_texts(tokenizer: Any) -> list[str]:
    """The text of every id as it reads inside a text, computed once per tokenizer and vocabulary size."""
    key = ("texts", len(tokenizer))
    with _CACHE_LOCK:
        per_tokenizer = _CACHE.setdefault(tokenizer, {})
        texts = per_tokenizer.get(key)
        if texts is None:
            texts = per_tokenizer[key] = _token_texts(tokenizer)
    return texts


def _token_texts(tokenizer: Any) -> list[str]:
    """The text of every id as it reads inside a text (decoded after an anchor, so leading spaces survive)."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
    seqs = [[*anchor, i] for i in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust decoder, in one batch: ~0.1 s for 50k ids
        texts = backend.decode_batch(seqs, skip_special_tokens=False)
        prefix = backend.decode(anchor, skip_special_tokens=False)
    else:
        texts = tokenizer.batch_decode(seqs, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        prefix = tokenizer.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [t[len(prefix) :] if t.startswith(prefix) else "" for t in texts]


def _machine_for(
    tokenizer: Any,
    taxonomy: Taxonomy,
    fmt: str,
    categories: tuple[str, ...],
    max_number_digits: int,
    prompt_end: str,
) -> _Machine:
    # the format itself, not its name: a name registered again with other syntax gets a machine of its own
    key = (
        taxonomy.fingerprint(),
        block_format(fmt),
        categories,
        max_number_digits,
        prompt_end,
        len(tokenizer),
    )
    texts = token_texts(tokenizer)
    with _CACHE_LOCK:
        per_tokenizer = _CACHE.setdefault(tokenizer, {})
        machine = per_tokenizer.get(key)
        if machine is None:
            machine = _Machine(tokenizer, texts, taxonomy, fmt, categories, max_number_digits, prompt_end)
            machine.verify()
            per_tokenizer[key] = machine
    return machine


class MarkerConstraint:
    """Constrained decoding of the marker block for one (tokenizer, taxonomy, format, categories).

    `categories`: the categories the model writes (those its bundle was trained with), any order; default all.
    `fixed`: markers every row must carry with exactly these values (overridable per call).
    `max_number_digits`: integer digits a number may have. `max_block_tokens`: ids a block may take, separator
    included; when a row's budget runs short the machine steers it to close in time (None: only the grammar's
    own bound). It never goes below the shortest block that holds the fixed markers.
    `prompt_end`: the text the completion follows in training (end of the generation prompt); pieces are
    tokenized after it. "" (the block starts a text) suits prompts ending in a newline or a special token.
    The machine is built once per tokenizer and these settings, and cached.
    """

    def __init__(
        self,
        tokenizer: Any,
        taxonomy: Taxonomy,
        fmt: str = "paper",
        categories: Sequence[str] | None = None,
        fixed: Fixed = None,
        max_number_digits: int = 6,
        max_block_tokens: int | None = None,
        prompt_end: str = "",
    ):
        block_format(fmt)  # an unknown format fails here, naming the valid ones
        if max_number_digits < 1:
            raise ValueError("max_number_digits must be at least 1")
        if max_block_tokens is not None and max_block_tokens < 1:
            raise ValueError("max_block_tokens must be at least 1 (or None)")
        names = taxonomy.names if categories is None else tuple(taxonomy.subset(list(categories)).names)
        self.taxonomy, self.fmt, self.categories = taxonomy, fmt, names
        self.max_block_tokens = max_block_tokens
        self._machine = _machine_for(tokenizer, taxonomy, fmt, names, max_number_digits, prompt_end)
        self.fixed = dict(fixed or {})
        self._machine.due(self.fixed)  # fail now, not at the first generate call

    def logits_processor(
        self,
        fixed: Fixed | Sequence[Fixed] | EllipsisType = ...,
        max_block_tokens: int | None | EllipsisType = ...,
    ) -> MarkerLogitsProcessor:
        """A fresh processor for one `generate` call.

        `fixed`: omitted, the constraint's own; a mapping (or None) for every row; or a list with one mapping (or
        None) per prompt of the batch. `max_block_tokens`: omitted, the constraint's own budget.
        """
        if fixed is ... or fixed is None or isinstance(fixed, Mapping):
            per_row: list[Fixed | EllipsisType] = [fixed]
        else:
            per_row = list(fixed)
            if not per_row:
                raise ValueError("an empty list of fixed markers: give one mapping (or None) per prompt")
        starts = [self._machine.start(self._due(f)) for f in per_row]
        budget = self.max_block_tokens if max_block_tokens is ... else max_block_tokens
        return MarkerLogitsProcessor(self._machine, starts, budget)

    def block_length(self, ids: Iterable[int], fixed: Fixed | EllipsisType = ...) -> int | None:
        """How many of `ids` (a completion's ids) a complete, valid block takes, separator included; else None.

        `fixed` as in `logits_processor` (omitted: the constraint's own)."""
        return self._machine.walk(ids, self._due(fixed))

    def min_block_tokens(self, fixed: Fixed | EllipsisType = ...) -> int:
        """The fewest ids a block holding `fixed` (omitted: the constraint's own) takes, separator included."""
        return self._machine.start(self._due(fixed)).cost

    def _due(self, fixed: Fixed | EllipsisType) -> _Due:
        return self._machine.due(self.fixed if fixed is ... else fixed)  # type: ignore[arg-type]

    def render_ids(self, markers: Mapping[str, Any]) -> list[int]:
        """The canonical ids of the block of `markers` plus its separator (what training saw)."""
        return self._machine.render_ids(markers)
