"""The `language` annotator: the natural language of a conversation, with py3langid, offline.

Why py3langid: on all 2,400 Language Confusion prompts it was the most accurate candidate and by far the fastest
(bench/langid_compare.py, results in bench/RESULTS_langid.md): lingua is slower (and with all its languages less
accurate), langdetect is slower and random unless seeded.

What is read: the last user turn and the response (the last assistant turn), each with code removed (fenced
blocks, inline code, lines that look like code) and cut to `MAX_CHARS_PER_TURN` characters, so code does not
vote and a huge response costs no more than a short one.

How a language is chosen. py3langid scores its ~97 languages at once. Its best language is taken when it is one of
the taxonomy's 23 (or a variety the taxonomy counts under one of them: Egyptian and Moroccan Arabic, Wu and
Cantonese Chinese). When the best language is outside the taxonomy, the best taxonomy language is taken only if
it is nearly as likely (`NEAR_RATIO`): short Indonesian prompts often score slightly higher as Malay, Portuguese
as Galician, Russian as Bulgarian. Otherwise the language is left out: a Swedish or Swahili conversation gets no
`language` marker rather than a wrong one. Text with too few letters (code only, numbers, emoji) is left out too;
it is not labelled English by default.

The model loads once per process, on first use (about 0.4 s), and is shared by all annotator instances.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from treasure.annotate.code import strip_fenced
from treasure.records import last_assistant, prompt_text

# ISO 639-1 code (py3langid's labels) -> the taxonomy's language value.
ISO_TO_LANGUAGE: dict[str, str] = {
    "ar": "Arabic", "zh": "Chinese", "cs": "Czech", "nl": "Dutch", "en": "English", "fr": "French",
    "de": "German", "el": "Greek", "he": "Hebrew", "hi": "Hindi", "id": "Indonesian", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "fa": "Persian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "es": "Spanish", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
}  # fmt: skip
# py3langid labels for varieties that ISO 639-3 puts inside one of our macrolanguages (ara, zho).
VARIETIES: dict[str, str] = {"arz": "ar", "ary": "ar", "wuu": "zh", "yue": "zh"}

MAX_CHARS_PER_TURN = 300
# Read at most this much of a turn before removing code: enough to leave MAX_CHARS_PER_TURN of prose.
_SCAN_CHARS = 4_000
MIN_LETTERS = 3
# When the best language is outside the taxonomy, accept the best taxonomy language if its probability is at
# least this fraction of the best one. Measured: 0.4 keeps 99.96% accuracy on Language Confusion (100% at
# 0.3) while Malay, Galician, Slovak, Belarusian, Nepali, Bulgarian... sentences stay out.
NEAR_RATIO = 0.4

_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
_URL_RE = re.compile(r"https?://\S+|www\.\S+|\S+@\S+\.\w+")
# A line that is code rather than prose: starts with a keyword of a programming language, or is dense in
# symbols that prose rarely uses.
_CODE_LINE_RE = re.compile(
    r"^[ \t]*(?:def |class \w+[:(]|import |from [\w.]+ import|#include|package |func |fn |let |const |var |"
    r"public |private |return\b|SELECT |INSERT |UPDATE |CREATE |<\?php|\$ |#!|[{}\]);]+[ \t]*$)"
)
_SYMBOLS = frozenset("{}[]()<>;=_\\/|#$@*&^~+")

_lock = threading.Lock()
_identifier: Any = None


def _model() -> Any:
    """The py3langid identifier with normalised probabilities, loaded once per process."""
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def _is_code_line(line: str) -> bool:
    if _CODE_LINE_RE.match(line):
        return True
    solid = line.replace(" ", "")
    if len(solid) < 4:
        return False
    return sum(ch in _SYMBOLS for ch in solid) >= 0.2 * len(solid)


def prose(text: str, limit: int = MAX_CHARS_PER_TURN) -> str:
    """Up to `limit` characters of the natural-language part of `text`: code, URLs and e-mail addresses removed."""
    text = strip_fenced(text[:_SCAN_CHARS])
    text = _URL_RE.sub(" ", _INLINE_CODE_RE.sub(" ", text))
    kept, size = [], 0
    for line in text.splitlines():
        if not line.strip() or _is_code_line(line):
            continue
        kept.append(line)
        size += len(line) + 1
        if size >= limit:
            break
    return "\n".join(kept)[:limit]


def conversation_text(record: dict, limit: int = MAX_CHARS_PER_TURN) -> str:
    """What the language is read from: the prose of the last user turn and of the response."""
    return f"{prose(prompt_text(record), limit)}\n{prose(last_assistant(record), limit)}".strip()


def _has_letters(text: str, n: int) -> bool:
    count = 0
    for ch in text:
        if ch.isalpha():
            count += 1
            if count >= n:
                return True
    return False


def _taxonomy_code(label: str) -> str | None:
    code = VARIETIES.get(label, label)
    return code if code in ISO_TO_LANGUAGE else None


def identify(text: str) -> tuple[str | None, float]:
    """(taxonomy language or None, probability) for a piece of prose; see the module docstring for the rule."""
    if not _has_letters(text, MIN_LETTERS):
        return None, 0.0
    # rank() scores every language in one pass and sorts them: the overall best and the best of ours.
    ranking = _model().rank(text)
    best_label, best_p = ranking[0]
    code = _taxonomy_code(best_label)
    if code is not None:
        return ISO_TO_LANGUAGE[code], float(best_p)
    if best_label != "zxx":  # "zxx": py3langid's "no linguistic content"
        for label, p in ranking[1:]:
            code = _taxonomy_code(label)
            if code is not None:
                if p >= NEAR_RATIO * best_p:
                    return ISO_TO_LANGUAGE[code], float(p)
                break
    return None, float(best_p)


def detect_language(text: str) -> str | None:
    """The taxonomy language of a text (its code removed first), or None."""
    return identify(prose(text, 2 * MAX_CHARS_PER_TURN))[0]


class LanguageAnnotator:
    """Fills `language` from the last user turn and the response; left out for languages outside the taxonomy
    and for text without enough letters."""

    name = "language:py3langid"
    categories = ("language",)

    def __init__(self, max_chars_per_turn: int = MAX_CHARS_PER_TURN) -> None:
        self.max_chars_per_turn = max_chars_per_turn

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rec in records:
            lang, _ = identify(conversation_text(rec, self.max_chars_per_turn))
            out.append({"language": lang} if lang else {})
        return out
