"""Reward-model quality and the per-language quartile bucket (a dataset-level pass)."""

import json
from importlib import resources

import pytest

from treasure.annotate.options import AnnotateOptions
from treasure.annotate.pipeline import run_annotate
from treasure.annotate.quality import QualityAnnotator, assign_quality_buckets, quartile_bucket
from treasure.errors import TreasureError


def make_reward_model(path, num_labels=1):
    """A tiny GPT-2 reward model with the GPT-2 tokenizer, saved like a real one and loaded back by path."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    tok_file = resources.files("treasure.assets").joinpath("gpt2-tokenizer.json")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=tok.vocab_size,
                     num_labels=num_labels, pad_token_id=tok.eos_token_id)  # fmt: skip
    GPT2ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def reward_model(tmp_path_factory):
    return make_reward_model(tmp_path_factory.mktemp("reward"))


def conv(i, words):
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": " ".join(f"w{j}" for j in range(words))}], "markers": {}}  # fmt: skip


# ----------------------------------------------------------------------------------------------- buckets


@pytest.mark.parametrize(
    ("scores", "expect"),
    [
        ([4.0, 3.0, 2.0, 1.0], [1, 2, 3, 4]),
        ([8, 7, 6, 5, 4, 3, 2, 1], [1, 1, 2, 2, 3, 3, 4, 4]),
        ([5.0], [1]),
        ([2.0, 1.0], [1, 3]),  # a small group need not fill all four buckets
        ([1.0, 1.0, 1.0, 1.0], [1, 1, 1, 1]),  # ties share the better bucket
        ([3.0, 2.0, 2.0, 2.0, 1.0], [1, 1, 1, 1, 4]),
    ],
)
def test_quartile_bucket(scores, expect):
    ascending = sorted(scores)
    assert [quartile_bucket(s, ascending) for s in scores] == expect


def test_bucket_pass_groups_by_language_keeps_input_and_is_idempotent(tmp_path, paper):
    rows = []
    for i in range(8):
        rows.append(
            {"messages": [], "markers": {"quality": float(i), "language": "English"}, "marker_provenance": {}}
        )
    for i in range(4):
        rows.append({"messages": [], "markers": {"quality": float(10 * i), "language": "French"}})
    rows.append(
        {"messages": [], "markers": {"quality": 100.0}, "marker_provenance": {}}
    )  # no language: own group
    rows.append({"messages": [], "markers": {"quality": -5.0}, "marker_provenance": {}})
    rows.append({"messages": [], "markers": {"language": "English"}})  # no score: no bucket
    rows[0]["markers"]["quality_bucket"] = "1"  # given in the input: kept
    rows[0]["marker_provenance"]["quality_bucket"] = "input"
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert assign_quality_buckets(path, paper) == 13
    once = path.read_bytes()
    out = [json.loads(line) for line in once.splitlines()]
    assert [r["markers"].get("quality_bucket") for r in out[:8]] == ["1", "4", "3", "3", "2", "2", "1", "1"]
    assert [r["markers"]["quality_bucket"] for r in out[8:12]] == ["4", "3", "2", "1"]
    assert [r["markers"]["quality_bucket"] for r in out[12:14]] == ["1", "3"]
    assert "quality_bucket" not in out[14]["markers"] and out[14] == rows[14]
    assert list(out[1]["markers"]) == ["quality", "quality_bucket", "language"]  # taxonomy order
    assert out[1]["marker_provenance"]["quality_bucket"] == "quartile_by_language"
    assert assign_quality_buckets(path, paper) == 13 and path.read_bytes() == once  # a redo changes nothing


# ---------------------------------------------------------------------------------------------- the model


def test_reward_model_scores_rounded_and_independent_of_batching(reward_model):
    recs = [conv(i, 5 + 13 * i) for i in range(10)]
    by8 = QualityAnnotator(reward_model, batch_size=8).annotate(recs)
    by1 = QualityAnnotator(reward_model, batch_size=1).annotate(recs)
    assert by8 == by1 and all(isinstance(r["quality"], float) for r in by8)
    assert all(len(repr(r["quality"]).split(".")[-1]) <= 4 for r in by8)
    assert len({r["quality"] for r in by8}) > 5  # the scores depend on the text


def test_reward_model_explain_and_truncation_keep_the_end(reward_model):
    ann = QualityAnnotator(reward_model, max_length=32)
    short, long = conv(0, 3), conv(1, 200)
    ev = ann.explain([short, long])
    assert ev[0]["quality"]["truncated"] is False and ev[1]["quality"]["truncated"] is True
    assert ev[1]["quality"]["tokens"] > 32 and ev[1]["quality"]["max_length"] == 32
    # Left truncation: a long text that ends like another scores the same once cut to 32 tokens.
    other = conv(1, 200)
    other["messages"][0]["content"] = "a very different beginning " * 20
    assert ann.annotate([long])[0] == ann.annotate([other])[0]


def test_a_classifier_with_several_labels_is_refused(tmp_path):
    path = make_reward_model(tmp_path / "clf", num_labels=3)
    with pytest.raises(TreasureError, match="a reward model has one output; this one has 3"):
        QualityAnnotator(path)


# ------------------------------------------------------------------------------------------- in the pipeline


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def make_input(path, n):
    rows = []
    for i in range(n):
        rec = conv(i, 3 + (i * 7) % 40)
        rec["id"] = f"r{i}"
        rec["markers"] = {"language": ["English", "French", "German"][i % 3]} if i % 5 else {}
        rows.append(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pipeline_fills_quality_and_buckets_per_language(tmp_path, reward_model):
    make_input(tmp_path / "in.jsonl", 60)
    opts = AnnotateOptions(categories=["quality_bucket"], reward_model=reward_model, chunk_size=16)
    s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    assert s.written == 60 and s.annotators == ["reward:" + reward_model.rsplit("/", 1)[-1]]
    recs = read(tmp_path / "out.jsonl")
    groups = {}
    for r in recs:  # asking for the bucket fills the score it needs
        groups.setdefault(r["markers"].get("language"), []).append(r["markers"])
    for markers in groups.values():
        scores = sorted(m["quality"] for m in markers)
        assert [m["quality_bucket"] for m in markers] == [
            str(quartile_bucket(m["quality"], scores)) for m in markers
        ]
        assert {m["quality_bucket"] for m in markers} == {"1", "2", "3", "4"}
    assert len(groups) == 4 and len(groups[None]) == 12


def test_no_reward_model_buckets_input_scores_or_says_why(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "markers": {"quality": float(i)}} for i in range(4)]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = AnnotateOptions(categories=["quality", "quality_bucket"])
    s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    assert [r["markers"]["quality_bucket"] for r in read(tmp_path / "out.jsonl")] == list("4321")
    assert "needs a reward model" in s.not_annotated["quality"]
    (tmp_path / "in.jsonl").write_text(json.dumps({**rows[0], "markers": {}}) + "\n")
    s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out2.jsonl", opts, progress=False)
    assert "no record has a quality score" in s.not_annotated["quality_bucket"]


def test_a_run_killed_in_the_bucket_pass_is_finished_by_a_rerun(tmp_path, reward_model, monkeypatch):
    import treasure.annotate.quality as quality

    make_input(tmp_path / "in.jsonl", 30)
    opts = AnnotateOptions(
        categories=["quality_bucket", "length_tokens"], reward_model=reward_model, chunk_size=8
    )
    run_annotate(tmp_path / "in.jsonl", tmp_path / "ref.parquet", opts, progress=False)

    real = quality.assign_quality_buckets

    def crash(path, taxonomy):
        real(path, taxonomy)  # the file is rewritten, then the process "dies" before the state moves on
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "assign_quality_buckets", crash)
    with pytest.raises(KeyboardInterrupt):
        run_annotate(tmp_path / "in.jsonl", tmp_path / "out.parquet", opts, progress=False)
    assert json.loads((tmp_path / "out.parquet.progress.json").read_text())["phase"] == "finish"
    monkeypatch.setattr(quality, "assign_quality_buckets", real)
    s = run_annotate(tmp_path / "in.jsonl", tmp_path / "out.parquet", opts, progress=False)
    assert s.read == 30 and not (tmp_path / "out.parquet.progress.json").exists()
    from treasure.records import load_records

    assert load_records(tmp_path / "out.parquet") == load_records(tmp_path / "ref.parquet")


def test_explain_shows_score_and_bucket_evidence(tmp_path, reward_model):
    from treasure.annotate.explain import explain, format_explanation

    make_input(tmp_path / "in.jsonl", 40)
    opts = AnnotateOptions(categories=["quality", "quality_bucket", "length_bucket", "source"],
                           reward_model=reward_model, field_map={"source": "meta.origin"})  # fmt: skip
    run_annotate(tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    report = explain(tmp_path / "out.jsonl", "r7", opts)
    rows = {r["category"]: r for r in report["markers"]}
    assert report["id"] == "r7" and report["source"].endswith("out.jsonl:8")
    q = rows["quality"]
    assert (
        q["by"].startswith("reward:") and q["evidence"]["rounded"] == q["value"] and "tokens" in q["evidence"]
    )
    assert "differs" not in q  # the same options give the same score again
    b = rows["quality_bucket"]["evidence"]
    french = sum(1 for i in range(40) if i % 5 and i % 3 == 1)
    assert (
        b["group"] == "French" and b["group_size"] == french and b["value"] == rows["quality_bucket"]["value"]
    )
    assert rows["length_bucket"]["evidence"]["rule"].startswith("concise < 300")
    assert rows["source"]["value"] is None and rows["source"]["evidence"] == {
        "annotator": "fields:source=meta.origin", "field": "meta.origin", "raw": None}  # fmt: skip
    assert explain(tmp_path / "out.jsonl", "line:8", opts) == report
    text = format_explanation(report)
    assert "quality_bucket = " in text and "scored_higher=" in text and "group_size=" in text
    with pytest.raises(TreasureError, match="no record with id = 'nope'"):
        explain(tmp_path / "out.jsonl", "nope", opts)
