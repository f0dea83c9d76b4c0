"""Pairwise judging: the win rate of model A over model B by any OpenAI-compatible judge endpoint.

Every question is judged twice, once with A's answer first and once with B's first, so the judge's position
bias cancels. The judge ends its reply with `[[A]]`, `[[B]]` or `[[C]]` (a tie; MT-Bench's pairwise format,
prompt in `prompts/judge.txt`). Per question, A scores 1 for a win, 0.5 for a tie and 0 for a loss, averaged
over the orders that gave a verdict; a reply without a clear verdict, and a request that failed, are counted
and reported, and the question is scored from the other order (or left out when neither gave one). The win
rate is the mean score, with a percentile bootstrap confidence interval over questions.

    judge = OpenAIJudge(base_url="http://127.0.0.1:8000/v1", model="gpt-4o")
    result = pairwise(questions, answers_a, answers_b, judge)
    result.summary()   # {"win_rate", "ci_low", "ci_high", "wins", "ties", "losses", "unparsed", "errors", ...}
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

PROMPT_FILE = "judge.txt"
_VERDICT = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I)
SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}


def judge_prompt() -> str:
    """The judge prompt template shipped with the package ({question}, {answer_a}, {answer_b})."""
    return resources.files("treasure.evaluate").joinpath("prompts", PROMPT_FILE).read_text(encoding="utf-8")


def parse_verdict(reply: str | None) -> str | None:
    """ "A", "B" or "tie" from a judge reply; None when it names no verdict or contradicting ones."""
    found = {m.upper() if m.lower() != "tie" else "C" for m in _VERDICT.findall(reply or "")}
    if len(found) != 1:
        return None
    v = found.pop()
    return "tie" if v == "C" else v


def combine(first: str | None, swapped: str | None) -> float | None:
    """A's score from the verdict with A shown first and the verdict with B shown first (None: no verdict)."""
    scores = []
    if first is not None:
        scores.append(SCORE[first])
    if swapped is not None:
        scores.append(1.0 - SCORE[swapped])  # in the swapped order "A" is model B
    return sum(scores) / len(scores) if scores else None


def bootstrap_ci(scores: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval of the mean of `scores` ((None, None) when empty)."""
    if not scores:
        return None, None
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * (n_boot - 1))]
    hi = means[int((1 + level) / 2 * (n_boot - 1))]
    return lo, hi


@dataclass
class JudgeResult:
    """Verdicts per question in both orders, A's scores, and what went wrong."""

    ids: list[str]
    verdicts: list[tuple[str | None, str | None]]  # (A first, B first)
    scores: list[float | None]
    unparsed: int = 0  # replies without a clear verdict
    errors: int = 0  # requests that failed
    error_messages: list[str] = field(default_factory=list)
    n_boot: int = 2000
    seed: int = 0

    def summary(self) -> dict[str, Any]:
        valid = [s for s in self.scores if s is not None]
        lo, hi = bootstrap_ci(valid, n_boot=self.n_boot, seed=self.seed)
        shown = [v for pair in self.verdicts for v in pair if v in ("A", "B")]
        return {
            "n": len(self.scores),
            "judged": len(valid),
            "win_rate": sum(valid) / len(valid) if valid else None,
            "ci_low": lo,
            "ci_high": hi,
            "wins": sum(s > 0.5 for s in valid),
            "ties": sum(s == 0.5 for s in valid),
            "losses": sum(s < 0.5 for s in valid),
            "unparsed": self.unparsed,
            "errors": self.errors,
            "error_examples": self.error_messages[:3],
            # How often the judge picked the answer shown first: 0.5 means no position bias.
            "first_position_rate": shown.count("A") / len(shown) if shown else None,
        }


def pairwise(
    questions: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    judge: Callable[[str], str],
    *,
    ids: Sequence[str] | None = None,
    template: str | None = None,
    workers: int = 4,
    n_boot: int = 2000,
    seed: int = 0,
) -> JudgeResult:
    """Judge every question in both orders with `judge` (prompt text -> reply text). Never raises for a reply."""
    if not len(questions) == len(answers_a) == len(answers_b):
        raise ValueError(
            f"{len(questions)} questions, {len(answers_a)} A answers, {len(answers_b)} B answers"
        )
    template = template or judge_prompt()
    prompts = []
    for q, a, b in zip(questions, answers_a, answers_b, strict=True):
        prompts.append(template.format(question=q, answer_a=a, answer_b=b))
        prompts.append(template.format(question=q, answer_a=b, answer_b=a))
    errors: list[str] = []

    def ask(prompt: str) -> str | None:
        try:
            return judge(prompt)
        except Exception as e:  # a failed request is a counted outcome, not the end of the run
            errors.append(f"{type(e).__name__}: {e}"[:200])
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        replies = list(pool.map(ask, prompts))
    verdicts = [parse_verdict(r) for r in replies]
    unparsed = sum(r is not None and v is None for r, v in zip(replies, verdicts, strict=True))
    pairs = [(verdicts[2 * i], verdicts[2 * i + 1]) for i in range(len(questions))]
    return JudgeResult(
        ids=list(ids) if ids is not None else [str(i) for i in range(len(questions))],
        verdicts=pairs,
        scores=[combine(a, b) for a, b in pairs],
        unparsed=unparsed,
        errors=len(errors),
        error_messages=errors,
        n_boot=n_boot,
        seed=seed,
    )


class OpenAIJudge:
    """A judge callable over any OpenAI-compatible chat-completions endpoint (temperature 0)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 1024,
    ):
        import os

        from openai import OpenAI

        key = (
            api_key or os.environ.get("TREASURE_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        )
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.model = model
        self.max_tokens = max_tokens

    def __call__(self, prompt: str) -> str:
        reply = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        return reply.choices[0].message.content or ""
