"""The embedding annotator's labelled development set and the leave-one-source-out split of
bench/annotator_generalisation.py: no prompt of the held-out source reaches the classifier's training data or its
seeds, and the packaged classifier never trains on the source the bench reports last."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from treasure.annotate import embedding as emb
from treasure.taxonomy import paper_taxonomy

REPO = Path(__file__).resolve().parents[1]


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text).strip().lower()


def _bench():
    spec = importlib.util.spec_from_file_location(
        "annotator_generalisation", REPO / "bench" / "annotator_generalisation.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return emb.read_labelled()


def test_labelled_set_is_valid(rows: list[dict]) -> None:
    tax = paper_taxonomy()
    assert len(rows) >= 300
    assert len({(r["source"], r["id"]) for r in rows}) == len(rows)
    assert {r["source"] for r in rows} == {"arena_hard", "ifeval", "mt_bench", "oasst", "humanevalpack",
                                           "language_confusion"}  # fmt: skip
    for r in rows:
        for cat in ("domain", "task"):
            assert r[cat] in tax[cat].values, r["id"]
            assert all(v in tax[cat].values for v in r.get(f"{cat}_also", ())), r["id"]
        assert r["prompt"].strip() and len(r["prompt"]) <= 2000


def _leaks(held_out: list[dict], texts: list[str]) -> list[str]:
    """Held-out prompts equal to a training text, or whose first 80 normalised characters appear in one."""
    train = [_norm(t) for t in texts]
    joined = "\n".join(train)
    out = []
    for r in held_out:
        p = _norm(r["prompt"])
        if p in train or (len(p) >= 40 and p[:80] in joined):
            out.append(r["id"])
    return out


def test_seeds_hold_no_labelled_prompt(rows: list[dict]) -> None:
    seeds = [s.text for s in emb.read_seeds(emb.default_seeds_path(), paper_taxonomy())]
    assert _leaks(rows, seeds) == []


def test_leave_one_source_out_trains_without_the_held_out_source(rows: list[dict]) -> None:
    bench = _bench()
    for source in bench.order_sources(rows):
        train = [r for r in rows if r["source"] != source]
        held_out = [r for r in rows if r["source"] == source]
        assert held_out and not {r["source"] for r in train} & {source}
        # What the annotator's heads would fit on for this fold (seeds, descriptions, labelled prompts), read
        # through the same method the annotator uses; the encoder is not needed for that.
        ann = emb.EmbeddingAnnotator.__new__(emb.EmbeddingAnnotator)
        ann.taxonomy, ann.labelled = paper_taxonomy(), train
        ann.seeds = emb.read_seeds(emb.default_seeds_path(), ann.taxonomy)
        ann._user_seeds = set()
        texts = [t for cat in ("domain", "task") for t in ann._examples(cat)[0]]
        assert _leaks(held_out, texts) == [], source
    assert bench.order_sources(rows)[-1] == bench.LAST


def test_packaged_training_data_leaves_out_the_source_reported_last(rows: list[dict]) -> None:
    bench = _bench()
    assert bench.LAST in emb.TRAIN_EXCLUDED_SOURCES
    packaged = [r for r in rows if r["source"] not in emb.TRAIN_EXCLUDED_SOURCES]
    last = [r for r in rows if r["source"] == bench.LAST]
    assert last and _leaks(last, [r["prompt"] for r in packaged]) == []


def test_translation_only_when_asked() -> None:
    assert emb.asks_to_translate("Translate this into German: good morning")
    assert emb.asks_to_translate("Traduis ce texte en anglais : bonjour")
    assert emb.asks_to_translate("把这句话翻译成英文")
    assert not emb.asks_to_translate("Escribe un cuento corto sobre un dragón")
    assert not emb.asks_to_translate("Viết một bài đăng trên blog về dịch vụ khách hàng")


def test_request_text_puts_a_trailing_request_first() -> None:
    code = "def f(x):\n    return x + 1\n" * 20
    assert emb.request_text(code + "\nFix bugs in f.").startswith("Fix bugs in f.")
    assert emb.request_text("Write a poem about the sea.") == "Write a poem about the sea."


def test_llm_fewshot_holds_no_prompt_of_the_held_out_source(rows: list[dict], tmp_path: Path) -> None:
    """bench/llm_annotator_generalisation.py: the few-shot examples of a fold come from the other sources only."""
    import json
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(
        "llm_annotator_generalisation", REPO / "bench" / "llm_annotator_generalisation.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for source in mod.order_sources(rows):
        train = [r for r in rows if r["source"] != source]
        path = tmp_path / f"{source}.jsonl"
        counts = mod.write_fewshot(path, train, source, 6)
        assert counts == {"domain": 6, "task": 6}
        shots = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [m["content"] for s in shots for m in s["messages"] if m["content"]]
        assert _leaks([r for r in rows if r["source"] == source], texts) == [], source
