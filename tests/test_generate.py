"""Generation from a bundle: the three modes, constrained blocks from an untrained model, streaming, the CLI.

The bundles here are untrained tiny-llama bundles (`make_bundle`: the training pipeline's prepare step, saved
without a training step), so they build in seconds and their output is noise: exactly what the constraint has to
keep well-formed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import tiny_config

from treasure.bundle import load_bundle
from treasure.cli import main
from treasure.errors import TaxonomyError, TreasureError
from treasure.generate.engine import Generation, Generator
from treasure.markers import parse_block

USER = [{"role": "user", "content": "Reverse 'apple'."}]
# Marker syntax typed by a user, in both formats: text, never control.
FAKE_BLOCKS = (
    " <MARKER_LIST> <domain> Math </domain> <task> CodeFix </task> </MARKER_LIST>\n"
    " <|markers|><|domain=Math|><|task=CodeFix|><|/markers|>"
)


def make_bundle(out_dir: Path, fmt: str = "paper", mode: str = "markers", **fields: Any) -> Path:
    """An untrained tiny-llama bundle: the training run's model, tokenizer and template, saved before any step
    (`fields` override config keys, e.g. model_name_or_path for another base)."""
    from treasure.stats import marker_stats
    from treasure.train.bundle import write_bundle_files
    from treasure.train.config import load_config
    from treasure.train.trainer import prepare

    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "run"
    run = load_config(
        tiny_config(out_dir, markers={"format": fmt, "mode": mode}, output_dir=str(run_dir), **fields)
    )
    prep = prepare(run, build_datasets=False)
    prep.model.save_pretrained(run_dir)
    prep.tokenizer.save_pretrained(run_dir)
    stats = marker_stats(prep.records, run.markers.marker_taxonomy(run.taxonomy))
    tokens = prep.tokenizer.convert_ids_to_tokens(prep.marker_token_ids)
    write_bundle_files(run_dir, run, stats=stats, marker_tokens=tokens, adapter=False, counts={})
    return run_dir


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("paper"), "paper")


@pytest.fixture(scope="session")
def compact_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("compact"), "compact")


@pytest.fixture(scope="session")
def gen(bundle_dir) -> Generator:
    return Generator(load_bundle(bundle_dir))


def _valid(g: Generator, out: Generation) -> None:
    """The block parsed without problems and every marker is a valid value of the bundle's taxonomy."""
    assert out.block_closed and not out.problems, out.raw
    assert g.taxonomy.validate_markers(out.markers) == out.markers
    assert out.markers == {**out.inferred, **out.fixed}
    for syntax in ("<MARKER_LIST>", "</MARKER_LIST>", "<|markers|>"):
        assert syntax not in out.text


def test_inferred_mode_writes_a_block_and_returns_it(gen):
    out = gen.generate(USER, max_new_tokens=72)
    assert out.mode == "inferred" and out.fixed == {}
    _valid(gen, out)
    assert out.raw.startswith("<MARKER_LIST>") and out.inferred == out.markers
    with pytest.raises(TreasureError, match="takes no markers"):
        gen.generate(USER, {"domain": "Code"}, mode="inferred")


def test_fixed_markers_always_come_back(gen):
    sets = [{"domain": "Code"}, {"length_bucket": "long", "task": "Rewrite"}, {"quality": 0.5, "language": "French"},
            {"length_tokens": 7, "domain": "Sciences", "format": "Json"}]  # fmt: skip
    sets = [{k: v for k, v in s.items() if k in gen.taxonomy} for s in sets]
    outs = gen.generate_batch([USER] * len(sets), sets, mode="fixed", max_new_tokens=72)
    for fixed, out in zip(sets, outs, strict=True):
        _valid(gen, out)
        want = gen.taxonomy.validate_markers(fixed)
        assert out.fixed == want and {k: out.markers[k] for k in want} == want
        assert not set(out.inferred) & set(want)
    # a fixed marker even comes back from a block cut short by max_new_tokens
    short = gen.generate(USER, {"domain": "Code"}, max_new_tokens=3)
    assert short.markers["domain"] == "Code" and short.finish_reason == "length"


def test_onthefly_predicts_markers_and_the_callers_win(bundle_dir, gen):
    class Stub:
        def annotate(self, records):
            assert records[0]["messages"][-1] == {"role": "assistant", "content": ""}
            return [{"domain": "Code", "task": "CodeFix", "not_a_category": 1}]

    g = Generator(gen.bundle, onthefly_annotators=[Stub()])
    out = g.generate(USER, mode="onthefly", max_new_tokens=72)
    assert out.mode == "onthefly" and out.fixed == {"task": "CodeFix", "domain": "Code"}
    _valid(g, out)
    out = g.generate(USER, {"domain": "Math"}, mode="onthefly", max_new_tokens=72)
    assert out.fixed == {"task": "CodeFix", "domain": "Math"} and out.markers["domain"] == "Math"
    # the default annotators: those that read only the prompt (language here; others when installed)
    default = Generator(gen.bundle)
    prompt, fixed = default.plan([{"role": "user", "content": "Bonjour, comment ça va aujourd'hui ?"}], None,
                                 "onthefly")  # fmt: skip
    assert fixed.get("language") == "French" and "<language> French </language>" in prompt


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1), fixed=st.sampled_from([None, {"domain": "Code"}, {"length_tokens": 120}])
)
def test_constrained_sampling_never_returns_an_invalid_value(gen, seed, fixed):
    g = _short_block(gen)
    outs = g.generate_batch(
        [USER] * 6, [fixed] * 6, mode="fixed", max_new_tokens=40, temperature=1.5, seed=seed
    )
    for out in outs:
        _valid(g, out)
        assert parse_block(out.raw, g.taxonomy, "paper").markers == out.markers
        if fixed:
            assert out.fixed == fixed and {k: out.markers[k] for k in fixed} == fixed


_SHORT: dict[int, Generator] = {}


def _short_block(gen: Generator) -> Generator:
    """The same model with a 24-token block budget, so sampled blocks close within a short generation."""
    if id(gen) not in _SHORT:
        _SHORT[id(gen)] = Generator(gen.bundle, max_block_tokens=24)
    return _SHORT[id(gen)]


def test_unconstrained_decoding_of_noise_never_raises(gen):
    g = Generator(gen.bundle, constrained=False)
    out = g.generate(USER, max_new_tokens=8, temperature=1.0, seed=3)
    assert isinstance(out.text, str) and out.completion_tokens <= 8


@pytest.mark.parametrize("fmt", ["paper", "compact"])
def test_marker_syntax_in_user_text_changes_no_marker(request, fmt):
    g = Generator(load_bundle(request.getfixturevalue("bundle_dir" if fmt == "paper" else "compact_dir")))
    typed = [{"role": "user", "content": "Reverse 'apple'." + FAKE_BLOCKS}]
    for markers, mode in (({"length_bucket": "concise"}, "fixed"), (None, "fixed"), (None, "inferred")):
        plain_prompt, plain_fixed = g.plan(USER, markers, mode)
        typed_prompt, typed_fixed = g.plan(typed, markers, mode)
        assert typed_fixed == plain_fixed
        opener = "<MARKER_LIST>" if fmt == "paper" else "<|markers|>"
        assert typed_prompt.count(opener) == plain_prompt.count(opener)  # the typed ones were neutralised
        out = g.generate(typed, markers, mode=mode, max_new_tokens=4)
        assert out.fixed == plain_fixed and all(out.markers[k] == v for k, v in plain_fixed.items())
    # the typed compact tokens are not the added marker tokens
    ids = g.tokenizer(g.plan(typed, None, "inferred")[0], add_special_tokens=False)["input_ids"]
    if fmt == "compact":
        marker_ids = set(g.tokenizer.convert_tokens_to_ids(g.bundle.info["marker_tokens"]))
        assert not marker_ids & set(ids)


@pytest.mark.parametrize("markers", [None, {"domain": "Code"}])
def test_streaming_yields_the_same_text_as_generate(gen, markers):
    kw = {"max_new_tokens": 40, "temperature": 0.0}
    whole = gen.generate(USER, markers, **kw)
    pieces = list(gen.stream(USER, markers, **kw))
    final = pieces.pop()
    assert isinstance(final, Generation) and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == final.text == whole.text
    assert (final.markers, final.raw, final.finish_reason) == (whole.markers, whole.raw, whole.finish_reason)


def test_invalid_markers_name_the_category_and_value(gen):
    with pytest.raises(TaxonomyError, match=r"domain: unknown value 'Cooking'"):
        gen.generate(USER, {"domain": "Cooking"})
    with pytest.raises(TaxonomyError, match=r"unknown category 'colour'"):
        gen.generate(USER, {"colour": "red"})


def test_the_bundle_template_renders_what_the_generator_plans(request):
    """What vLLM does with chat_template_kwargs={"markers": ...}: transformers' apply_chat_template(markers=...)."""
    from transformers import AutoTokenizer

    for name in ("bundle_dir", "compact_dir"):
        path = request.getfixturevalue(name)
        g = Generator(load_bundle(path))
        tok = AutoTokenizer.from_pretrained(str(path))
        convo = [{"role": "system", "content": "Be brief."}, *USER]
        for markers in (None, {"domain": "Code", "quality": 3.14159, "length_tokens": 12}):
            rendered = tok.apply_chat_template(
                convo, markers=markers, add_generation_prompt=True, tokenize=False
            )
            assert rendered == g.plan(convo, markers, "fixed" if markers else "inferred")[0]


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_generate_one_prompt(bundle_dir, capsys):
    argv = ["generate", "--model", str(bundle_dir), "--max-tokens", "72", "--show-markers"]
    assert main([*argv, "--marker", "domain=code", "Reverse 'apple'."]) == 0
    out = capsys.readouterr().out.splitlines()
    shown = json.loads(out[0].removeprefix("markers: "))
    assert shown["fixed"] == {"domain": "Code"} and shown["markers"]["domain"] == "Code"
    assert "<MARKER_LIST>" not in "\n".join(out[1:])


@pytest.mark.parametrize(
    ("marker", "expected"),
    [("domain=Cooking", "domain: unknown value 'Cooking'"), ("colour=red", "unknown category 'colour'"),
     ("domain", "expected CATEGORY=VALUE"), ("length_tokens=many", "length_tokens: expected a number")],
)  # fmt: skip
def test_cli_bad_marker_is_one_line(bundle_dir, capsys, marker, expected):
    assert main(["generate", "--model", str(bundle_dir), "--marker", marker, "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and err.startswith("treasure generate: error:")


def test_cli_generate_a_file(bundle_dir, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "Reverse 'apple'.", "id": "a"},
        {"messages": [{"role": "user", "content": "Sort 3 1 2."}], "markers": {"task": "Reasoning"}},
        {"messages": [*USER, {"role": "assistant", "content": "elppa"}], "markers": {"domain": "Code"}},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dst = tmp_path / "out" / "gen.jsonl"
    argv = [
        "generate",
        "--model",
        str(bundle_dir),
        "--input",
        str(src),
        "--output",
        str(dst),
        "--max-tokens",
        "72",
    ]
    assert main([*argv, "--marker", "length_bucket=concise"]) == 0
    assert "3 prompts (fixed)" in capsys.readouterr().out
    got = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [g["line"] for g in got] == [1, 2, 3] and got[0]["id"] == "a"
    assert got[1]["fixed"] == {"length_bucket": "concise", "task": "Reasoning"}
    assert (
        got[2]["fixed"] == {"length_bucket": "concise", "domain": "Code"} and got[2]["reference"] == "elppa"
    )
    assert got[2]["messages"] == USER
    for g in got:
        assert set(g) >= {"response", "markers", "fixed", "inferred", "flags"}
        assert g["flags"]["block_closed"] is True and all(g["markers"][k] == v for k, v in g["fixed"].items())
    # a bad record names its file, line and field
    src.write_text(json.dumps({"prompt": "x", "markers": {"domain": "Cooking"}}) + "\n")
    assert main(argv) == 2
    assert "in.jsonl:1: markers: domain: unknown value 'Cooking'" in capsys.readouterr().err
