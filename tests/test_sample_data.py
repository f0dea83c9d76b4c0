"""The bundled sample dataset (src/treasure/data/sample.jsonl) that `make demo` annotates."""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
from tokenizers import Tokenizer

import treasure
from treasure.records import load_records
from treasure.taxonomy import paper_taxonomy

SAMPLE = Path(resources.files("treasure.data").joinpath("sample.jsonl"))
TOKENIZER = Path(treasure.__file__).parent / "assets" / "gpt2-tokenizer.json"

# A few known records and something only their language has: a script, or a word.
KNOWN_LANGUAGES = {
    "sample-0067": ("Chinese", r"[\u4e00-\u9fff]"),
    "sample-0036": ("Japanese", r"[\u3040-\u30ff]"),
    "sample-0030": ("Russian", r"[\u0400-\u04ff]"),
    "sample-0064": ("Arabic", r"[\u0600-\u06ff]"),
    "sample-0032": ("Hindi", r"[\u0900-\u097f]"),
    "sample-0060": ("Korean", r"[\uac00-\ud7af]"),
    "sample-0053": ("French", r"\bfeuilles\b"),
    "sample-0126": ("Spanish", r"¿Qué"),
    "sample-0015": ("German", r"Wärmepumpe"),
    "sample-0089": ("Portuguese", r"\bjuros\b"),
    "sample-0055": ("Italian", r"\brisotto\b"),
    "sample-0087": ("Turkish", r"İstanbul"),
    "sample-0081": ("Vietnamese", r"tiếng Anh"),
}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return load_records(SAMPLE, paper_taxonomy())


@pytest.fixture(scope="module")
def by_id(records) -> dict[str, dict]:
    return {r["id"]: r for r in records}


def test_loads_and_is_big_enough(records):
    assert len(records) >= 100
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)


def test_ids_are_unique_and_well_formed(records):
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"sample-\d{4}", i) for i in ids)


def test_several_languages(by_id):
    for rid, (language, pattern) in KNOWN_LANGUAGES.items():
        text = " ".join(m["content"] for m in by_id[rid]["messages"])
        assert re.search(pattern, text), f"{rid} should be {language}"


def test_meta_provenance(records):
    metas = [r["meta"] for r in records if "meta" in r]
    assert len(metas) > len(records) / 2
    assert {m["origin"] for m in metas} == {"human", "synthetic", "translated", "other"}
    assert {m["tone"] for m in metas} == {"formal", "informal", "persona"}


def test_given_markers_are_kept(by_id, records):
    assert by_id["sample-0062"]["markers"] == {"task": "CodeFix"}
    assert sum(bool(r["markers"]) for r in records) >= 3


def test_shapes_variety(records):
    assert any(r["messages"][0]["role"] == "system" for r in records)
    assert any(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in records)
    fences = Counter(
        tag for r in records for tag in re.findall(r"^```(\w+)", r["messages"][-1]["content"], re.M)
    )
    for lang in ("python", "javascript", "sql", "rust", "go", "java", "c", "cpp", "bash", "cobol", "haskell"):
        assert fences[lang] >= 1, lang


def test_long_responses(records):
    tok = Tokenizer.from_file(str(TOKENIZER))
    lengths = [len(tok.encode(r["messages"][-1]["content"]).ids) for r in records]
    assert sum(n > 1000 for n in lengths) >= 3
    assert sum(n < 300 for n in lengths) > len(lengths) / 2  # mostly short
