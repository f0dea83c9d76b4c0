"""The `format` annotator: the dominant output format of a response, by rules.

One pure detector per value of the taxonomy's `format` category, each ``detect_x(text) -> bool`` on the response
(the last assistant turn); `detect_mcq_answer` may also read the prompt. A response often matches several
detectors (a Markdown answer with a numbered list and a LaTeX formula), so `detect_format` picks ONE value by
`PRIORITY`, most specific first:

1. JSON, XML: the whole response *is* a document of that kind, the strongest statement about its format;
2. Latex: math markup is a deliberate choice the response makes even inside prose or a list;
3. Tabular: a table dominates the layout of the text around it;
4. MCQAnswer: the response names one option of a multiple-choice prompt;
5. ChainOfThought: numbered reasoning steps that end in a final answer (more specific than a plain list);
6. Enumeration: a numbered or bulleted list;
7. Markdown: headings, emphasis, links or fenced code, the catch-all for formatted text.

When no detector fires the record gets no `format` marker (plain prose is left out, not guessed).

Speed: detectors read a bounded prefix (`MAX_CHARS`) except the JSON/XML parsers, which only run when the text
starts and ends like a document; every regex is compiled once at import.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from treasure.annotate.code import FENCE_RE, strip_fenced
from treasure.records import last_assistant, prompt_text

# Regex detectors look at this many characters: the format of a response shows in its first pages.
MAX_CHARS = 20_000
# Documents larger than this are not parsed (a JSON/XML reply this size is rare and parsing it costs too much).
MAX_DOCUMENT_CHARS = 500_000

PRIORITY = ("JSON", "XML", "Latex", "Tabular", "MCQAnswer", "ChainOfThought", "Enumeration", "Markdown")


def _prose(text: str) -> str:
    """The bounded prefix of a response without its fenced code (list or math syntax inside code is not ours)."""
    return strip_fenced(text[:MAX_CHARS])


# --------------------------------------------------------------------------------------------------- documents

_WHOLE_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*\n(.*?)\n?[ \t]*\1[ \t]*\s*$", re.S)
_FIRST_CHAR_RE = re.compile(r"\s*(\S)")


def _ends(text: str) -> tuple[str, str]:
    """First and last non-blank characters, without copying a long text."""
    m = _FIRST_CHAR_RE.match(text)
    if not m:
        return "", ""
    tail = text[-256:].rstrip() or text.rstrip()
    return m.group(1), tail[-1]


def _document_body(text: str, tags: tuple[str, ...], starts: str, ends: str) -> str | None:
    """The text to parse as a document, or None when it cannot be one (checked cheaply, before any parsing).

    The document is the whole response, or the body of the one fenced block that is most of it: a reply like
    "Here is the JSON:" + a ```json fence is a JSON reply. The fence must carry one of `tags` (or no tag) and the
    text around it must be short (a one-line lead-in, not an essay with a snippet). The document must start
    with one of `starts` and end with one of `ends`.
    """
    if len(text) > MAX_DOCUMENT_CHARS:
        return None
    if "```" in text or "~~~" in text:
        stripped = text.strip()
        m = _WHOLE_FENCE_RE.match(stripped)
        if m and (not m.group(2) or m.group(2).lower() in tags):
            body = m.group(3).strip()
        else:
            body = stripped
            blocks = list(FENCE_RE.finditer(stripped))
            if len(blocks) == 1:
                b = blocks[0]
                info = b.group("info").strip().lower()
                inner = b.group("body").strip()
                outside = len(stripped) - (b.end() - b.start())
                if (not info or info.split()[0] in tags) and outside <= max(80, len(inner) // 4):
                    body = inner
    else:
        first, last = _ends(text)
        if not first or first not in starts or last not in ends:
            return None  # the common case: prose is rejected without copying the text
        body = text.strip()
    if len(body) < 2 or body[0] not in starts or body[-1] not in ends:
        return None
    return body


def detect_json(text: str) -> bool:
    """The response (or a fenced ```json block that is most of it) parses as a JSON object or array."""
    body = _document_body(text, ("json", "jsonc", "json5", "javascript", "js"), "{[", "}]")
    if body is None:
        return False
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict | list)


_XML_START_RE = re.compile(r"<\?xml|<!--|<!DOCTYPE|<[A-Za-z_][\w.:-]*[\s/>]")
_XML_TAGS = ("xml", "html", "svg", "xhtml", "plist", "xsd", "xslt", "rss", "atom")


def detect_xml(text: str) -> bool:
    """The response (or a fenced ```xml block that is most of it) is a well-formed XML document."""
    body = _document_body(text, _XML_TAGS, "<", ">")
    if body is None or len(body) < 4 or not _XML_START_RE.match(body):
        return False
    try:
        # expat (behind ElementTree) refuses entity-expansion bombs since 2.4.1, so parsing untrusted text is safe.
        ET.fromstring(body)
    except (ET.ParseError, ValueError, RecursionError):
        return False
    return True


# ------------------------------------------------------------------------------------------------------- latex

_LATEX_ENV_RE = re.compile(r"\\begin\{[A-Za-z*]+\}")
# Commands that only appear in LaTeX math; enough on their own, wherever they are.
_LATEX_STRONG_RE = re.compile(r"\\(frac|dfrac|tfrac|sqrt|boxed|binom|mathbb|mathrm|mathbf|mathcal|overline|"
                              r"underbrace|int_|sum_|prod_|lim_|cdot|times|leq|geq|neq|infty|left[(\[|]|right[)\]|])")  # fmt: skip
# Math segments: $$...$$, $...$, \(...\), \[...\] (bounded lengths: an unclosed "$$" must not scan the rest).
_MATH_RE = re.compile(
    r"\$\$(.{1,1000}?)\$\$|(?<![\\$\w])\$(?!\s)([^$\n]{1,400}?)(?<!\s)\$(?![\w$])|\\\((.{1,500}?)\\\)"
    r"|\\\[(.{1,1000}?)\\\]",
    re.S,
)
_LATEX_IN_MATH_RE = re.compile(r"\\[A-Za-z]{2,}|[_^]\{")


def detect_latex(text: str) -> bool:
    """LaTeX markup or math: an environment, a math-only command, or $...$ / \\(...\\) math with LaTeX commands.

    Plain dollar amounts ("$5 and $10") have no LaTeX command inside and do not count.
    """
    return _latex(_prose(text))


def _latex(text: str) -> bool:
    if "\\" not in text and "$" not in text:
        return False
    if _LATEX_ENV_RE.search(text) or _LATEX_STRONG_RE.search(text):
        return True
    for m in _MATH_RE.finditer(text):
        body = next(g for g in m.groups() if g is not None)
        if _LATEX_IN_MATH_RE.search(body):
            return True
    return False


# ----------------------------------------------------------------------------------------------------- tables

_PIPE_SEP_RE = re.compile(
    r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)+\|?[ \t]*$|^[ \t]*\|[ \t]*:?-+:?[ \t]*\|[ \t]*$"
)


def _cells(line: str) -> int:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return s.count("|") + 1


def _has_pipe_table(lines: list[str]) -> bool:
    """A Markdown pipe table: a header row with pipes, then a separator row (---|---) with as many cells."""
    for i in range(1, len(lines)):
        line = lines[i]
        if "-" in line and "|" in line and _PIPE_SEP_RE.match(line):
            header = lines[i - 1]
            if "|" in header and header.strip() and abs(_cells(header) - _cells(line)) <= 1:
                return True
    return False


def _has_delimited_rows(lines: list[str], sep: str, min_fields: int, min_rows: int = 3) -> bool:
    """At least `min_rows` consecutive lines with the same number (>= min_fields - 1) of `sep` separators and
    short cells, as in TSV or CSV. Sentences with commas fail on cell length or a closing full stop."""
    run, count = 0, -1
    for line in lines:
        n = line.count(sep)
        ok = n >= min_fields - 1 and not line.rstrip().endswith((".", ":", "?", "!"))
        if ok and sep == ",":
            cells = line.split(",")
            ok = max(len(c.strip()) for c in cells) <= 30 and all(c.count(" ") <= 3 for c in cells)
        if ok and n == count:
            run += 1
        elif ok:
            run, count = 1, n
        else:
            run, count = 0, -1
        if run >= min_rows:
            return True
    return False


def detect_tabular(text: str) -> bool:
    """A table: a Markdown pipe table with a separator row, or >= 3 consistent TSV rows (>= 2 columns) or CSV
    rows (>= 3 columns). A single pipe or comma in prose is not a table."""
    text = text[:MAX_CHARS]
    lines = text.splitlines()
    if "|" in text and "-" in text and _has_pipe_table(lines):
        return True
    if "\t" in text and _has_delimited_rows(lines, "\t", 2):
        return True
    return text.count(",") >= 6 and _has_delimited_rows(lines, ",", 3)


# ------------------------------------------------------------------------------------------------ enumeration

_ITEM_RE = re.compile(r"^([ \t]*)(?:(\d{1,3})[.)]|([a-zA-Z])[.)]|[-*+•▪●◦‣–])[ \t]+\S")


def detect_enumeration(text: str) -> bool:
    """A numbered or bulleted list: >= 2 list items in one list (blank or indented continuation lines may sit
    between items). Numbers must go up by one (or repeat, as in Markdown's "1. 1. 1."), so a line that merely
    starts with "1." or a date is not a list."""
    return _enumeration(_prose(text))


def _enumeration(text: str) -> bool:
    items, prev_num, prev_letter = 0, None, None
    for line in text.splitlines():
        m = _ITEM_RE.match(line)
        if m:
            num, letter = m.group(2), m.group(3)
            if num is not None:
                n = int(num)
                if prev_num is not None and n not in (prev_num, prev_num + 1):
                    items = 0  # numbering restarts: a new list (or not a list at all)
                prev_num, prev_letter = n, None
            elif letter is not None:
                c = ord(letter.lower())
                if prev_letter is not None and c != prev_letter + 1:
                    items = 0
                elif prev_letter is None and letter.lower() != "a":
                    items, prev_num = 0, None
                    continue  # "I. Introduction" or "A) ..." without a run: not counted as a start
                prev_letter, prev_num = c, None
            else:
                prev_num = prev_letter = None
            items += 1
            if items >= 2:
                return True
        elif not line.strip() or line[:1] in " \t":
            continue  # blank line or continuation of the current item
        else:
            items, prev_num, prev_letter = 0, None, None
    return False


# ------------------------------------------------------------------------------------------- chain of thought


def _words(*words: str) -> str:
    """An alternation of whole words that starts with literals (fast to scan): the word boundary before each word
    is a look-behind placed after it."""
    return "|".join(f"{re.escape(w)}(?<![^\\W_]{re.escape(w)})(?![^\\W_])" for w in words)


# Matched against lower-cased text.
_STEP_RE = re.compile(
    r"^\W{0,4}(?:step|paso|schritt|étape|etapa|passo|krok|adım|bước|langkah|шаг|крок)\s*(\d+)(?!\d)"
    r"|^\W{0,4}(?:第\s*[一二三四五六七八九十\d]+\s*步|步骤\s*\d|ステップ\s*\d|\d\s*단계)",
    re.M,
)
_THINK_RE = re.compile(
    r"let'?s (?:think|reason|work|break (?:it|this) down|solve)|let me (?:think|reason|work|solve)|"
    r"step[- ]by[- ]step|paso a paso|schritt für schritt|étape par étape|一步一步|逐步"
)
# Connectives at a line or sentence start ("First, ...", "... . Then ...").
_SEQUENCE_RE = re.compile(
    r"(?:^\W{0,4}|[.!?:]\s+)(first(?:ly)?|to begin|next|then|second(?:ly)?|finally|after that)(?![^\W_])",
    re.M,
)
_FINAL_RE = re.compile(
    _words(
        "therefore", "thus", "hence", "so the answer", "the answer is", "final answer", "in conclusion",
        "the result is", "por lo tanto", "la respuesta es", "daher", "die antwort", "donc", "la réponse",
        "portanto", "quindi", "итак", "следовательно", "ответ", "dolayısıyla", "do đó", "jadi", "maka",
    )
    + r"|\\boxed\{|answer\s*[:：]|因此|所以|答案|したがって|よって|따라서|정답"
)  # fmt: skip
# The final answer is looked for in the last third of the text, but at most in its last this many characters.
_FINAL_WINDOW = 3_000


def detect_chain_of_thought(text: str) -> bool:
    """Step-by-step reasoning that ends in a final answer.

    Steps: "Step 1 ... Step 2" (also in several other languages), "Let's think step by step", or a sequence of
    connectives at line or sentence starts ("First, ... Then ... Finally"). The final answer ("Therefore", "The
    answer is", \\boxed{}) must come in the last third of the text.
    """
    return _chain_of_thought(_prose(text))


def _chain_of_thought(text: str) -> bool:
    # The final answer first: it is looked for in a small window, and most texts fail here.
    start = max(len(text) * 2 // 3, len(text) - _FINAL_WINDOW)
    if not _FINAL_RE.search(text[max(0, start - 40) :].lower()):
        return False
    low = text.lower()
    steps = {m.group(1) or m.group(0) for m in _STEP_RE.finditer(low)}
    if len(steps) >= 2 or _THINK_RE.search(low):
        return True
    seq = {m.group(1) for m in _SEQUENCE_RE.finditer(low)}
    return len(seq) >= 3 or (len(seq) >= 2 and bool(seq & {"first", "firstly"}))


# --------------------------------------------------------------------------------------------------------- MCQ

# Options in the prompt: "A) ...", "(B) ...", "C. ...", "D: ..." at line starts or inline.
_OPTION_RE = re.compile(r"(?:^|(?<=\s))\(?([A-Ea-e])[).:]\s+\S", re.M)
# A response that opens with its choice: "B", "(C)", "D) Paris", "A. because", "Answer: B", "**C**".
# Keywords are case-insensitive, option letters are capitals ("answer a question" names no option).
_ANSWER_START_RE = re.compile(
    r"^\W{0,3}(?i:(?:the )?(?:correct )?answer(?: is)?\s*[:：]?\s*)?(?:\*\*)?\s*"
    r"(?:\(([A-E])\)|([A-E])[).:](?![\w.])|([A-E])(?=\**\s*$|\**\s+[-–—]))"
)
_PHRASE_WORDS = ("answer", "option", "choice", "respuesta", "réponse", "antwort", "resposta", "risposta", "ответ",
                 "jawaban", "đáp án", "答案")  # fmt: skip
_ANSWER_PHRASE_RE = re.compile(
    r"(?i:answer|option|choice|respuesta|réponse|antwort|resposta|risposta|ответ|jawaban|đáp án)"
    r"(?:\s+(?i:is|would be|es|est|ist|é|è))?\s*[:：]?\s*(?:\*\*)?\s*\(?([A-E])\)?(?![\w'’])"
    r"|正确答案是?\s*([A-E])|答案[是为：:]\s*([A-E])"
)
_MCQ_HEAD = 2_000
_MCQ_SHORT = 600


def _options(text: str) -> set[str]:
    """Option letters listed in `text`, if they form a run that starts at A (at least A and B)."""
    if "A" not in text and "a" not in text:
        return set()
    letters = {m.group(1).upper() for m in _OPTION_RE.finditer(text[:MAX_CHARS])}
    return letters if {"A", "B"} <= letters else set()


def detect_mcq_answer(text: str, prompt: str = "") -> bool:
    """The response names one option of a multiple-choice question.

    With options in the prompt ("A) ... B) ..."), the response may open with its choice ("B", "(C) Paris",
    "D. Because ...") or say "the answer is B" in its first 2,000 characters. Without options in the prompt only
    a short response (<= 600 characters) that states its choice that way counts. A response that lists options
    A) and B) itself, with no answer phrase, is an enumeration, not an answer.
    """
    head = text[:_MCQ_HEAD].strip()
    if not head:
        return False
    chosen = set()
    m = _ANSWER_START_RE.match(head)
    if m:
        chosen.add(next(g for g in m.groups() if g).upper())
    low = head.lower()
    phrases = []
    if any(w in low for w in _PHRASE_WORDS):  # cheap gate before the phrase regex
        phrases = [next(g for g in ph.groups() if g).upper() for ph in _ANSWER_PHRASE_RE.finditer(head)]
    chosen.update(phrases)
    if not chosen:
        return False
    if not phrases and len(_options(head)) >= 2:
        return False  # the response lists options itself
    options = _options(prompt) if prompt else set()
    if options:
        chosen &= options
    elif len(text) > _MCQ_SHORT:
        return False
    return len(chosen) == 1


# ---------------------------------------------------------------------------------------------------- markdown

# Strong signs, each with a substring gate (checked first) and a regex that starts with a literal.
_MD_STRONG: tuple[tuple[tuple[str, ...], re.Pattern], ...] = (
    (("#",), re.compile(r"(?:^|\n)#{1,6}[ \t]+\S")),  # heading
    (("```", "~~~"), re.compile(r"(?:^|\n)[ \t]{0,3}(?:```|~~~)")),  # fenced code
    (("**", "__"), re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")),  # bold
    (("](",), re.compile(r"\]\((?:https?://|/|#|\./)[^)\s]*\)")),  # link
    ((">",), re.compile(r"(?:^|\n)[ \t]*>[ \t]+\S")),  # block quote
)
# Weak signs: italic, inline code, a horizontal rule.
_MD_WEAK_RE = re.compile(
    r"\*(?<![\w*]\*)[^*\s][^*\n]*?\*(?![\w*])|`(?<!``)[^`\n]+`(?!`)|\n[ \t]*(?:-{3,}|\*{3,})[ \t]*(?=\n|$)"
)


def detect_markdown(text: str) -> bool:
    """Markdown: a heading, a fenced code block, bold, a link or a block quote; or >= 2 weak signs (italic,
    inline code, a horizontal rule)."""
    text = text[:MAX_CHARS]
    for gate, rx in _MD_STRONG:
        if any(g in text for g in gate) and rx.search(text):
            return True
    if "*" not in text and "`" not in text and "---" not in text:
        return False
    weak = _MD_WEAK_RE.finditer(text)
    return next(weak, None) is not None and next(weak, None) is not None


# ------------------------------------------------------------------------------------------------- annotator

DETECTORS: dict[str, Callable[..., bool]] = {
    "JSON": detect_json,
    "XML": detect_xml,
    "Latex": detect_latex,
    "Tabular": detect_tabular,
    "MCQAnswer": detect_mcq_answer,
    "ChainOfThought": detect_chain_of_thought,
    "Enumeration": detect_enumeration,
    "Markdown": detect_markdown,
}


def detect_format(text: str, prompt: str = "") -> str | None:
    """The first format in `PRIORITY` whose detector fires on the response, or None.

    Same result as calling the `DETECTORS` in order; the fence-free prefix is computed once and shared.
    """
    if detect_json(text):
        return "JSON"
    if detect_xml(text):
        return "XML"
    prose = _prose(text)
    if _latex(prose):
        return "Latex"
    if detect_tabular(text):
        return "Tabular"
    if detect_mcq_answer(text, prompt):
        return "MCQAnswer"
    if _chain_of_thought(prose):
        return "ChainOfThought"
    if _enumeration(prose):
        return "Enumeration"
    if detect_markdown(text):
        return "Markdown"
    return None


class FormatAnnotator:
    """Fills `format` from the response (and, for MCQAnswer, the prompt); left out when no format applies."""

    name = "format:rules"
    categories = ("format",)

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rec in records:
            value = detect_format(last_assistant(rec), prompt_text(rec))
            out.append({"format": value} if value else {})
        return out

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        """Per record: the detectors that fire on it; the first in priority order is the format."""
        out = []
        for rec in records:
            text, prompt = last_assistant(rec), prompt_text(rec)
            fired = [name for name, detect in DETECTORS.items()
                     if (detect(text, prompt) if name == "MCQAnswer" else detect(text))]  # fmt: skip
            out.append({"format": {"detectors_that_fire": fired, "rule": "the first in priority order wins"}})
        return out
