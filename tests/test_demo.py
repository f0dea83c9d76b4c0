"""The real-model demo's plumbing on tiny-llama (fast), its measurements on hand-made inputs, and on SmolLM2 (slow).

The demo itself is the real model; here `--model tiny-llama --quick` runs every stage on the packaged OASST data
in a minute, so that the data split, both arms, every measurement, the report and resuming are checked in the
default suite.
"""

from __future__ import annotations

import json
import math

import pytest
from test_suite import treasure

from treasure.arms import read_jsonl
from treasure.demo import score
from treasure.demo.data import prefix_views, shipped_humanevalpack, shipped_oasst, stopping_points
from treasure.errors import TreasureError


def test_shipped_data_is_the_documented_file():
    import hashlib

    digest = hashlib.sha256(shipped_oasst().read_bytes()).hexdigest()
    assert digest == "b92db3f1db324f5aa3c5d75ed65a451b54063de1de7370506233c9917043bd66"
    assert "Apache-2.0" in (shipped_oasst().parent / "SOURCE.md").read_text()
    digest = hashlib.sha256(shipped_humanevalpack().read_bytes()).hexdigest()
    assert digest == "b1376d72be4bd016a62ad043d9de3846edb8d63edf1222da802a31330c14c3a7"
    assert "MIT" in (shipped_humanevalpack().parents[1] / "SOURCES.md").read_text()


def test_stopping_points_are_paragraph_breaks_after_a_whole_sentence_outside_code():
    first = "This first paragraph has more than ten words in it, so it can stand alone."
    reply = "\n\n".join(
        [first, "An open list:", "```python\nx = 1.\n\ny = 2.\n```", "Done with the code, then.", "Last one."]
    )
    points = stopping_points(reply)
    # after the first paragraph and after the one that follows the fence; not after "An open list:" (no sentence
    # end), not inside the fence, not at the reply's own end
    assert [reply[:p].rsplit("\n\n", 1)[-1] for p in points] == [first, "Done with the code, then."]
    assert stopping_points("Sure!\n\nHere is a long answer that goes on.") == []  # under MIN_VIEW_WORDS
    assert stopping_points(first) == []


def test_prefix_views_cut_training_replies_and_keep_the_originals_first():
    first = "This first paragraph has more than ten words in it, so it can stand alone."
    reply = "\n\n".join([first, "A second paragraph, also ending a sentence.", "The end."])
    rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}],
           "markers": {"quality": 0.5, "length_tokens": 40}, "message_id": "m1"}  # fmt: skip
    plain = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]}
    out = prefix_views([rec, plain], per_reply=1, seed=0)
    assert out[:2] == [rec, plain] and len(out) == 3
    view = out[2]
    assert reply.startswith(view["messages"][-1]["content"]) and view["messages"][-1]["content"] != reply
    assert view["view"] == "prefix" and view["view_of"] == "m1" and view["messages"][0] == rec["messages"][0]
    assert rec["messages"][-1]["content"] == reply  # the original is not changed
    assert len(prefix_views([rec], per_reply=5)) == 3  # at most one view per stopping point
    assert prefix_views([rec], per_reply=0) == [rec]
    assert prefix_views([rec], 1, seed=0) == prefix_views([rec], 1, seed=0)
    with pytest.raises(TreasureError, match="length_views"):
        prefix_views([rec], -1)


def test_prepare_data_cuts_training_replies_only(tmp_path, monkeypatch):
    import shutil

    import treasure.annotate.pipeline as pipeline
    from treasure.demo.data import prepare_data

    # the annotators are tested elsewhere: here each file is passed through as it is
    monkeypatch.setattr(pipeline, "run_annotate", lambda src, dst, opts, progress: shutil.copy(src, dst))
    plain = [read_jsonl(p) for p in prepare_data(tmp_path / "plain", None)]
    cut = [read_jsonl(p) for p in prepare_data(tmp_path / "cut", None, length_views=1)]
    assert cut[1] == plain[1] and not any("view" in r for r in cut[1])  # held-out replies are never cut
    views = [r for r in cut[0] if r.get("view") == "prefix"]
    assert cut[0][: len(plain[0])] == plain[0] and len(cut[0]) == len(plain[0]) + len(views) > len(plain[0])
    originals = {r["message_id"]: r for r in plain[0]}
    for v in views:
        full = originals[v["view_of"]]["messages"]
        assert v["messages"][:-1] == full[:-1] and full[-1]["content"].startswith(
            v["messages"][-1]["content"]
        )


def test_demo_settings_are_read_as_yaml_and_checked_against_their_defaults():
    from treasure.commands.demo import _assignments
    from treasure.demo.run import DemoConfig

    fields = DemoConfig.__dataclass_fields__
    got = _assignments(["learning_rate=1", "seeds=[0, 1]", "length_views=2", "format=paper"], "--set", fields)
    assert got == {"learning_rate": 1, "seeds": (0, 1), "length_views": 2, "format": "paper"}
    assert _assignments(["learning_rate=3e-4"], "--set", fields) == {
        "learning_rate": 3e-4
    }  # a string to YAML 1.1
    for item, expected in (("steps=abc", "expected int"), ("length_views=1.5", "expected int"),
                           ("seeds=0", "expected a list"), ("learning_rate=fast", "expected float"),
                           ("format=3", "expected str"), ("steps=true", "expected int")):  # fmt: skip
        with pytest.raises(TreasureError, match=expected):
            _assignments([item], "--set", fields)
    assert _assignments(["categories=null", "embedding_learning_rate=null"], "--set", fields) == {
        "categories": None,
        "embedding_learning_rate": None,
    }  # where the setting takes None
    with pytest.raises(TreasureError, match="expected float"):
        _assignments(["learning_rate=null"], "--set", fields)
    assert _assignments(["anything=[1]"], "--train") == {"anything": [1]}  # train keys are TRL's to check


def test_a_demo_folder_resumes_only_with_its_own_settings(tmp_path):
    from treasure.demo.run import DemoConfig, check_settings

    settings = tmp_path / "settings.json"
    check_settings(settings, DemoConfig())  # a new folder
    made = DemoConfig(steps=4).to_dict()
    del made["length_views"]  # written before that setting existed: it counts as its default
    settings.write_text(json.dumps(made), encoding="utf-8")
    check_settings(settings, DemoConfig(steps=4))
    with pytest.raises(TreasureError, match=r"other settings .*length_views, steps"):
        check_settings(settings, DemoConfig(steps=8, length_views=1))
    # a folder made before the countdown ran without it, whatever the default is now
    del made["countdown"], made["length_target"], made["fit"]
    settings.write_text(json.dumps(made), encoding="utf-8")
    with pytest.raises(TreasureError, match=r"other settings .*countdown, length_target"):
        check_settings(settings, DemoConfig(steps=4))
    check_settings(settings, DemoConfig(steps=4, countdown=False, length_target=1.0))


def test_fitting_keeps_the_conversations_that_fit_whole_with_room_for_the_blocks():
    from treasure.demo.data import fitting
    from treasure.train.model import load_tokenizer

    def rec(words: int) -> dict:
        return {
            "messages": [
                {"role": "user", "content": "Tell me."},
                {"role": "assistant", "content": "yes " * words},
            ]
        }

    tok = load_tokenizer("tiny-llama")
    short, long = rec(5), rec(300)
    size = len(tok.apply_chat_template(short["messages"], tokenize=True)["input_ids"])
    assert fitting([long, short, long], "tiny-llama", 256, 56) == [short]
    assert fitting([short], "tiny-llama", size + 10, 10) == [short]  # exactly full
    assert fitting([short], "tiny-llama", size + 10, 11) == []  # one token of room short


def test_wilson_interval_brackets_the_rate():
    lo, hi = score.wilson_interval(0.5, 36)
    assert math.isclose(lo, 0.3447, abs_tol=1e-3) and math.isclose(hi, 0.6553, abs_tol=1e-3)
    assert score.wilson_interval(0.0, 48)[0] == 0.0 and 0 < score.wilson_interval(0.0, 48)[1] < 0.08
    assert score.wilson_interval(1 / 6, 36) == pytest.approx((0.0787, 0.3189), abs=1e-3)
    assert score.wilson_interval(0.3, 0) == (0.0, 1.0)


def test_length_summary_counts_violations_and_ratios():
    s = score.length_summary([20, 20, 40, 40], [10, 25, 40, 0])
    assert s["n"] == 4 and s["violation_rate"] == 0.25 and s["empty"] == 1
    assert s["by_limit"] == {"20": 0.5, "40": 0.0}
    assert math.isclose(s["median_ratio"], (0.5 + 1.0) / 2)
    assert s["median_words_by_limit"] == {"20": 17.5, "40": 20.0}


def test_follows_limit_is_rank_correlation_of_length_with_limit():
    # answers that grow with the limit follow it; answers that are merely short do not
    assert math.isclose(score.length_summary([20, 40, 80], [15, 30, 70])["follows_limit"], 1.0)
    assert math.isclose(score.length_summary([20, 40, 80], [70, 30, 15])["follows_limit"], -1.0)
    assert score.length_summary([20, 40, 80], [5, 5, 5])["follows_limit"] == 0.0
    assert math.isclose(
        score.spearman([1, 2, 2, 3], [1, 3, 2, 4]), 0.9486832980505138
    )  # scipy.stats.spearmanr


def test_quality_pairs_take_top_and_bottom_of_ranked_siblings():
    def rec(parent, rank, text):
        return {"parent_id": parent, "rank": rank, "messages": [{"role": "user", "content": "q" + parent},
                                                                 {"role": "assistant", "content": text}]}  # fmt: skip

    rows = [
        rec("a", 1, "mid"),
        rec("a", 0, "best"),
        rec("a", 2, "worst"),
        rec("b", 0, "alone"),
        rec("c", None, "x"),
    ]
    pairs = score.quality_pairs(rows, 10, 0)
    assert pairs == [([{"role": "user", "content": "qa"}], "best", "worst")]
    assert score.preference_rate([-1.0, -2.0, math.nan], [-2.0, -1.0, -1.0]) == 0.5


def test_demo_quick_on_tiny_llama_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = treasure("demo", "--quick", "--model", "tiny-llama", "--set", "fit=true", "--out", out, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| comparison (1 seed; %) | baseline | markers, inferred | markers, fixed | paper |" in run.stdout
    assert "word-limit violations" in run.stdout and "report:" in run.stdout
    train, test = (read_jsonl(out / "data" / f"{s}.annotated.jsonl") for s in ("train", "test"))
    # split by tree: no conversation of a held-out tree was trained on
    assert not {r["message_tree_id"] for r in train} & {r["message_tree_id"] for r in test}
    assert len(train) + len(test) == 1185 and len(test) > 150
    assert all("quality_bucket" in r["markers"] and r["markers"]["source"] == "Human" for r in train[:50])
    results = json.loads((out / "results.json").read_text())
    # both arms trained on the annotated replies that fit max_length whole (fit), the same file
    fit = read_jsonl(out / "data" / "train.fit256.jsonl")
    assert results["data"]["annotated"] == len(train) > results["data"]["train"] == len(fit) > 100
    assert {r["message_id"] for r in fit} < {r["message_id"] for r in train}
    seed = results["seeds"]["0"]
    assert seed["train"]["baseline"]["steps"] == seed["train"]["markers"]["steps"] == 2
    # the blocks cost tokens (equal when every batch is padded to max_length)
    assert seed["train"]["markers"]["tokens"] >= seed["train"]["baseline"]["tokens"] > 0
    for cond in ("baseline", "inferred", "fixed"):
        assert seed["eval"]["length"]["conditions"][cond]["n"] == 2
    assert set(seed["eval"]["inference"]) <= {"task", "domain", "format", "length_bucket"}
    assert {"baseline", "quality_bucket 1", "quality_bucket 4"} <= set(seed["eval"]["quality"])
    fmt = seed["eval"]["format"]
    assert fmt["n"] == 4 and set(fmt["conditions"]) == {"baseline", "inferred", "fixed"}
    assert set(fmt["conditions"]["fixed"]["by_format"]) == {"Enumeration", "JSON", "Markdown", "Tabular"}
    groups = seed["eval"]["tail"]["groups"]
    assert set(groups) == {"task head", "task tail", "domain head", "domain tail"}
    assert sum(groups[g]["n"] for g in ("task head", "task tail")) <= 4
    assert "format control" in run.stdout and "follow the limit" in run.stdout
    repair = seed["eval"]["code_repair"]
    assert repair["n"] == 2 and len(set(repair["problems"])) == 2 and "HumanEvalFix" in run.stdout
    for cond in ("baseline", "inferred", "fixed"):
        assert 0.0 <= repair["conditions"][cond]["pass_at_1"] <= 1.0
    # a second run resumes: nothing is trained again, the same table comes out
    stamp = (out / "seed0" / "markers" / "train.json").stat().st_mtime
    again = treasure("demo", "--quick", "--model", "tiny-llama", "--set", "fit=true", "--out", out)
    assert again.returncode == 0 and (out / "seed0" / "markers" / "train.json").stat().st_mtime == stamp
    assert again.stdout.split("\n\n")[-2] == run.stdout.split("\n\n")[-2]
    other = treasure("demo", "--quick", "--model", "tiny-llama", "--steps", "3", "--out", out)
    assert other.returncode == 2 and "other settings" in other.stderr and "Traceback" not in other.stderr
    changed = treasure(
        "demo", "--quick", "--model", "tiny-llama", "--set", "learning_rate=3e-4", "--out", out
    )
    assert changed.returncode == 2 and "other settings" in changed.stderr
    bad = treasure("demo", "--quick", "--set", "lr=1", "--out", out)
    assert bad.returncode == 2 and "unknown setting 'lr'" in bad.stderr and "learning_rate" in bad.stderr


def test_tail_values_and_by_frequency_split_records_by_training_share():
    train = [{"markers": {"task": "QA"}}] * 19 + [{"markers": {"task": "CodeFix"}}]
    tails = score.tail_values(train, ("task",), 0.1)
    assert tails == {"task": {"CodeFix"}}
    held = [{"markers": {"task": "QA"}}, {"markers": {"task": "CodeFix"}}, {"markers": {"task": "QA"}}, {}]
    groups = score.by_frequency(held, {"a": [-1.0, -3.0, -2.0, -9.0], "b": [0.0, math.nan, -1.0, 0.0]}, tails)
    # a record any arm could not score (nan) is left out of its group for every arm, so arms share their n
    assert groups["task head"] == {"n": 2, "a": -1.5, "b": -0.5}
    assert groups["task tail"] == {"n": 0, "a": None, "b": None}


@pytest.mark.slow
def test_demo_quick_on_smollm2(tmp_path):
    from test_real_model import _smollm2_or_skip

    _smollm2_or_skip()
    run = treasure("demo", "--quick", "--out", tmp_path / "demo", timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "word-limit violations" in run.stdout


def _results(steps: int, fixed_violations: list[float]) -> dict:
    def seed(v: float) -> dict:
        cond = {"violation_rate": v, "follows_limit": 0.5, "median_ratio": 0.8}
        return {
            "train": {"markers": {"seconds": 10.0}},
            "eval": {
                "length": {"conditions": {"baseline": cond, "inferred": cond, "fixed": cond}},
                "inference": {c: {"accuracy": 0.25} for c in ("task", "domain", "format", "length_bucket")},
                "quality": {"quality_bucket 1": 0.5, "quality_bucket 4": 0.5},
            },
        }

    config = {"model": "m", "steps": steps, "learning_rate": 1e-3, "extra": {}}
    return {"config": config, "seeds": {str(i): seed(v) for i, v in enumerate(fixed_violations)}}


def test_compare_tabulates_runs_by_the_setting_that_differs(tmp_path):
    for name, res in (("a", _results(8, [0.5])), ("b", _results(32, [0.2, 0.4]))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    run = treasure("demo", "--compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "curves")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [r for r in run.stdout.splitlines() if r.startswith("| steps=")]
    assert len(rows) == 2 and "learning_rate" not in rows[0]  # only the setting that differs names a row
    assert rows[0].startswith("| steps=8 | 1 | 50.0 / 50.0 / 50.0 |")
    assert rows[1].startswith("| steps=32 | 2 | 30.0 / 30.0 / 30.0 |")  # the mean over the run's seeds
    assert "n/a" in rows[0]  # no format control in these runs: said, not invented
    assert (tmp_path / "curves" / "curves.png").stat().st_size > 1000
    missing = treasure("demo", "--compare", tmp_path / "nope")
    assert missing.returncode == 2 and "no results.json" in missing.stderr


def test_reply_logprobs_in_batches_equal_each_reply_scored_alone(tmp_path):
    import torch
    from test_generate import make_bundle

    from treasure.bundle import load_bundle

    bundle = load_bundle(make_bundle(tmp_path, "compact"))
    items = [
        ([{"role": "user", "content": "Reverse 'apple'. " * k}], "elppa, and more words " * (4 - k % 4))
        for k in range(1, 7)
    ] + [([{"role": "user", "content": "Say nothing."}], "")]
    marks = [{"length_tokens": 10 * k} for k in range(1, 8)]
    batched = score.reply_logprobs(bundle, items, marks, batch_size=4)
    alone = score.reply_logprobs(bundle, items, marks, batch_size=1)
    assert math.isnan(batched[-1]) and math.isnan(alone[-1])  # an empty reply has no score
    assert batched[:-1] == pytest.approx(alone[:-1], abs=1e-4)
    # one reply by hand: every position's logits, the reply's tokens after the prompt and its block
    from treasure.markers import SEPARATOR

    (messages, reply), m = items[2], marks[2]
    tok = bundle.tokenizer
    head = tok(bundle.prompt(messages, markers=m) + bundle.render_block(m) + SEPARATOR["compact"])[
        "input_ids"
    ]
    body = tok(reply, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(bundle.model(input_ids=torch.tensor([head + body])).logits[0].float(), -1)
    want = float(logp[torch.arange(len(head) - 1, len(head) + len(body) - 1), torch.tensor(body)].mean())
    assert batched[2] == pytest.approx(want, abs=1e-4)


def test_only_the_marker_arm_with_compact_tokens_gets_the_rows_learning_rate(tmp_path):
    from treasure.demo.run import DemoConfig, train_config

    cfg = DemoConfig(embedding_learning_rate=1e-2, categories=("length_tokens", "task"))
    arms = {
        mode: train_config(
            cfg, train_file=tmp_path / "t.jsonl", output_dir=tmp_path / mode, mode=mode, seed=0
        )
        for mode in ("markers", "baseline")
    }
    assert arms["markers"]["embedding_learning_rate"] == 1e-2
    assert "embedding_learning_rate" not in arms["baseline"]  # its records carry no markers: no new rows
    assert arms["markers"]["markers"]["categories"] == ["length_tokens", "task"]
    assert {
        k: v
        for k, v in arms["markers"].items()
        if k not in ("embedding_learning_rate", "markers", "output_dir")
    } == {
        k: v for k, v in arms["baseline"].items() if k not in ("markers", "output_dir")
    }  # otherwise the same run
    paper = DemoConfig(embedding_learning_rate=1e-2, format="paper", categories=None)
    conf = train_config(
        paper, train_file=tmp_path / "t.jsonl", output_dir=tmp_path / "p", mode="markers", seed=0
    )
    assert "embedding_learning_rate" not in conf and "categories" not in conf["markers"]
