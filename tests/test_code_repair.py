"""HumanEvalFix: loading, the prompt, pulling code out of responses, and the harness that checks it."""

import json
import time

import pytest

from treasure.errors import RecordError
from treasure.evaluate.code_repair import (
    DATA_FILE,
    build_fix_prompt,
    check,
    extract_code,
    load_problems,
    pass_at_1,
    verify_harness,
)

# A mix that exercises the program assembly: a plain function (0), helpers in the declaration used by the
# function or the tests (32, 38, 50) and an import inside the declared function (115). (Python/10 is left out:
# its buggy solution loops until the timeout.)
FAST_IDS = ["Python/0", "Python/32", "Python/38", "Python/50", "Python/115"]


@pytest.fixture(scope="module")
def problems(shared_data):
    path = shared_data / DATA_FILE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return load_problems(path)


@pytest.fixture(scope="module")
def few(problems):
    by_id = {p.task_id: p for p in problems}
    return [by_id[i] for i in FAST_IDS]


def test_load_problems(problems):
    assert len(problems) == 164 and len({p.task_id for p in problems}) == 164
    p = problems[0]
    assert p.task_id == "Python/0" and p.entry_point == "has_close_elements"
    assert p.declaration.rstrip().endswith(":") and "def check(" in p.test and p.bug_type == "missing logic"
    assert "docstring" in p.extra and "canonical_solution" not in p.extra


def test_load_problems_names_the_bad_line(tmp_path):
    good = {k: "x" for k in ("task_id", "entry_point", "declaration", "buggy_solution", "canonical_solution")}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**good, "test": "t"}) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(RecordError) as e:
        load_problems(path)
    assert str(e.value) == f"{path}:2: test: missing or not a string"
    path.write_text("{oops\n")
    with pytest.raises(RecordError, match=r":1: not JSON"):
        load_problems(path)


def test_prompt_shows_the_buggy_function_and_tests_and_asks_for_a_fix(problems):
    p = problems[0]
    prompt = build_fix_prompt(p)
    assert prompt.startswith("from typing import List")
    assert p.buggy_solution.strip() in prompt and p.canonical_solution.strip() not in prompt
    assert "def check(has_close_elements):" in prompt
    assert prompt.endswith("check(has_close_elements)\nFix bugs in has_close_elements.")
    assert '"""' not in prompt  # the tests variant: no docstring


def fixed(p):
    return p.declaration + p.canonical_solution


def test_extract_from_fenced_block_with_prose(problems):
    p = problems[0]
    response = f"The bug is the missing abs().\n\n```python\n{fixed(p)}```\n\nThis now passes all the tests."
    code = extract_code(response, p)
    assert code.startswith("from typing import List") and "abs(elem - elem2)" in code
    assert "passes" not in code


def test_extract_takes_the_last_block_that_defines_the_function(problems):
    p = problems[0]
    response = (
        f"Your code:\n```python\n{p.declaration + p.buggy_solution}```\nFixed:\n```python\n{fixed(p)}```\n"
        "Usage:\n```python\nprint(has_close_elements([1.0], 0.5))\n```"
    )
    assert "abs(elem - elem2)" in extract_code(response, p)


def test_extract_from_raw_text_cuts_prose(problems):
    p = problems[0]
    response = f"Sure! Here is the fix:\n\n{fixed(p)}\nExplanation: distance must be absolute.\n"
    code = extract_code(response, p)
    assert code.startswith("from typing import List") and "Explanation" not in code


def test_extract_drops_calls_asserts_and_main_blocks(problems):
    p = problems[0]
    response = (
        f"```python\n{fixed(p)}\n\nprint(has_close_elements([1.0, 2.0], 0.5))\nassert False\n"
        "def check(f):\n    assert False\n\ncheck(has_close_elements)\n"
        "if __name__ == '__main__':\n    raise SystemExit(1)\n```"
    )
    code = extract_code(response, p)
    assert "print(" not in code and "assert False" not in code and "__main__" not in code
    assert check(p, code, timeout=5).passed


def test_extract_bare_body_and_unterminated_fence(problems):
    p = problems[0]
    assert extract_code(p.canonical_solution, p) == (p.declaration + p.canonical_solution).rstrip("\n")
    code = extract_code("```python\n" + fixed(p), p)  # a generation cut off before the closing fence
    assert "abs(elem - elem2)" in code
    assert extract_code("I cannot help with that.", p).startswith(p.declaration)
    assert extract_code("", p) == ""


def test_check_canonical_passes_and_buggy_fails(few):
    for p in few:
        good = check(p, fixed(p), timeout=5)
        assert good.passed, (p.task_id, good.stderr)
        bad = check(p, p.declaration + p.buggy_solution, timeout=5)
        assert not bad.passed, p.task_id


def test_check_needs_the_tests_to_finish(problems):
    p = problems[0]
    cheat = f"import os\ndef {p.entry_point}(numbers, threshold):\n    os._exit(0)\n"
    result = check(p, cheat, timeout=5)
    assert result.status == "failed" and "exited before the tests finished" in result.stderr


def test_pass_at_1(few):
    responses = {p.task_id: f"```python\n{fixed(p)}```" for p in few[:3]}
    responses[few[3].task_id] = f"```python\n{few[3].declaration + few[3].buggy_solution}```"
    score = pass_at_1(few, responses, timeout=5)  # few[4] has no response
    assert (score.passed, score.total, score.pass_at_1) == (3, 5, 0.6)
    assert score.statuses[few[4].task_id] == "missing" and score.statuses[few[3].task_id] == "failed"
    assert sum(n for _, n in score.by_bug_type.values()) == 5
    assert score.to_dict()["status_counts"] == {"passed": 3, "failed": 1, "missing": 1}
    as_list = pass_at_1(few[:2], [f"```python\n{fixed(p)}```" for p in few[:2]], timeout=5)
    assert as_list.pass_at_1 == 1.0


def test_verify_harness_on_a_few(few):
    result = verify_harness(few, timeout=5)
    assert result.ok and result.canonical_passed == result.buggy_failed == len(few)


@pytest.mark.slow
def test_verify_harness_all_164(problems):
    started = time.monotonic()
    result = verify_harness(problems)
    print(
        f"\nHumanEvalFix harness: {result.canonical_passed}/{result.total} canonical pass, "
        f"{result.buggy_failed}/{result.total} buggy fail, {time.monotonic() - started:.1f} s"
    )
    assert result.canonical_failures == {} and result.buggy_passes == []
    assert result.ok
