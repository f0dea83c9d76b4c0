"""The `language` annotator: the natural language of a conversation, with py3langid, offline.

Why py3langid: on all 2,400 Language Confusion prompts it was the most accurate candidate and by far the fastest
(bench/langid_compare.py, results in bench/RESULTS_langid.md): lingua is slower (and with all its languages less
accurate), langdetect is slower and random unless seeded.

What is read: the last user turn and the response (the last assistant turn), each with code removed (fenced
blocks, inline code, lines that look like code) and cut to `MAX_CHARS_PER_TURN` characters, so code does not
vote and a huge response costs no more than a short one.

How a language is chosen. py3langid scores all its languages (140 labels) at once. Its best language is taken when it is one of
the taxonomy's 23 (or a variety the taxonomy counts under one of them: Egyptian and Moroccan Arabic, Wu and
Cantonese Chinese). When the best language is outside the taxonomy, the best taxonomy language is taken only if
it is nearly as likely (`NEAR_RATIO`): short Indonesian prompts often score slightly higher as Malay, Portuguese
as Galician, Russian as Bulgarian. Otherwise the language is left out: a Swedish or Swahili conversation gets no
`language` marker rather than a wrong one. Text with too few letters (code only, numbers, emoji) or too little
evidence (`MIN_PROBABILITY`) is left out too; it is not labelled English by default. Clearly English text (ASCII letters, many English function words) skips
the model: most SFT data is English and the model is the slowest part of the rule annotators.

The model loads once per process, on first use (about 1 s), and is shared by all annotator instances.
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

MAX_CHARS_PER_TURN = 150
# Read at most this much of a turn before removing code: enough to leave MAX_CHARS_PER_TURN of prose.
_SCAN_CHARS = 3_000
MIN_LETTERS = 3
# When the best language is outside the taxonomy, accept the best taxonomy language if its probability is at
# least this fraction of the best one. Measured: 0.4 keeps 99.96% accuracy on Language Confusion (100% at
# 0.3) while Malay, Galician, Slovak, Belarusian, Nepali, Bulgarian... sentences stay out.
NEAR_RATIO = 0.4
# A language is named only when py3langid gives it at least this probability (normalised over its 140 labels, with
# a temperature that grows with the text length, so short texts get low values). Measured: no correct answer on
# the Language Confusion prompts is below 0.05; letter junk ("a b c", "lol", "- x" lists) and two-word texts
# ("Merci !" -> Czech) are.
MIN_PROBABILITY = 0.05

_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
_URL_RE = re.compile(r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+")
# A line that is code rather than prose: starts with a keyword of a programming language, or is dense in
# symbols that prose rarely uses.
_CODE_LINE_RE = re.compile(
    r"^[ \t]*(?:def |class \w+[:(]|import |from [\w.]+ import|#include|package |func |fn |let |const |var |"
    r"public |private |return\b|SELECT |INSERT |UPDATE |CREATE |<\?php|\$ |#!|[{}\]);]+[ \t]*$)"
)
# English fast path: ASCII prose (typographic punctuation allowed) in which >= 20% of the (>= 8) words are English
# function words that are not words of the other Latin-script languages is English; the model is not run.
# Measured (300 characters of prose per text): it fires on none of the 2,200 non-English Language Confusion
# prompts and on 111 of the 200 English ones; on the 1,167 OASST English turns it fires on 516 and agrees with
# py3langid on 515 (the other is a sentence ending in a commit hash, which py3langid puts outside the taxonomy).
_ENGLISH_WORDS = frozenset((
    "the", "and", "of", "that", "with", "you", "this", "they", "from", "which", "would", "there", "their", "have",
    "been", "what", "your", "should", "could", "about", "into", "than", "these", "were", "our", "when", "how", "does",
))  # fmt: skip
_ASCII_WORD_RE = re.compile(r"[a-z']+")
# Not ASCII and not punctuation (typographic quotes and dashes, nbsp, degree signs...): a letter of another script.
_NON_ASCII_LETTER_RE = re.compile(r"[^\x00-\x7f\u00a0-\u00bf\u2000-\u206f\u20a0-\u20bf]")
_ENGLISH_MIN_WORDS = 8
_ENGLISH_MIN_SHARE = 0.2
# str.translate deletes these; the length difference counts them at C speed.
_DROP_SYMBOLS = str.maketrans("", "", "{}[]()<>;=_\\/|#$@*&^~+ ")

_lock = threading.Lock()
_identifier: Any = None
_columns: Any = None  # indices of the taxonomy's languages (and their varieties) among py3langid's labels


def _model() -> Any:
    """The py3langid identifier with normalised probabilities, loaded once per process (py3langid 0.4 API)."""
    global _identifier, _columns
    if _identifier is None:
        with _lock:
            if _identifier is None:
                import numpy as np
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                # The model's feature table ships as float16, which numpy multiplies without BLAS: a float32
                # copy (+57 MB) halves the scoring time and gives the same probabilities.
                table = getattr(ident, "nb_ptc", None)
                if isinstance(table, np.ndarray) and table.dtype == np.float16:
                    ident.nb_ptc = table.astype(np.float32)
                    full = getattr(ident, "_full_model", None)
                    if isinstance(full, tuple) and full and full[0] is table:
                        ident._full_model = (ident.nb_ptc, *full[1:])
                _columns = np.asarray([i for i, c in enumerate(ident.nb_classes) if _taxonomy_code(c)])
                _identifier = ident
    return _identifier


def _is_code_line(line: str) -> bool:
    if _CODE_LINE_RE.match(line):
        return True
    solid = len(line) - line.count(" ")
    if solid < 4:
        return False
    # Symbols (and spaces, removed from both sides of the comparison) make up >= 20% of the visible characters.
    return solid - len(line.translate(_DROP_SYMBOLS)) >= 0.2 * solid


def prose(text: str, limit: int = MAX_CHARS_PER_TURN) -> str:
    """Up to `limit` characters of the natural-language part of `text`: code, URLs and e-mail addresses removed."""
    text = strip_fenced(text[:_SCAN_CHARS])
    if "`" in text:
        text = _INLINE_CODE_RE.sub(" ", text)
    if "://" in text or "www." in text or "@" in text:
        text = _URL_RE.sub(" ", text)
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


def _clearly_english(text: str) -> bool:
    if not text.isascii() and _NON_ASCII_LETTER_RE.search(text):
        return False
    words = _ASCII_WORD_RE.findall(text.lower())
    if len(words) < _ENGLISH_MIN_WORDS:
        return False
    return sum(w in _ENGLISH_WORDS for w in words) >= _ENGLISH_MIN_SHARE * len(words)


def identify(text: str) -> tuple[str | None, float]:
    """(taxonomy language or None, probability) for a piece of prose; see the module docstring for the rule.

    The probability is py3langid's (normalised over its languages); 1.0 for the English fast path.
    """
    if not _has_letters(text, MIN_LETTERS):
        return None, 0.0
    if _clearly_english(text):
        return "English", 1.0
    ident = _model()
    # `_decide` (py3langid 0.4) returns the probabilities without sorting them; with another version the public
    # `rank` (which sorts) gives the same answer, a little slower.
    decide = getattr(ident, "_decide", None)
    if decide is None:
        return _identify_ranked(ident.rank(text))
    # One scoring pass gives the probability of every language: the overall best and the best of ours.
    probs = decide(text)
    labels = ident.nb_classes
    best = int(probs.argmax())
    best_p = float(probs[best])
    code = _taxonomy_code(labels[best])
    if code is not None:
        return (ISO_TO_LANGUAGE[code] if best_p >= MIN_PROBABILITY else None), best_p
    if labels[best] == "zxx":  # py3langid's "no linguistic content"
        return None, best_p
    j = int(_columns[int(probs[_columns].argmax())])
    p = float(probs[j])
    if p >= NEAR_RATIO * best_p and p >= MIN_PROBABILITY:
        return ISO_TO_LANGUAGE[_taxonomy_code(labels[j])], p  # type: ignore[index]
    return None, best_p


def _identify_ranked(ranking: list[tuple[str, float]]) -> tuple[str | None, float]:
    best_label, best_p = ranking[0]
    code = _taxonomy_code(best_label)
    if code is not None:
        return (ISO_TO_LANGUAGE[code] if best_p >= MIN_PROBABILITY else None), float(best_p)
    if best_label != "zxx":
        for label, p in ranking[1:]:
            code = _taxonomy_code(label)
            if code is not None:
                if p >= NEAR_RATIO * best_p and p >= MIN_PROBABILITY:
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

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        """Per record: the identified language (in the taxonomy or not) and its probability."""
        out = []
        for rec in records:
            lang, p = identify(conversation_text(rec, self.max_chars_per_turn))
            out.append({"language": {"identified": lang, "probability": round(p, 4)}})
        return out
