"""The embedding annotator (domain / task from all-MiniLM-L6-v2, offline): model loading, clear cases, user seeds,
seed-file errors, low confidence, the seed cache and MT-Bench accuracy."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from treasure.annotate import embedding as emb
from treasure.annotate.base import MarkerNote
from treasure.errors import RecordError, TaxonomyError
from treasure.taxonomy import paper_taxonomy, parse_taxonomy

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Measured on MT-Bench's first turns (bench/README.md): domain 0.72, task 0.72 with the logistic head trained on the
# labelled development set without MT-Bench (issue 14); 0.84 / 0.76 before, with seeds written beside MT-Bench,
# which generalised worse to the other sources (bench/annotator_generalisation.py).
MT_BENCH_MIN = {"domain": 0.66, "task": 0.68}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="module")
def ann(cache_dir: Path) -> emb.EmbeddingAnnotator:
    os.environ["HF_HUB_OFFLINE"] = "1"  # the model must load with the hub unreachable
    return emb.EmbeddingAnnotator(paper_taxonomy(), cache_dir=cache_dir)


def conv(*turns: str) -> dict:
    """A record whose user turns are `turns` (each answered by the assistant)."""
    messages = []
    for t in turns:
        messages += [{"role": "user", "content": t}, {"role": "assistant", "content": "Sure."}]
    return {"messages": messages, "markers": {}}


def test_model_loads_offline_and_embeds(ann: emb.EmbeddingAnnotator) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert emb.model_path().joinpath("model.safetensors").is_file()
    full, head = ann.encoder.encode(["How do I bake sourdough bread?", "Any tips for baking bread at home?",
                                     "Fix this segfault in my C code"])  # fmt: skip
    assert full.shape == head.shape == (3, 384)
    assert np.allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-4)
    assert full[0] @ full[1] > 0.5 > full[0] @ full[2]  # a real sentence embedding, not noise


@pytest.mark.parametrize(
    ("prompt", "domain", "task"),
    [
        ("This Python function should return the sum of a list but it crashes with TypeError:\n\n"
         "def total(xs):\n    s = ''\n    for x in xs:\n        s += x\n    return s\n\nPlease fix the bug.",
         "Code", "CodeFix"),
        ("Translate this sentence into French: the library opens at nine tomorrow.", None, "Translation"),
        ("Write a short poem about a lighthouse keeper's last night on the island.", None, "CreativeWriting"),
        ("What are the early warning signs of a stroke?", "Medical", None),
        ("Solve for y: 4y - 7 = 2y + 9. Show your steps.", "Math", "Reasoning"),
        ("Summarize the following article in two sentences: The council approved a new park on the old "
         "factory site. Construction starts in spring and will take two years.", None, "Summarization"),
        ("Convert this JavaScript function to Python: function inc(x) { return x + 1; }", "Code",
         "CodeTranslation"),
    ],
)  # fmt: skip
def test_clear_examples(
    ann: emb.EmbeddingAnnotator, prompt: str, domain: str | None, task: str | None
) -> None:
    (pred,) = ann.classify([prompt])
    if domain:
        assert pred["domain"].value == domain, pred
    if task:
        assert pred["task"].value == task, pred


def test_annotate_values_notes_and_explain(ann: emb.EmbeddingAnnotator) -> None:
    tax = paper_taxonomy()
    no_prompt = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi"}],
                 "markers": {}}  # fmt: skip
    given = conv("Write a haiku about rain.")
    given["markers"] = {"domain": "Culture", "task": "CreativeWriting"}
    out = ann.annotate([conv("Write a haiku about rain."), no_prompt, given])
    assert out[0]["task"] == "CreativeWriting" and out[0]["domain"] in tax["domain"].values
    assert out[1]["domain"] == MarkerNote("Unspecified", "no user prompt to classify")
    assert out[1]["task"] == MarkerNote(None, "no user prompt to classify")
    assert out[2] == {}  # markers already there are not recomputed
    (exp,) = ann.explain([conv("Write a haiku about rain.")])
    assert exp["task"]["value"] == "CreativeWriting" and exp["task"]["runner_up"] in tax["task"].values
    assert exp["task"]["score"] > exp["task"]["runner_up_score"]
    assert exp["domain"]["min_score"] == ann.min_score and "min_score" not in exp["task"]
    assert ann.name == "embedding:all-MiniLM-L6-v2"


def test_follow_up_turn_keeps_the_domain(ann: emb.EmbeddingAnnotator) -> None:
    rec = conv("My doctor says my blood pressure is 150/95. What lifestyle changes help lower it?",
               "Now make that into a short checklist.")  # fmt: skip
    (pred,) = ann.classify_records([rec])
    assert pred["domain"].value == "Medical"  # the subject comes from the first turn
    (last,) = ann.classify(["Now make that into a short checklist."])
    assert pred["task"].value == last["task"].value  # the request is the last turn alone


def test_low_confidence_gives_unspecified_for_domain_only(cache_dir: Path) -> None:
    strict = emb.EmbeddingAnnotator(paper_taxonomy(), min_score=0.99, cache_dir=cache_dir)
    (found,) = strict.annotate([conv("Explain how tides work.")])
    assert isinstance(found["domain"], MarkerNote) and found["domain"].value == "Unspecified"
    assert "low confidence: best Sciences" in found["domain"].reason
    assert found["task"] == "Explanation"  # task always takes its best value


def test_seed_vectors_are_cached_on_disk(ann: emb.EmbeddingAnnotator, cache_dir: Path, monkeypatch) -> None:
    assert len(list(cache_dir.glob("seeds-*.npz"))) == 1
    emb._SEED_VECTORS.clear()  # force the disk path
    # What the model encodes while the annotator is built: the behaviour, not the seconds a busy machine takes.
    encoded: list[int] = []
    real = emb.Encoder.encode
    monkeypatch.setattr(
        emb.Encoder, "encode", lambda self, texts: encoded.append(len(texts)) or real(self, texts)
    )
    again = emb.EmbeddingAnnotator(paper_taxonomy(), cache_dir=cache_dir)
    assert encoded == []  # every seed vector came from the disk cache
    prompts = ["How do interest rates affect mortgages?", "Write a bash script that deletes empty folders."]
    assert again.classify(prompts) == ann.classify(prompts)


GARDEN_TAXONOMY = """
name: garden
categories:
  domain:
    kind: categorical
    annotator: embedding
    values:
{domain_values}
      Gardening: plants, gardens, lawns, soil, compost and growing vegetables or flowers
  task:
    kind: categorical
    annotator: embedding
    values:
{task_values}
"""


def _garden_taxonomy():
    paper = paper_taxonomy()

    def block(cat: str) -> str:
        return "\n".join(f"      {v}: {paper[cat].value_descriptions[v]}" for v in paper[cat].values)

    return parse_taxonomy(GARDEN_TAXONOMY.format(domain_values=block("domain"), task_values=block("task")))


def test_user_seed_file_adds_a_value(tmp_path: Path, cache_dir: Path) -> None:
    seeds = tmp_path / "garden.jsonl"
    garden = [
        "When should I plant tomato seedlings outside?", "How do I get rid of aphids on my roses?",
        "What's the best way to start a compost heap?", "My lawn has yellow patches, what's wrong with it?",
        "Which vegetables grow well in shady raised beds?", "How often should I water potted lavender?",
        "Is it too late to prune my apple tree in March?", "What flowers attract bees to a small balcony garden?",
    ]  # fmt: skip
    seeds.write_text("".join(json.dumps({"text": t, "category": "domain", "value": "Gardening"}) + "\n"
                             for t in garden))  # fmt: skip
    ann = emb.EmbeddingAnnotator(_garden_taxonomy(), extra_seeds_path=seeds, cache_dir=cache_dir)
    preds = ann.classify(["My hydrangea leaves are turning brown at the edges. What should I do?",
                          "How deep should I plant tulip bulbs?"])  # fmt: skip
    assert [p["domain"].value for p in preds] == ["Gardening", "Gardening"]
    # The packaged seeds still apply to the other values.
    (code,) = ann.classify(["Fix the bug in this Java loop: for (int i = 0; i <= n; i++) a[i] = 0;"])
    assert code["domain"].value == "Code"


def test_user_seeds_fill_a_new_category(tmp_path: Path, cache_dir: Path) -> None:
    tax = parse_taxonomy(
        "name: audience\ncategories:\n  audience:\n    kind: categorical\n    values:\n"
        '      Kids: ""\n      Experts: ""\n'
    )
    seeds = tmp_path / "audience.jsonl"
    rows = [("Explain rainbows so my 6-year-old understands", "Kids"),
            ("Tell a bedtime story for a toddler about a sleepy bunny", "Kids"),
            ("Make a fun quiz about animals for primary school children", "Kids"),
            ("Give a rigorous derivation of the Navier-Stokes equations", "Experts"),
            ("Compare the asymptotic complexity of Fibonacci heaps and pairing heaps", "Experts"),
            ("Discuss identification strategies for instrumental variables in panel data", "Experts")]  # fmt: skip
    seeds.write_text(
        "".join(json.dumps({"text": t, "category": "audience", "value": v}) + "\n" for t, v in rows)
    )
    ann = emb.EmbeddingAnnotator(tax, categories=("audience",), extra_seeds_path=seeds, cache_dir=cache_dir)
    preds = ann.classify(["Write a silly song for kindergarten kids about brushing teeth",
                          "Prove the spectral theorem for compact self-adjoint operators"])  # fmt: skip
    assert [p["audience"].value for p in preds] == ["Kids", "Experts"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"text": "Plant roses in autumn?", "category": "domain", "value": "Gardening"},
         "bad.jsonl:2: value: domain: unknown value 'Gardening'"),
        ({"text": "Hello", "category": "topic", "value": "Code"}, "bad.jsonl:2: category: unknown category 'topic'"),
        ({"text": "", "category": "task", "value": "Rewrite"}, "bad.jsonl:2: text: expected a non-empty string"),
        ({"text": "Hi", "category": "length_tokens", "value": 3},
         "bad.jsonl:2: category: 'length_tokens' is int, not categorical"),
        ({"category": "task", "value": "Rewrite"}, "bad.jsonl:2: text: missing"),
        ("{not json", "bad.jsonl:2: invalid JSON"),
    ],
)  # fmt: skip
def test_bad_seed_file_names_file_line_and_field(tmp_path: Path, line: dict | str, expected: str) -> None:
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"text": "Make this sentence shorter.", "category": "task", "value": "Rewrite"})
    bad.write_text(good + "\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(RecordError) as e:
        emb.EmbeddingAnnotator(paper_taxonomy(), extra_seeds_path=bad)
    msg = str(e.value)
    assert expected in msg and msg.startswith(str(bad)) and "\n" not in msg


def test_category_without_seeds_is_an_error() -> None:
    tax = parse_taxonomy(
        "name: t\ncategories:\n  mood:\n    kind: categorical\n    values:\n      Up: happy\n"
    )
    with pytest.raises(TaxonomyError, match="mood: no labelled seed examples"):
        emb.EmbeddingAnnotator(tax, categories=("mood",))
    with pytest.raises(TaxonomyError, match="categorical"):
        emb.EmbeddingAnnotator(paper_taxonomy(), categories=("quality",))


def test_packaged_seeds_are_valid_and_cover_every_value() -> None:
    tax = paper_taxonomy()
    seeds = emb.read_seeds(emb.default_seeds_path(), tax, strict=True)
    for cat in ("domain", "task"):
        counts = {v: sum(s.category == cat and s.value == v for s in seeds) for v in tax[cat].values}
        assert min(counts.values()) >= 12, counts


@pytest.mark.skipif(
    not (SHARED / "prompts" / "mt_bench_question.jsonl").is_file(), reason="no ../shared/data"
)
def test_mt_bench_accuracy(ann: emb.EmbeddingAnnotator) -> None:
    spec = importlib.util.spec_from_file_location(
        "embedding_accuracy", REPO / "bench" / "embedding_accuracy.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # the category mapping lives there, with the benchmark
    questions = bench.load_mt_bench(SHARED)
    preds = ann.classify([q["turns"][0] for q in questions])
    for cat, minimum in MT_BENCH_MIN.items():
        acc, _, per = bench.mt_bench_accuracy([p[cat].value for p in preds], questions, cat)
        assert acc >= minimum, (cat, acc, per)
