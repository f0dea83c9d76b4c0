"""The suite's tasks: each one generates (prompt, reference answer) pairs from a seed and checks answers exactly.

Tasks are small string, arithmetic and code-line problems a character-level model can learn on a laptop CPU.
Every prompt says unambiguously what to do: a model that reads it carefully needs no marker to solve it. Shares
follow a Zipf-like curve, so some tasks (and the domains they carry) are rare: the long tail. The rare repair task
(`repair`, CodeFix) fixes the single error in a one-line program of the kind the frequent `code_sum` task
(CodeGeneration) writes, as CodeRepair relates to code generation in the paper.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _word(rng: random.Random, lo: int = 4, hi: int = 8) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


@dataclass(frozen=True)
class Item:
    """One instance of a task. `answer` is the reference; `check` decides any response exactly."""

    task: str
    prompt: str
    answer: str
    params: dict


@dataclass(frozen=True)
class Task:
    name: str
    task_marker: str  # the paper taxonomy's `task` value: metadata a real dataset would carry
    domain_hint: str  # the subject the prompt is about (the annotate stage infers `domain` itself)
    share: float  # relative frequency in the training mix
    make: Callable[[random.Random], Item]
    check: Callable[[Item, str], bool]
    sloppy: Callable[[Item, random.Random], str]  # a low-quality answer, systematically different


def _exact(item: Item, response: str) -> bool:
    return response.strip() == item.answer


# ------------------------------------------------------------------------------------------------ tasks


def make_reverse(rng):
    w = _word(rng)
    return Item("reverse", f"Reverse the letters of the word {w}.", w[::-1], {"word": w})


def make_upper(rng):
    w = _word(rng)
    return Item("upper", f"Write the word {w} in capital letters.", w.upper(), {"word": w})


def make_add(rng):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return Item("add", f"What is {a} plus {b}?", str(a + b), {"a": a, "b": b})


def make_count(rng):
    w = _word(rng, 6, 10)
    c = rng.choice(w)
    return Item(
        "count", f"How many times does the letter {c} appear in {w}?", str(w.count(c)), {"word": w, "c": c}
    )


def make_multiples(rng):
    k, m, n = rng.randint(2, 19), rng.randint(1, 20), rng.randint(2, 12)
    body = "\n".join(f"{i}. {k * (m + i - 1)}" for i in range(1, n + 1))
    return Item(
        "multiples", f"List {n} multiples of {k}, starting from {k * m}.", body, {"k": k, "m": m, "n": n}
    )


def make_json(rng):
    w = _word(rng)
    answer = json.dumps({"first": w[0], "last": w[-1], "length": len(w)})
    return Item("json", f"Give the first letter, last letter and length of {w} as JSON.", answer, {"word": w})


def make_code_sum(rng):
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return Item("code_sum", f"Write a Python line that prints the sum of {a} and {b}.", f"print({a} + {b})",
                {"a": a, "b": b})  # fmt: skip


def make_sort(rng):
    xs = rng.sample(range(1, 99), rng.randint(3, 6))
    return Item("sort", f"Sort these numbers from smallest to largest: {', '.join(map(str, xs))}.",
                ", ".join(map(str, sorted(xs))), {"xs": xs})  # fmt: skip


def make_rotate(rng):
    w, k = _word(rng, 5, 8), rng.randint(1, 3)
    return Item(
        "rotate", f"Move the first {k} letters of {w} to the end.", w[k:] + w[:k], {"word": w, "k": k}
    )


def make_spell(rng):
    n = rng.randint(100, 9999)
    return Item("spell", f"Spell out each digit of {n} as a word.", " ".join(DIGIT_WORDS[int(d)] for d in str(n)),
                {"n": n})  # fmt: skip


def _break_line(line: str, rng: random.Random) -> str:
    """One error in `print(a + b)`: a typo in `print`, a lost parenthesis, or a doubled operator."""
    kind = rng.choice(["swap", "drop", "paren", "op"])
    if kind == "swap":
        i = rng.randint(0, 3)
        word = list("print")
        word[i], word[i + 1] = word[i + 1], word[i]
        return "".join(word) + line[5:]
    if kind == "drop":
        i = rng.randint(0, 4)
        return line[:i] + line[i + 1 :]
    if kind == "paren":
        return line[:-1] if rng.random() < 0.5 else line.replace("(", "", 1)
    return line.replace(" + ", " ++ ", 1)


def make_repair(rng):
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    good = f"print({a} + {b})"
    bad = _break_line(good, rng)
    return Item("repair", f"Fix the single error in this Python line: {bad}", good, {"bad": bad})


def make_swap_ends(rng):
    w = _word(rng, 5, 8)
    return Item("swap_ends", f"Swap the first and last letters of {w}.", w[-1] + w[1:-1] + w[0], {"word": w})


# Length-controllable: the prompt leaves the number of items open; the answer's length varies widely.
def make_some_multiples(rng):
    k, m, n = rng.randint(2, 19), rng.randint(1, 30), rng.randint(1, 16)
    body = ", ".join(str(k * i) for i in range(m, m + n))
    return Item("some_multiples", f"Count up in steps of {k}, starting from {k * m}.", body,
                {"k": k, "m": m, "n": n})  # fmt: skip


def check_some_multiples(item: Item, response: str) -> bool:
    """Any number of steps is right, as long as each one is."""
    k, m = item.params["k"], item.params["m"]
    parts = [p.strip() for p in response.strip().split(",")]
    return bool(parts) and all(p == str(k * (m + i)) for i, p in enumerate(parts))


# ------------------------------------------------------------------------------------------- sloppy answers
# Low-quality answers are systematically different, as real low-rated answers are (not random noise): they
# drop the last character, or answer in a careless lower-case chat style, or stop early.


def _sloppy_truncate(item: Item, rng: random.Random) -> str:
    return item.answer[:-1] if len(item.answer) > 1 else item.answer + item.answer


def _sloppy_chatty(item: Item, rng: random.Random) -> str:
    return "ok so " + item.answer.lower()


def _sloppy_list(item: Item, rng: random.Random) -> str:
    lines = item.answer.split("\n")
    return "\n".join(lines[: max(1, len(lines) - 1)]) + ("\n..." if len(lines) > 1 else "")


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("reverse", "Rewrite", "Culture", 0.22, make_reverse, _exact, _sloppy_truncate),
        Task("add", "Reasoning", "Math", 0.17, make_add, _exact, _sloppy_chatty),
        Task("code_sum", "CodeGeneration", "Code", 0.13, make_code_sum, _exact, _sloppy_truncate),
        Task("count", "QuestionAnswering", "Culture", 0.10, make_count, _exact, _sloppy_chatty),
        Task("multiples", "Reasoning", "Math", 0.08, make_multiples, _exact, _sloppy_list),
        Task(
            "some_multiples",
            "OpenEnded",
            "Math",
            0.07,
            make_some_multiples,
            check_some_multiples,
            _sloppy_chatty,
        ),
        Task("upper", "Rewrite", "Culture", 0.06, make_upper, _exact, _sloppy_chatty),
        Task("json", "InformationExtraction", "Technology", 0.05, make_json, _exact, _sloppy_truncate),
        # the long tail: each under 5% of the data
        Task("sort", "Reasoning", "Math", 0.04, make_sort, _exact, _sloppy_truncate),
        Task("rotate", "Rewrite", "Culture", 0.03, make_rotate, _exact, _sloppy_truncate),
        Task("spell", "Translation", "Culture", 0.02, make_spell, _exact, _sloppy_chatty),
        Task("swap_ends", "Rewrite", "Culture", 0.02, make_swap_ends, _exact, _sloppy_truncate),
        Task("repair", "CodeFix", "Code", 0.01, make_repair, _exact, _sloppy_truncate),
    ]
}

WORD_LIMIT = re.compile(r" Answer using (\d+) words or less\.$")


def word_count(text: str) -> int:
    return len(re.findall(r"[^\s,]+", text))
