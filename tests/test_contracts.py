"""The contracts between stages: the suite's marker-inference scores, checked against a golden taken before the
suite and `treasure eval` shared one marker-accuracy implementation (tests/golden/suite_marker_accuracy.json).

`TREASURE_WRITE_GOLDEN=1 pytest tests/test_contracts.py` rewrites the golden file from the code as it is.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("TREASURE_WRITE_GOLDEN") == "1"


def _suite_case(paper):
    """Test records with gold markers and generations with inferred ones: some right, some wrong, some missing."""
    tax = paper.subset(["domain", "task", "format", "length_bucket", "length_tokens", "quality"])
    rng = random.Random(3)
    records, gens = [], []
    for i in range(40):
        gold, inferred = {}, {}
        for cat in tax:
            if cat.numeric:
                value = rng.randint(1, 300) if cat.kind == "int" else round(rng.random(), 2)
                guess = value + rng.choice([0, 1, -3, 20]) if cat.kind == "int" else round(rng.random(), 2)
            else:
                value = rng.choice(cat.values[:4])
                guess = value if rng.random() < 0.6 else rng.choice(cat.values[:5])
            if rng.random() < 0.9:
                gold[cat.name] = value
            if rng.random() < 0.85:
                inferred[cat.name] = guess
        records.append({"id": i, "markers": gold})
        gens.append(SimpleNamespace(inferred=inferred))
    return records, gens, SimpleNamespace(marker_taxonomy=tax)


def test_suite_marker_accuracy_is_as_before(paper):
    from treasure.suite.score import marker_accuracy

    now = marker_accuracy(*_suite_case(paper))
    path = GOLDEN / "suite_marker_accuracy.json"
    if WRITE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    assert json.loads(json.dumps(now)) == json.loads(path.read_text(encoding="utf-8"))


def test_the_evaluation_prompt_sets_ship_with_the_package():
    """`treasure eval` control and code read their data from the installed package, not from ../shared/data; every
    shipped file is listed in its SOURCES.md with the sha256 it has."""
    import hashlib

    import treasure
    from treasure.evaluate import code_repair, control
    from treasure.evaluate.run import EvalOptions

    package = Path(treasure.__file__).parent
    assert control.DATA_DIR.is_relative_to(package) and EvalOptions().data_dir == control.DATA_DIR
    prompts = control.load_prompts()
    assert len({pid.split(":")[0] for pid, _ in prompts}) == len(control.PROMPT_FILES) and len(prompts) > 500
    assert len(code_repair.load_problems(control.DATA_DIR / code_repair.DATA_FILE)) == 164
    sources = (control.DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    shipped = sorted(p for p in control.DATA_DIR.rglob("*.jsonl"))
    assert len(shipped) == len(control.PROMPT_FILES) + 1
    for path in shipped:
        row = next(
            line
            for line in sources.splitlines()
            if line.startswith(f"| {path.relative_to(control.DATA_DIR)} |")
        )
        assert hashlib.sha256(path.read_bytes()).hexdigest() in row, path
    pyproject = (package.parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    for pattern in ("evaluate/data/*.md", "evaluate/data/prompts/*.jsonl", "evaluate/data/code/*.jsonl"):
        assert f'"{pattern}"' in pyproject
