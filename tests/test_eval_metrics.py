"""The evaluation metrics as pure functions, on hand-made generations (fast, no model)."""

from __future__ import annotations

import json

import pytest

from treasure.errors import TreasureError
from treasure.evaluate import control as ctl
from treasure.evaluate import slices as sl
from treasure.evaluate.judge import bootstrap_ci, combine, judge_prompt, pairwise, parse_verdict
from treasure.evaluate.marker_accuracy import NONE_LABEL, category_scores, example_scores, marker_accuracy
from treasure.evaluate.report import to_markdown, write_report
from treasure.evaluate.run import RunSpec, exact_match, token_f1

# ------------------------------------------------------------------------------------------ marker accuracy


def test_category_scores_by_hand():
    gold = ["Code", "Code", "Math", "Math", "Legal"]
    pred = ["Code", "Math", "Math", None, "Legal"]
    s = category_scores(gold, pred)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["missing"] == 1
    assert s["labels"] == ["Code", "Legal", "Math", NONE_LABEL]
    # rows: annotation, columns: prediction
    assert s["confusion"] == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    # F1: Code 2*1/(2+0+1)=2/3, Legal 1, Math 2*1/(2+1+1)=1/2
    assert s["per_label_f1"] == pytest.approx({"Code": 2 / 3, "Legal": 1.0, "Math": 0.5})
    assert s["macro_f1"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_marker_accuracy_skips_unannotated_examples_and_counts_missing_as_wrong():
    gold = [{"domain": "Code", "task": "CodeFix"}, {"domain": "Math"}]
    pred = [{"domain": "Code"}, {"domain": "Math", "task": "Reasoning"}]
    out = marker_accuracy(gold, pred, ["domain", "task", "language"])
    assert set(out) == {"domain", "task"}
    assert out["domain"]["accuracy"] == 1.0 and out["domain"]["macro_f1"] == 1.0
    assert out["task"]["n"] == 1 and out["task"]["accuracy"] == 0.0 and out["task"]["missing"] == 1
    assert example_scores(gold[0], pred[0], ["domain", "task"]) == 0.5
    assert example_scores({}, {}, ["domain"]) is None


# -------------------------------------------------------------------------------------------------- control


def test_length_items_and_scores():
    assert ctl.length_markers(30) == {"length_tokens": 40, "length_bucket": "concise"}
    assert ctl.length_markers(400)["length_bucket"] == "medium"
    items = ctl.build_items(
        [("p1", "Tell me about owls."), ("p2", "Why is the sky blue?")], 2, kinds=["length"]
    )
    item = items[0]
    assert item.instructed.startswith(
        f"Answer the following instruction using {item.target} words or less.\n\n"
    )
    assert item.prompt in item.instructed
    ok = ctl.score_item(item, "word " * item.target, n_tokens=10)
    too_long = ctl.score_item(item, "word " * (item.target + 1), n_tokens=900)
    assert ok == {
        "words": item.target,
        "limit": item.target,
        "violation": False,
        "tokens": 10,
        "bucket_hit": True,
    }
    assert too_long["violation"] and not too_long["bucket_hit"]
    summary = ctl.summarize([item, item], [ok, too_long])["length"]
    assert summary["violation_rate"] == 0.5 and summary["bucket_hit_rate"] == 0.5


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("JSON", '{"name": "owl", "legs": 2}', "{name: owl"),
        ("Tabular", "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |", "a and b are 1 and 2"),
        ("Enumeration", "1. eggs\n2. milk\n3. bread", "Buy eggs, milk and bread."),
    ],
)
def test_format_compliance_uses_the_detectors(fmt, good, bad):
    item = ctl.ControlItem("x", "format", fmt, "List groceries.", {"format": fmt})
    assert ctl.score_item(item, good) == {"ok": True}
    assert ctl.score_item(item, bad) == {"ok": False}
    assert fmt in item.instructed or ctl.FORMAT_INSTRUCTIONS[fmt] in item.instructed


def test_language_compliance():
    item = ctl.ControlItem("x", "language", "French", "Describe Paris.", {"language": "French"})
    fr = "Paris est la capitale de la France et une ville magnifique avec beaucoup de musées et de cafés."
    en = "Paris is the capital of France and a beautiful city with many museums and cafes to visit."
    assert ctl.score_item(item, fr)["ok"] and not ctl.score_item(item, en)["ok"]
    s = ctl.summarize([item, item], [{"ok": True}, {"ok": False}])
    assert s["language"]["compliance_rate"] == 0.5 and s["language"]["by_target"]["French"]["n"] == 2


def test_control_prompts_come_from_the_shared_sets(shared_data):
    prompts = ctl.load_prompts(shared_data)
    assert len(prompts) > 100 and all(len(p) <= 400 for _, p in prompts)
    items = ctl.build_items(prompts, 6, seed=1)
    assert [i.kind for i in items].count("format") == 6
    assert {i.target for i in items if i.kind == "format"} == set(ctl.FORMAT_INSTRUCTIONS)
    assert items == ctl.build_items(prompts, 6, seed=1)  # seeded


# --------------------------------------------------------------------------------------------------- slices

STATS = {
    "n": 100,
    "tail_share": 0.05,
    "categories": {
        "domain": {"kind": "categorical", "values": {"Code": {"count": 96, "share": 0.96, "tail": False},
                                                     "Legal": {"count": 4, "share": 0.04, "tail": True}}},
        "task": {"kind": "categorical", "values": {"CodeFix": {"count": 100, "share": 1.0, "tail": False}}},
        "length_tokens": {"kind": "int", "count": 100},
    },
}  # fmt: skip


def test_example_slice_head_tail_and_unseen_values():
    assert sl.categorical(STATS) == ["domain", "task"]
    assert sl.example_slice({"domain": "Code", "task": "CodeFix"}, STATS) == "head"
    assert sl.example_slice({"domain": "Legal", "task": "CodeFix"}, STATS) == "tail"
    assert sl.example_slice({"domain": "Code", "task": "Poetry"}, STATS) == "tail"  # never seen: tail
    assert sl.example_slice({"domain": "Code", "task": "Poetry"}, STATS, ["domain"]) == "head"


def test_split_metric_and_tail_lift():
    slices = ["head", "tail", "tail", "head"]
    a = sl.split_metric([1.0, 1.0, 0.0, None], slices)
    b = sl.split_metric([1.0, 0.0, 0.0, 0.0], slices)
    assert a == {"all": {"n": 3, "mean": 2 / 3}, "head": {"n": 1, "mean": 1.0}, "tail": {"n": 2, "mean": 0.5}}
    assert sl.tail_lift(a, b) == pytest.approx(0.5)
    assert sl.tail_lift(a, sl.split_metric([1.0], ["head"])) is None
    assert (
        sl.per_value([1.0, 0.0], [{"domain": "Code"}, {"domain": "Legal"}], "domain")["Legal"]["mean"] == 0.0
    )


def test_parse_slice():
    legal, code = {"domain": "Legal", "task": "CodeFix"}, {"domain": "Code", "task": "CodeFix"}
    assert sl.parse_slice("tail")(legal, STATS) and not sl.parse_slice("tail")(code, STATS)
    assert sl.parse_slice("domain=tail")(legal, STATS) and sl.parse_slice("domain=head")(code, STATS)
    assert sl.parse_slice("domain=Legal|Medical")(legal, STATS)
    assert not sl.parse_slice("domain=Legal, task=tail")(legal, STATS)
    assert sl.parse_slice(None)(code, STATS)
    with pytest.raises(TreasureError, match="slice"):
        sl.parse_slice("rare")


# ---------------------------------------------------------------------------------------------------- judge


def test_parse_verdict_and_combine():
    assert parse_verdict("A is clearer. [[A]]") == "A"
    assert parse_verdict("[[ b ]]") == "B"
    assert parse_verdict("Equal. [[C]]") == "tie"
    assert parse_verdict("I pick [[A]]... no, [[B]]") is None
    assert parse_verdict("banana") is None and parse_verdict(None) is None
    assert combine("A", "B") == 1.0  # A wins in both orders (B first, "B" is model A)
    assert combine("A", "A") == 0.5  # position bias cancels
    assert combine("tie", None) == 0.5 and combine(None, None) is None


def test_bootstrap_ci_brackets_the_mean():
    lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 10, n_boot=500)
    assert lo < 0.75 < hi and lo > 0.5 and hi < 0.95
    assert bootstrap_ci([]) == (None, None)


def test_pairwise_counts_garbage_and_errors_without_crashing():
    def judge(prompt: str) -> str:
        a = prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n")[0]
        if "garbage" in prompt:
            return "I refuse to follow the format."
        if "boom" in prompt:
            raise ConnectionError("endpoint down")
        return "[[A]]" if a.startswith("good") else "[[B]]"

    qs = ["q1", "q2", "q3 garbage", "q4 boom"]
    result = pairwise(
        qs, ["good 1", "bad 2", "good 3", "good 4"], ["bad 1", "good 2", "bad 3", "bad 4"], judge
    )
    s = result.summary()
    assert result.scores == [1.0, 0.0, None, None]
    assert (s["wins"], s["losses"], s["ties"], s["judged"], s["n"]) == (1, 1, 0, 2, 4)
    assert s["unparsed"] == 2 and s["errors"] == 2 and "endpoint down" in s["error_examples"][0]
    assert s["win_rate"] == 0.5 and s["first_position_rate"] == 0.5
    assert "{question}" in judge_prompt() and "[[C]]" in judge_prompt()


# ------------------------------------------------------------------------------------------- run and report


def test_reference_metrics_and_run_specs():
    assert exact_match(" Bridge-garden\n", "bridge-garden") == 1.0
    assert token_f1("the red owl", "a red owl") == pytest.approx(2 / 3)
    assert RunSpec.parse("m=runs/x:fixed") == RunSpec("m", __import__("pathlib").Path("runs/x"), "fixed")
    assert RunSpec.parse("runs/x").name == "x" and RunSpec.parse("runs/x").mode == "inferred"
    with pytest.raises(TreasureError, match="unknown mode"):
        RunSpec.parse("m=runs/x:fixd")


def test_report_from_a_hand_made_report(tmp_path):
    ma = {"domain": category_scores(["Code", "Math"], ["Code", "Code"])}
    item = ctl.ControlItem("l", "length", 10, "p", ctl.length_markers(10))
    ex = {**item.to_dict(), **ctl.score_item(item, "a b c", 3)}
    report = {
        "meta": {"command": "treasure eval report --run a=x", "versions": {"treasure": "0"}, "python": "3",
                 "platform": "linux", "created": "now", "data": "test.jsonl"},
        "runs": [{"name": "a", "path": "x", "mode": "inferred"}, {"name": "b", "path": "y", "mode": "fixed"}],
        "marker_accuracy": {"a": ma},
        "control": {r: {"asked_by": "instruction", "summary": ctl.summarize([item], [ex]), "examples": [ex]}
                    for r in ("a", "b")},
        "slices": {"stats_from": "a", "tail_share": 0.05, "categories": ["domain"], "counts": {"head": 1, "tail": 1},
                   "reference": "a", "metrics": {r: {"exact_match": sl.split_metric([1.0, v], ["head", "tail"])}
                                                  for r, v in (("a", 0.0), ("b", 1.0))},
                   "tail_lift": {"b": {"exact_match": 1.0}}},
        "judge": [{"a": "b", "b": "a", "slice": "tail", "summary": {
            "n": 2, "judged": 2, "win_rate": 0.75, "ci_low": 0.5, "ci_high": 1.0, "wins": 1, "ties": 1, "losses": 0,
            "unparsed": 1, "errors": 0}}],
    }  # fmt: skip
    md = to_markdown(json.loads(json.dumps(report)))
    for section in (
        "## Marker accuracy",
        "## Control",
        "## Long-tail slices",
        "## Pairwise judge",
        "## How this",
    ):
        assert section in md
    assert "| b | +100.0 pts |" in md and "1 unparsed, 0 errors" in md and "50.0% / 0.33 (n=2)" in md
    paths = write_report(report, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert sorted(saved["plots"]) == ["plots/confusion_a_domain.png", "plots/length_scatter.png",
                                      "plots/slices_exact_match.png"]  # fmt: skip
    assert all((tmp_path / p).stat().st_size > 1000 for p in saved["plots"])
