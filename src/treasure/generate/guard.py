"""No marker syntax after the block: a logits processor that keeps every delimiter and marker token out of the response.

A model fine-tuned with markers has seen marker tokens at the start of every completion; a real pretrained model
after a short run keeps writing them (an empty compact block, then ``Blog: ...``). The block constraint
(constrain.py) shapes the block itself; once a row's block is closed (or for a bundle whose completions carry no
block, from the first token) this guard takes over: it forbids any token that would complete one of the marker
strings (``markers.marker_syntax``: every format's delimiters and every added marker token) in the text written
so far, and it keeps the turn from ending before the response has its first token (no training response is
empty). The rule is on text, not ids, so it holds however the string would be split: an added compact token, or
the paper opener from ordinary pieces (``<`` + ``MARK`` + ``ER_LIST`` + ``>``). A row may still write ``<MARK``;
it cannot write the character that completes the opener.

Tables. Every marker string starts with ``<`` and has no other ``<`` (taxonomy values cannot hold one), so the
only partial marker string a text can end in begins at its last ``<``. For every proper prefix ``p`` of a marker
string the guard keeps the ids whose text starts with what completes it (``<|mark`` -> ids starting ``ers|>``),
plus the ids whose text holds a whole marker string (always banned). They are built once per tokenizer and
marker strings (about 0.3 s for a 49k vocabulary) and cached; a step costs a string search per row and one
index fill.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, _Tables]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


class _Tables:
    """Banned ids by the partial marker string a text ends in."""

    def __init__(self, texts: Sequence[str], strings: Sequence[str]):
        strings = tuple(dict.fromkeys(s for s in strings if s))
        if any(not s.startswith("<") or "<" in s[1:] for s in strings):
            raise ValueError("marker strings must start with '<' and hold no other '<'")
        self.longest = max((len(s) for s in strings), default=0)
        rests: dict[str, set[str]] = {}  # what completes a prefix -> the prefixes it completes
        for s in strings:
            for k in range(1, len(s)):
                rests.setdefault(s[k:], set()).add(s[:k])
        longest_rest = max((len(r) for r in rests), default=0)
        always: set[int] = set()
        by_prefix: dict[str, set[int]] = {}
        for tok, text in enumerate(texts):
            if not text:
                continue
            if "<" in text and any(s in text for s in strings):
                always.add(tok)
                continue
            for j in range(1, min(len(text), longest_rest) + 1):
                for prefix in rests.get(text[:j], ()):
                    by_prefix.setdefault(prefix, set()).add(tok)
        self.always = torch.tensor(sorted(always), dtype=torch.long)
        self.by_prefix = {
            p: torch.tensor(sorted(ids | always), dtype=torch.long) for p, ids in by_prefix.items()
        }

    def banned(self, tail: str) -> torch.Tensor:
        """The ids that would complete a marker string after `tail` (the end of the text so far)."""
        cut = tail.rfind("<")
        if cut < 0:
            return self.always
        return self.by_prefix.get(tail[cut:], self.always)


def tables_for(tokenizer: Any, strings: Sequence[str]) -> _Tables:
    """The guard's tables for `tokenizer` and the marker strings, built once and cached."""
    from treasure.generate.constrain import token_texts

    key = (tuple(strings), len(tokenizer))
    with _CACHE_LOCK:
        per_tokenizer = _CACHE.setdefault(tokenizer, {})
        tables = per_tokenizer.get(key)
    if tables is None:
        tables = _Tables(token_texts(tokenizer), strings)
        with _CACHE_LOCK:
            per_tokenizer[key] = tables
    return tables


class MarkerSyntaxGuard(LogitsProcessor):
    """Sets -inf on every id that would complete marker syntax in a row's response. One per `generate` call.

    `in_block(row)`: whether the row is still writing its block (the block constraint's rows; those are left to
    it). Without it every row is in its response from the first token. Put it after the block constraint in
    `logits_processor=[...]`. `texts[i]` is id i's text as it reads inside a text (constrain.token_texts).
    """

    def __init__(
        self,
        tables: _Tables,
        texts: Sequence[str],
        in_block: Callable[[int], bool] | None = None,
        stop_ids: Sequence[int] = (),
    ):
        self._tables = tables
        self._texts = texts
        self._in_block = in_block
        # No training response is empty: a response's first token may not end the turn (a model that has seen
        # few steps would otherwise close its block and stop).
        self._stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
        self._width: int | None = None
        self._tails: list[str] = []
        self._was_in: list[bool] = []
        self._started: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        if self._width is None:
            self._tails = [""] * batch
            self._was_in = [self._in_block is not None] * batch
            self._started = [False] * batch
        else:
            last = input_ids[:, -1].tolist()
            keep = self._tables.longest
            for b in range(batch):
                if not self._was_in[b]:  # a block's own tokens (its closer included) are not response text
                    tok = last[b]
                    self._started[b] = True
                    self._tails[b] = (self._tails[b] + (self._texts[tok] if tok < len(self._texts) else ""))[
                        -keep:
                    ]
        self._width = input_ids.shape[1]
        rows, cols = [], []
        for b in range(batch):
            inside = self._in_block is not None and self._in_block(b)
            self._was_in[b] = inside
            if inside:
                continue
            ids = self._tables.banned(self._tails[b])
            if not self._started[b] and self._stop.numel():
                ids = torch.cat([ids, self._stop])
            ids = ids[ids < scores.shape[-1]]
            if ids.numel():
                rows.append(torch.full_like(ids, b))
                cols.append(ids)
        if rows:
            scores = scores.clone()
            scores[torch.cat(rows).to(scores.device), torch.cat(cols).to(scores.device)] = float("-inf")
        return scores
