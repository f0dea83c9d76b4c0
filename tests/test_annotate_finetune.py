"""The embedding annotator with a fine-tuned encoder (`fine_tune_epochs`, annotate/finetune.py): the weights move,
held-in-like prompts are answered right, the result is cached on disk and reloaded without training, the cache key
follows the epochs and the examples, a damaged cache file is retrained, and the CLI refuses a negative epoch count.
Small on purpose: 36 seeds, no labelled set, one epoch (3 optimiser steps)."""

from __future__ import annotations

import pytest

from treasure.annotate import embedding as emb
from treasure.annotate import finetune as ft
from treasure.cli import main
from treasure.errors import TreasureError
from treasure.taxonomy import parse_taxonomy

TAX = parse_taxonomy(
    "name: topics\ncategories:\n  topic:\n    kind: categorical\n    values:\n"
    '      Cooking: ""\n      Programming: ""\n      Sports: ""\n'
)
TEXTS = {
    "Cooking": ["How long should I roast a whole chicken?", "Give me a recipe for banana bread",
                "What spices go well with lentil soup?", "How do I make fresh pasta dough by hand?",
                "Why did my risotto turn out gluey?", "Best way to caramelise onions", "How to bake sourdough bread",
                "Can I substitute butter with oil in cookies?", "How do I sear a steak in a cast iron pan?",
                "What is a good marinade for grilled tofu?", "How long do hard boiled eggs take?",
                "Tips for a crispy pizza crust at home"],
    "Programming": ["Fix this Python TypeError in my list comprehension", "How do I reverse a linked list in C?",
                    "Explain async/await in JavaScript", "Why does my SQL join return duplicate rows?",
                    "Write a bash script that renames files", "What is a segfault and how do I debug it?",
                    "How do I write a unit test with pytest?", "Convert this Java loop to a stream",
                    "Explain Rust ownership and borrowing", "How do I merge two git branches?",
                    "My React component re-renders too often", "Implement binary search in Go"],
    "Sports": ["Who won the 2018 football World Cup?", "How do I improve my tennis serve?",
               "Explain the offside rule in soccer", "A training plan for my first marathon",
               "How many players are on a basketball team?", "What is a hat-trick in hockey?",
               "Tips for swimming freestyle faster", "How does scoring work in cricket?",
               "Best stretches before a football match", "Who holds the 100 metre sprint record?",
               "How do I choose a road bike for racing?", "Rules of a tie-break in volleyball"],
}  # fmt: skip
SEEDS = [{"text": t, "category": "topic", "value": v} for v, texts in TEXTS.items() for t in texts]
HELD_IN_LIKE = [("What temperature should I bake a lasagna at?", "Cooking"),
                ("How do I fix an IndexError in my Python loop?", "Programming"),
                ("How can I get better at dribbling in basketball?", "Sports")]  # fmt: skip


def build(cache_dir, seeds=SEEDS, epochs=1) -> emb.EmbeddingAnnotator:
    return ft.FineTunedEmbeddingAnnotator(TAX, categories=("topic",), seeds=seeds, labelled=[], dtype="float32",
                                          cache_dir=cache_dir, num_threads=1, fine_tune_epochs=epochs)  # fmt: skip


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("finetune-cache")


@pytest.fixture(scope="module")
def tuned(cache_dir) -> emb.EmbeddingAnnotator:
    return build(cache_dir)


def test_fine_tuning_changes_the_encoder_and_answers_right(tuned: emb.EmbeddingAnnotator, cache_dir) -> None:
    _, frozen = emb.load_model("float32")
    assert tuned.encoder.model is not frozen  # the shared frozen model is left alone
    moved = [
        float((a.detach() - b.detach()).abs().max())
        for a, b in zip(tuned.encoder.model.parameters(), frozen.parameters(), strict=True)
    ]
    assert max(moved) > 1e-5
    preds = tuned.classify([t for t, _ in HELD_IN_LIKE])
    assert [p["topic"].value for p in preds] == [v for _, v in HELD_IN_LIKE]
    assert len(list(cache_dir.glob("finetune-*.safetensors"))) == 1
    # Frozen and fine-tuned vectors never share a seed-vector cache key.
    assert tuned.encoder.settings()["fine_tune"] == tuned.encoder.fine_tune
    assert "fine_tune" not in emb.Encoder(dtype="float32").settings()


def test_a_second_build_loads_the_cache_without_training(tuned, cache_dir, monkeypatch, capsys) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(ft, "fine_tune", no_training)
    monkeypatch.setattr(emb, "_FINE_TUNED", {})  # from the disk cache, not the process's
    again = build(cache_dir)
    assert "fine-tuning" not in capsys.readouterr().err
    texts = [t for t, _ in HELD_IN_LIKE]
    for a, b in zip(again.classify(texts), tuned.classify(texts), strict=True):
        assert a["topic"].value == b["topic"].value
        assert a["topic"].score == pytest.approx(b["topic"].score, abs=1e-3)


def test_the_cache_key_follows_the_epochs_the_seed_and_the_examples() -> None:
    seeds = emb.read_seeds(SEEDS, TAX)
    ex = ft.training_examples(TAX, ("topic",), seeds, [])
    assert len(ex) == len(SEEDS)
    fewer = ft.training_examples(TAX, ("topic",), seeds[:-1], [])
    key = ft.cache_key(ex, {"topic": 3}, epochs=1)
    assert key == ft.cache_key(ex, {"topic": 3}, epochs=1)
    assert key != ft.cache_key(ex, {"topic": 3}, epochs=2)
    assert key != ft.cache_key(ex, {"topic": 3}, epochs=1, seed=1)
    assert key != ft.cache_key(fewer, {"topic": 3}, epochs=1)
    user = ft.training_examples(TAX, ("topic",), seeds, [], user_seeds={("topic", seeds[0].text)})
    assert user[0].weights["topic"] == emb.USER_SEED_WEIGHT
    assert key != ft.cache_key(user, {"topic": 3}, epochs=1)


def test_a_damaged_cache_file_is_retrained(tuned, cache_dir, monkeypatch, capsys) -> None:
    (path,) = cache_dir.glob("finetune-*.safetensors")
    path.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(emb, "_FINE_TUNED", {})
    again = build(cache_dir)
    err = capsys.readouterr().err
    assert f"fine-tuning MiniLM-L6 on {len(SEEDS)} examples, 1 epoch(s); cached at {path}" in err
    assert ft.load_state(path) is not None  # rewritten
    assert [p["topic"].value for p in again.classify([t for t, _ in HELD_IN_LIKE])] == [
        v for _, v in HELD_IN_LIKE
    ]


def test_frozen_is_the_default_and_a_negative_epoch_count_is_refused(tmp_path) -> None:
    with pytest.raises(TreasureError, match="fine_tune_epochs"):
        build(tmp_path, epochs=-1)


def test_cli_refuses_a_negative_fine_tune(tmp_path, capsys) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    rc = main(["annotate", str(src), "-o", str(tmp_path / "out.jsonl"), "--embedding-fine-tune", "-1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--embedding-fine-tune" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()
