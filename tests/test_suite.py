"""The long-tail suite, `treasure demo --quick` and `treasure sweep`, run as a user runs them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest

from treasure.errors import ConfigError
from treasure.suite.build import SuiteConfig, build_suite, check
from treasure.suite.experiment import ExperimentConfig, Paths, run_experiment
from treasure.suite.score import task_shares, tokens_per_word
from treasure.suite.sweep import expand, load_sweep, parse_grid
from treasure.suite.tasks import TASKS


def treasure(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "treasure.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the suite


def test_suite_long_tail_and_no_test_leak():
    train, test = build_suite(SuiteConfig(n_train=4000, n_test_per_task=20, seed=3))
    shares = Counter(r["meta"]["suite_task"] for r in train)
    assert set(shares) == set(TASKS)
    rare = [t for t, n in shares.items() if n / len(train) < 0.05]
    assert {"repair", "spell", "swap_ends"} <= set(rare)
    assert shares.most_common(1)[0][1] / len(train) > 0.15
    assert not {r["messages"][0]["content"] for r in train} & {t["prompt"] for t in test}
    assert Counter(t["task"] for t in test) == dict.fromkeys(TASKS, 20)
    # every reference answer passes its checker; the sloppy training answers fail it
    assert all(check(t, t["answer"]) for t in test)
    sloppy = [r for r in train if r["meta"]["sloppy"]]
    assert 0.1 < len(sloppy) / len(train) < 0.35
    ratings = [r["meta"]["rating"] for r in sloppy]
    assert max(ratings) < min(r["meta"]["rating"] for r in train if not r["meta"]["sloppy"])
    # word limits appear in training prompts and in half of the some_multiples test prompts
    limited = [t for t in test if "word_limit" in t["params"]]
    assert len(limited) == 10 and all(t["task"] == "some_multiples" for t in limited)


def test_test_sets_are_prefixes_and_never_trained_on():
    small = build_suite(SuiteConfig(n_train=50, n_test_per_task=4, seed=0))[1]
    large = build_suite(SuiteConfig(n_train=50, n_test_per_task=9, seed=0))[1]
    assert all(t in large for t in small)
    base, _ = build_suite(SuiteConfig(n_train=3000, n_test_per_task=1, seed=0), stream="base")
    full = build_suite(SuiteConfig(n_train=1, n_test_per_task=200, seed=0))[1]
    assert not {r["messages"][0]["content"] for r in base} & {t["prompt"] for t in full}
    assert base[0]["id"].startswith("suite-base-")


def test_base_insertions_carry_no_information():
    from treasure.suite.experiment import insert_noise

    recs = build_suite(SuiteConfig(n_train=400, n_test_per_task=1, seed=0), stream="base")[0]
    noisy = insert_noise(recs, 12, 0)
    assert noisy == insert_noise(recs, 12, 0) and len(noisy) == len(recs)
    changed_q = changed_a = 0
    for r, n in zip(recs, noisy, strict=True):
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        nq, na = n["messages"][0]["content"], n["messages"][1]["content"]
        assert nq.startswith(q) and na.endswith(a) and n["meta"] == r["meta"]
        extra_q, extra_a = nq[len(q) :], na[: len(na) - len(a)]
        assert extra_q in ("",) or (
            extra_q[0] == " " and 1 <= len(extra_q.strip()) <= 12 and extra_q[1:].isalpha()
        )
        assert extra_a in ("",) or (extra_a.endswith("\n") and 1 <= len(extra_a) - 1 <= 12)
        changed_q += bool(extra_q)
        changed_a += bool(extra_a)
    assert 150 < changed_q < 250 and 150 < changed_a < 250


def test_suite_is_deterministic():
    a = build_suite(SuiteConfig(n_train=300, n_test_per_task=5, seed=1))
    b = build_suite(SuiteConfig(n_train=300, n_test_per_task=5, seed=1))
    assert a == b
    assert a != build_suite(SuiteConfig(n_train=300, n_test_per_task=5, seed=2))


def test_score_helpers():
    recs = [{"meta": {"suite_task": "add"}}] * 3 + [{"meta": {"suite_task": "repair"}}]
    assert task_shares(recs) == {"add": 0.75, "repair": 0.25}
    recs = [
        {
            "meta": {"suite_task": "some_multiples"},
            "markers": {"length_tokens": 8},
            "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "4, 8, 12, 16"}],
        }
    ]
    assert tokens_per_word(recs) == 2.0


# ------------------------------------------------------------------------------------------- experiment config


def test_experiment_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="stepz: unknown key"):
        ExperimentConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="steps: must be positive"):
        ExperimentConfig(steps=0)
    with pytest.raises(ConfigError, match="n_base and base_steps"):
        ExperimentConfig(base="train", n_base=0)
    with pytest.raises(ConfigError, match="base: 'pretrained' is not one of"):
        ExperimentConfig(base="pretrained")
    with pytest.raises(ConfigError, match="suite_seed: the bundled base"):
        ExperimentConfig(suite_seed=1)
    (tmp_path / "experiment.json").write_text(json.dumps(ExperimentConfig(steps=5).to_dict()))
    with pytest.raises(ConfigError, match=r"other settings \(steps\)"):
        run_experiment(ExperimentConfig(steps=6), tmp_path)


def test_shared_paths_follow_dependencies(tmp_path):
    a = Paths(tmp_path / "a", ExperimentConfig(placement="both"), tmp_path / "shared")
    b = Paths(tmp_path / "b", ExperimentConfig(placement="completion"), tmp_path / "shared")
    c = Paths(tmp_path / "c", ExperimentConfig(steps=7), tmp_path / "shared")
    assert a.run("baseline", 0) == b.run("baseline", 0) != c.run("baseline", 0)  # the recipe does not matter
    assert a.run("markers", 0) != b.run("markers", 0)
    assert a.base == b.base == c.base and a.data == c.data


# ------------------------------------------------------------------------------------------------ sweep


def test_grid_parsing_and_expansion(tmp_path):
    assert parse_grid(["steps=10,20", "categories=task+domain,task"]) == {
        "steps": [10, 20], "categories": [("task", "domain"), "task"]}  # fmt: skip
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_grid(["steps"])
    cfg = tmp_path / "s.yaml"
    cfg.write_text("steps: 5\nseeds: [0, 1]\ngrid:\n  format: [paper, compact]\n")
    base, grid = load_sweep(cfg, ["dataset_dropout=0,0.5"])
    points = expand(base, grid)
    assert [p.name for p in points] == [
        "format=paper,dataset_dropout=0",
        "format=paper,dataset_dropout=0.5",
        "format=compact,dataset_dropout=0",
        "format=compact,dataset_dropout=0.5",
    ]
    assert points[1].config.dataset_dropout == 0.5 and points[1].config.seeds == (0, 1)
    cfg.write_text("steps: 5\ngrid:\n  stepz: [1, 2]\n")
    with pytest.raises(ConfigError, match="grid.stepz: unknown setting"):
        load_sweep(cfg)
    cfg.write_text("stepz: 5\n")
    with pytest.raises(ConfigError, match="stepz: unknown key"):
        load_sweep(cfg)
    cfg.write_text("grid: [1, 2]\n")
    with pytest.raises(ConfigError, match="grid: expected a mapping"):
        load_sweep(cfg)


def test_sweep_cli_errors_are_one_line(tmp_path):
    out = treasure("sweep", tmp_path / "missing.yaml")
    assert out.returncode == 2 and "missing.yaml: cannot read" in out.stderr and "Traceback" not in out.stderr
    cfg = tmp_path / "s.yaml"
    cfg.write_text("steps: 5\n")
    out = treasure("sweep", cfg, "--grid", "format=paper,compact", "--dry-run")
    assert out.returncode == 0 and "2 points x 3 seeds" in out.stdout and "format=paper" in out.stdout


# ------------------------------------------------------------------------------------------------ end to end

QUICK_SECTIONS = ("## Summary", "## Per task", "## Marker inference", "## Compute per arm")


def _sane(cell):
    return cell["mean"] is None or 0.0 <= cell["mean"] <= 1.0


def test_demo_quick_end_to_end(tmp_path):
    """`treasure demo --quick` from nothing to a report with every section; a second run resumes (no training)."""
    out = tmp_path / "demo"
    run = treasure("demo", "--suite", "--quick", "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| comparison | baseline | markers, inferred" in run.stdout and "report:" in run.stdout
    assert "Traceback" not in run.stderr
    md = (out / "report.md").read_text()
    for section in QUICK_SECTIONS:
        assert section in md
    assert (out / "report.png").stat().st_size > 10_000
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    for key in ("overall", "head", "tail", "repair"):
        for col in ("baseline", "inferred", "fixed"):
            assert _sane(s["rows"][key][col]) and s["rows"][key][col]["mean"] is not None
    for col in ("baseline", "inferred", "fixed"):
        assert _sane(s["rows"]["length"][col]) and s["rows"]["length"][col]["mean"] is not None
    for col in ("baseline", "inferred", "quality_1", "quality_4"):
        assert _sane(s["rows"]["quality"][col]) and s["rows"]["quality"][col]["mean"] is not None
    assert {"task", "domain", "format"} <= set(
        s["markers"]
    )  # test items carry no rating, so no quality_bucket
    assert all(_sane(m) for m in s["markers"].values() if m["metric"] == "accuracy")
    assert s["head"] and s["tail"] and "repair" in s["tail"]
    # both arms trained the same steps on the same records; the marker arm read more tokens (its blocks)
    runs = report["result"]["runs"]
    base, mark = runs["baseline"]["0"]["train"], runs["markers"]["0"]["train"]
    assert base["steps"] == mark["steps"] == 30 and base["records"] == mark["records"] == 600
    assert mark["num_tokens"] > base["num_tokens"] > 0
    # the markers arm wrote a block in mode inferred, and the gold markers came from the annotate pipeline
    test_recs = [json.loads(line) for line in (out / "data" / "test.annotated.jsonl").open()]
    assert all("task" in r["markers"] and "length_tokens" in r["markers"] for r in test_recs)
    trained = {p: p.stat().st_mtime for p in (out / "runs").glob("*/model.safetensors")}
    again = treasure("demo", "--suite", "--quick", "--out", out)
    assert again.returncode == 0 and {p: p.stat().st_mtime for p in trained} == trained
    assert again.stdout.split("\n\n")[-2] == run.stdout.split("\n\n")[-2]  # the same table
    # another setting in the same folder is refused, in one line
    other = treasure("demo", "--suite", "--quick", "--steps", "31", "--out", out)
    assert (
        other.returncode == 2 and "other settings (steps)" in other.stderr and "Traceback" not in other.stderr
    )


def test_sweep_shares_baselines(tmp_path):
    """Two points that differ only in the marker recipe train one baseline between them."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text("n_train: 300\nbase: none\nn_test_per_task: 3\nsteps: 6\nseeds: [0]\n"
                   "hidden_size: 32\nnum_hidden_layers: 1\nbatch_size: 8\n"
                   "grid:\n  placement: [both, completion]\n")  # fmt: skip
    out = tmp_path / "sw"
    run = treasure("sweep", cfg, "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list((out / "shared").glob("baseline-s0-*"))) == 1
    assert len(list((out / "shared").glob("markers-s0-*/model.safetensors"))) == 2
    rows = json.loads((out / "sweep.json").read_text())["points"]
    assert [r["name"] for r in rows] == ["placement=both", "placement=completion"]
    # completion-only markers: the prompt takes none, so the fixed modes are absent, not made up
    comp = rows[1]["summary"]["rows"]
    assert comp["overall"]["fixed"]["mean"] is None and comp["overall"]["inferred"]["mean"] is not None
    assert math.isfinite(rows[0]["summary"]["rows"]["overall"]["delta_inferred"]["mean"])
    assert (out / "sweep.png").stat().st_size > 10_000 and "| placement=both |" in (
        out / "sweep.md"
    ).read_text()
