"""Length markers: tokens (a real tokenizer), sentences, paragraphs, and the paper's length bucket.

The default tokenizer is GPT-2's byte-level BPE, shipped with the package (assets/gpt2-tokenizer.json), so the
numbers are reproducible offline; `--tokenizer` takes a tokenizer.json file or a local HF tokenizer folder, which
should be the tokenizer of the model you will train (length markers then count that model's tokens).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from treasure.errors import TreasureError
from treasure.records import last_assistant

# The paper's thresholds: concise < 300 tokens, medium 300 to 1000, long > 1000.
CONCISE_MAX, MEDIUM_MAX = 300, 1000
CATEGORIES = ("length_tokens", "length_sentences", "length_paragraphs", "length_bucket")

_PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n")
# A sentence ends at . ! ? (or their CJK / Devanagari / Arabic forms) followed by space or the end of text.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？।؟]+")
_FENCE = re.compile(r"```.*?(?:```|$)", re.S)


def length_bucket(n_tokens: int) -> str:
    if n_tokens < CONCISE_MAX:
        return "concise"
    if n_tokens <= MEDIUM_MAX:
        return "medium"
    return "long"


def count_paragraphs(text: str) -> int:
    return sum(1 for p in _PARAGRAPH_SPLIT.split(text) if p.strip())


def count_sentences(text: str) -> int:
    """Sentences in prose; a fenced code block counts as one sentence, not one per `.` in the code."""
    fences = len(_FENCE.findall(text))
    prose = _FENCE.sub(" ", text)
    n = 0
    for para in _PARAGRAPH_SPLIT.split(prose):
        para = para.strip()
        if not para:
            continue
        ends = _SENTENCE_END.findall(para)
        trailing = not _SENTENCE_END.search(para[-1:] if para else "")
        # A paragraph without final punctuation (a list item, a heading) is still one sentence.
        n += len(ends) + (1 if trailing else 0)
    return n + fences


@cache
def _load_tokenizer(spec: str | None):
    from tokenizers import Tokenizer

    if spec is None:
        path = resources.files("treasure.assets").joinpath("gpt2-tokenizer.json")
        return Tokenizer.from_file(str(path)), "gpt2"
    p = Path(spec)
    if p.is_file():
        try:
            return Tokenizer.from_file(str(p)), p.stem
        except Exception as e:
            raise TreasureError(f"{p}: not a tokenizers JSON file ({e})") from None
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(p / "tokenizer.json")), p.name
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as e:
            raise TreasureError(f"{p}: no loadable tokenizer in this folder ({e})") from None
        return hf, p.name
    raise TreasureError(f"--tokenizer {spec}: no such file or folder")


class LengthAnnotator:
    """Fills length_tokens, length_sentences, length_paragraphs and length_bucket from the last assistant turn."""

    categories = CATEGORIES

    def __init__(self, tokenizer: str | None = None):
        self._tok, tok_name = _load_tokenizer(tokenizer)
        self.name = f"length:{tok_name}"

    def count_tokens(self, texts: list[str]) -> list[int]:
        if hasattr(self._tok, "encode_batch_fast"):  # tokenizers.Tokenizer: batched in Rust, no offsets
            return [len(e.ids) for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]
        if hasattr(self._tok, "encode_batch"):
            return [len(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self._tok(texts, add_special_tokens=False)["input_ids"]]

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        texts = [last_assistant(r) for r in records]
        out = []
        for text, n in zip(texts, self.count_tokens(texts), strict=True):
            out.append(
                {
                    "length_tokens": n,
                    "length_sentences": count_sentences(text),
                    "length_paragraphs": count_paragraphs(text),
                    "length_bucket": length_bucket(n),
                }
            )
        return out

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        """Per record: each value with the tokenizer and count or the rule behind it (for `--explain`)."""
        counts = self.count_tokens([last_assistant(r) for r in records])
        out = []
        for found, n in zip(self.annotate(records), counts, strict=True):
            rules = {
                "length_tokens": {"tokenizer": self.name.split(":", 1)[-1], "tokens": n},
                "length_sentences": {
                    "rule": "ends at . ! ? (and CJK/Devanagari/Arabic forms); a code block is one"
                },
                "length_paragraphs": {"rule": "blocks separated by a blank line"},
                "length_bucket": {
                    "tokens": n,
                    "rule": f"concise < {CONCISE_MAX} <= medium <= {MEDIUM_MAX} < long",
                },
            }
            out.append({c: {"value": found[c], **rules[c]} for c in self.categories if c in found})
        return out
