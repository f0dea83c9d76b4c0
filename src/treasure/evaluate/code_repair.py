"""Code repair: HumanEvalFix (Python), the bug-fixing part of HumanEvalPack (OctoPack, arXiv 2308.07124).

Each of the 164 HumanEval problems comes with a buggy solution (one injected bug) and the problem's unit tests.
The model sees the buggy function and its tests (the "HumanEvalFixTests" setting of the paper, no docstring)
and is asked to fix it; the fixed function passes when the tests pass. pass@1 is the share of problems whose
one response passes.

The model's response is turned into a program the way the reference harness (bigcode-evaluation-harness,
`humanevalpack.py`) does it: its standard-library import preamble, the problem's declaration (helper
functions such as `encode_cyclic`, and imports), the fixed function, then the tests, which end with
`check(<entry_point>)`. The harness's `import numpy` is left out: the sandbox runs the standard library only,
and no problem needs numpy. Programs run in `treasure.evaluate.sandbox`.

`verify_harness` is the self-check: every canonical solution must pass and every buggy one must fail.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import textwrap
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from treasure.errors import RecordError
from treasure.evaluate.sandbox import SandboxResult, run_python

# Where the data set lives inside the shipped evaluation data (evaluate/data/SOURCES.md).
DATA_FILE = "code/humanevalpack_python.jsonl"

# The paper's instruction for HumanEvalFixTests ("instruct" prompt): the buggy code and its tests, then the
# instruction. The reference harness then appends the declaration for the model to continue; a chat model
# answers instead, so the prompt stops at the instruction and `extract_code` finds the function in the answer.
FIX_PROMPT_TEMPLATE = "{declaration}{buggy_solution}\n{test}\nFix bugs in {entry_point}."

# The reference harness's Python preamble (IMPORT_HELPER["python"]) without numpy.
IMPORT_PREAMBLE = "\n".join(
    [
        "import math",
        "import re",
        "import sys",
        "import copy",
        "import datetime",
        "import itertools",
        "import collections",
        "import heapq",
        "import statistics",
        "import functools",
        "import hashlib",
        "import string",
        "from typing import *",
        "from collections import *",
    ]
)

REQUIRED_FIELDS = ("task_id", "entry_point", "declaration", "buggy_solution", "canonical_solution", "test")
DEFAULT_TIMEOUT = 10.0  # seconds per program, as in the reference harness


@dataclass(frozen=True)
class FixProblem:
    """One HumanEvalFix problem (the fields the evaluation uses; the record's others are in `extra`)."""

    task_id: str
    entry_point: str
    declaration: str  # imports, helper functions and the signature of `entry_point`
    buggy_solution: str  # the body with the injected bug
    canonical_solution: str  # the correct body
    test: str  # `def check(candidate): ...` followed by `check(entry_point)`
    bug_type: str = ""
    extra: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class RepairScore:
    """pass@1 over a set of problems, with the outcome of every one."""

    pass_at_1: float
    passed: int
    total: int
    statuses: dict[str, str]  # task_id -> sandbox status ("missing" when there was no response)
    by_bug_type: dict[str, tuple[int, int]]  # bug type -> (passed, total)

    def to_dict(self) -> dict:
        return {
            "pass@1": self.pass_at_1,
            "passed": self.passed,
            "total": self.total,
            "status_counts": dict(Counter(self.statuses.values())),
            "by_bug_type": {k: {"passed": p, "total": n} for k, (p, n) in self.by_bug_type.items()},
            "statuses": self.statuses,
        }


@dataclass(frozen=True)
class HarnessCheck:
    """`verify_harness`: canonical solutions should all pass, buggy ones all fail."""

    total: int
    canonical_passed: int
    buggy_failed: int
    canonical_failures: dict[str, str]  # task_id -> status and the last line of stderr
    buggy_passes: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.canonical_passed == self.total and self.buggy_failed == self.total


def load_problems(path: str | os.PathLike) -> list[FixProblem]:
    """Read HumanEvalPack Python records (JSONL). A bad line raises RecordError naming file, line and field."""
    problems = []
    source = str(path)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"not JSON: {e.msg}", source=source, line=line_no) from None
            if not isinstance(raw, dict):
                raise RecordError("not a JSON object", source=source, line=line_no)
            for name in REQUIRED_FIELDS:
                if not isinstance(raw.get(name), str):
                    raise RecordError("missing or not a string", source=source, line=line_no, field=name)
            known = {*REQUIRED_FIELDS, "bug_type"}
            problems.append(
                FixProblem(
                    **{name: raw[name] for name in REQUIRED_FIELDS},
                    bug_type=str(raw.get("bug_type", "")),
                    extra={k: v for k, v in raw.items() if k not in known},
                )
            )
    return problems


def build_fix_prompt(problem: FixProblem, template: str = FIX_PROMPT_TEMPLATE) -> str:
    """The user prompt asking to fix `problem`'s buggy function, given its tests."""
    return template.format(
        declaration=problem.declaration,
        buggy_solution=problem.buggy_solution,
        test=problem.test,
        entry_point=problem.entry_point,
    ).strip()


_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_IMPORT_LINE = re.compile(r"^(import\s+[\w.]+|from\s+[\w.]+\s+import\s+\S)")
_CODE_START = re.compile(r"^(def |async def |class |@)")


def extract_code(response: str, problem: FixProblem) -> str:
    """The fixed function (and whatever it needs) from a model's response; "" when there is no code.

    Takes the last fenced block that defines `entry_point` (models often quote the buggy code first and give
    the fix last), else the largest fenced block, else the raw response. Prose around the code is cut off,
    and top-level statements that are not definitions (prints, example calls, asserts, `check(...)`, a
    `__main__` block) are dropped so they cannot fail or pass the program on their own. A bare function
    body (a completion-style answer) is put under the problem's declaration.
    """
    defines = re.compile(rf"^[ \t]*(async[ \t]+)?def[ \t]+{re.escape(problem.entry_point)}[ \t]*\(", re.M)
    blocks = [
        body for lang, body in _FENCE.findall(response) if lang.lower() in ("", "python", "py", "python3")
    ]
    with_def = [b for b in blocks if defines.search(b)]
    if with_def:
        text = with_def[-1]
    elif blocks:
        text = max(blocks, key=len)
    else:
        text = response
    text = textwrap.dedent(text.replace("\r\n", "\n")).strip("\n")
    if not text.strip():
        return ""
    if not defines.search(text):
        return _as_body(text, problem)
    return _keep_definitions(_parseable_code(text, problem.entry_point))


def check(problem: FixProblem, code: str, *, timeout: float = DEFAULT_TIMEOUT, **limits) -> SandboxResult:
    """Run `code` (a fixed `entry_point`) against the problem's tests in the sandbox.

    The program ends by printing a random token after the tests ran, and passes only if that token is the
    last line of its output, so code that exits early with status 0 (`sys.exit(0)` inside the function)
    cannot pass.
    """
    token = f"treasure-check-{secrets.token_hex(8)}"
    result = run_python(_program(problem, code, token), timeout=timeout, **limits)
    if result.passed and result.stdout.rstrip("\n").rsplit("\n", 1)[-1] != token:
        return _replace_status(result, "failed", "the program exited before the tests finished")
    return result


def pass_at_1(
    problems: Sequence[FixProblem],
    responses: Mapping[str, str] | Sequence[str],
    *,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> RepairScore:
    """pass@1 with one response per problem: a mapping task_id -> response, or a list aligned with `problems`.

    A problem without a response counts as failed ("missing").
    """
    if not isinstance(responses, Mapping):
        if len(responses) != len(problems):
            raise ValueError(f"{len(responses)} responses for {len(problems)} problems")
        responses = {p.task_id: r for p, r in zip(problems, responses, strict=True)}
    todo = [(p, extract_code(responses[p.task_id], p)) for p in problems if p.task_id in responses]
    results = dict(zip([p.task_id for p, _ in todo], _run_all(todo, workers, timeout), strict=True))
    statuses = {p.task_id: results[p.task_id].status if p.task_id in results else "missing" for p in problems}
    by_type: dict[str, list[int]] = {}
    for p in problems:
        tally = by_type.setdefault(p.bug_type or "unknown", [0, 0])
        tally[0] += statuses[p.task_id] == "passed"
        tally[1] += 1
    passed = sum(s == "passed" for s in statuses.values())
    return RepairScore(
        pass_at_1=passed / len(problems) if problems else 0.0,
        passed=passed,
        total=len(problems),
        statuses=statuses,
        by_bug_type={k: (v[0], v[1]) for k, v in sorted(by_type.items())},
    )


def verify_harness(
    problems: Sequence[FixProblem], *, workers: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> HarnessCheck:
    """Run every canonical solution (must pass) and every buggy one (must fail) through `check`."""
    started = time.monotonic()
    jobs = [(p, p.declaration + p.canonical_solution) for p in problems]
    jobs += [(p, p.declaration + p.buggy_solution) for p in problems]
    results = _run_all(jobs, workers, timeout)
    canonical, buggy = results[: len(problems)], results[len(problems) :]
    failures = {
        p.task_id: f"{r.status}: {(r.stderr.strip().splitlines() or [''])[-1]}"
        for p, r in zip(problems, canonical, strict=True)
        if not r.passed
    }
    return HarnessCheck(
        total=len(problems),
        canonical_passed=sum(r.passed for r in canonical),
        buggy_failed=sum(not r.passed for r in buggy),
        canonical_failures=failures,
        buggy_passes=[p.task_id for p, r in zip(problems, buggy, strict=True) if r.passed],
        seconds=time.monotonic() - started,
    )


def _run_all(
    jobs: Iterable[tuple[FixProblem, str]], workers: int | None, timeout: float
) -> list[SandboxResult]:
    # Threads suffice: each job waits on its own sandboxed process.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        return list(pool.map(lambda job: check(job[0], job[1], timeout=timeout), jobs))


def _program(problem: FixProblem, code: str, token: str) -> str:
    test = problem.test
    if not re.search(rf"^check\(\s*{re.escape(problem.entry_point)}\s*\)", test, re.M):
        test += f"\n\ncheck({problem.entry_point})\n"
    return "\n".join([IMPORT_PREAMBLE, _prelude(problem), code, "", test, f"print({token!r})", ""])


def _prelude(problem: FixProblem) -> str:
    """The declaration before the `def entry_point(` line: imports and helpers the tests may use."""
    match = re.search(rf"^def\s+{re.escape(problem.entry_point)}\s*\(", problem.declaration, re.M)
    return problem.declaration[: match.start()] if match else ""


def _as_body(text: str, problem: FixProblem) -> str:
    """A response without the function's `def`: the body that continues the declaration."""
    if not text[:1].isspace():
        text = textwrap.indent(text, "    ")
    return problem.declaration + text


def _parseable_code(text: str, entry_point: str) -> str:
    """The longest stretch of lines around the `def entry_point` that parses: prose before and after cut off."""
    lines = text.split("\n")
    def_line = next(
        i
        for i, line in enumerate(lines)
        if re.match(rf"\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", line)
    )
    start = def_line
    # Include the imports, decorators and helper definitions directly above, up to the first prose line.
    while start > 0 and (
        not lines[start - 1].strip()
        or lines[start - 1][:1].isspace()
        or _IMPORT_LINE.match(lines[start - 1])
        or _CODE_START.match(lines[start - 1])
        or lines[start - 1].lstrip().startswith("#")
    ):
        start -= 1
    # Code can only start or stop at a line that starts at column 0 (prose does too), so only those are tried.
    at_margin = [i for i, line in enumerate(lines) if line.strip() and not line[:1].isspace()] + [len(lines)]
    begins = [i for i in at_margin if start <= i < def_line] + [def_line]
    ends = [i for i in reversed(at_margin) if i > def_line]
    for begin in begins:
        for end in ends:
            candidate = "\n".join(lines[begin:end])
            try:
                ast.parse(candidate)
            except (SyntaxError, ValueError):
                continue
            return candidate
    return "\n".join(lines[def_line:])  # unparseable anyway: let the sandbox report the SyntaxError


_KEEP = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
)


def _keep_definitions(code: str) -> str:
    """Only the top-level imports, definitions and assignments of `code` (never a `def check`)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    lines = code.split("\n")
    kept = []
    for node in tree.body:
        if isinstance(node, ast.Try) or (isinstance(node, ast.If) and not _is_main_guard(node)):
            keep = True  # e.g. `try: from typing import List` or a conditional definition
        else:
            keep = isinstance(node, _KEEP) and getattr(node, "name", None) != "check"
        if keep:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(kept) + "\n" if kept else ""


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _replace_status(result: SandboxResult, status: str, why: str) -> SandboxResult:
    return replace(result, status=status, stderr=f"{result.stderr}\n[treasure] {why}".lstrip("\n"))
