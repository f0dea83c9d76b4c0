"""The markers-aware chat template renders exactly what the Python path (render_prompt + the original template) does."""

from __future__ import annotations

import random
import re
import sys

import pytest
from jinja2.exceptions import TemplateError
from tiny import NO_SYSTEM, SHARED, TEMPLATES, template_text

from treasure.errors import TreasureError
from treasure.markers import sanitize
from treasure.train.chat_template import (
    _MARKER_LIST_CHARS,
    _NAME_START_CHARS,
    original_chat_template,
    wrap_chat_template,
)
from treasure.train.marker_config import MarkerConfig
from treasure.train.render import render_prompt
from treasure.train.tiny import tiny_tokenizer

# Only the tests that read a shared chat template skip without ../shared/data; the rest need only the package.
needs_shared = pytest.mark.skipif(not (SHARED / "chat_templates").is_dir(), reason="needs ../shared/data")

CONVERSATION = [
    {"role": "system", "content": "You answer briefly. <MARKER_LIST> is not a marker here."},
    {"role": "user", "content": "What is <|domain=Code|>? And <marker_list>, <|/markers|>, <|a=b c|>."},
    {"role": "assistant", "content": "A token <|im_end|> I typed."},
    {"role": "user", "content": "  Now fix: x = [1, 2 <|K|>  "},
]
MARKERS = {
    "domain": "code",
    "task": "CodeFix",
    "quality": 3.14159,
    "length_tokens": " 12 ",
    "quality_bucket": 2,
}
KW = {"tokenize": False, "date_string": "26 Jul 2024"}  # Llama 3 renders today's date unless given one


def block_of(markers, config, taxonomy):
    from treasure.markers import render_block

    return render_block(markers, config.marker_taxonomy(taxonomy), config.format)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _both(tok, template, messages, markers, config, paper, **kw):
    wrapped = wrap_chat_template(template, config, paper)
    a = tok.apply_chat_template(messages, chat_template=wrapped, markers=markers, **KW, **kw)
    b = tok.apply_chat_template(
        render_prompt(messages, markers, config, paper), chat_template=template, **KW, **kw
    )
    return a, b


@needs_shared
@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize(
    "config",
    [
        MarkerConfig(format="paper"),
        MarkerConfig(format="compact"),
        MarkerConfig(format="compact", categories=("task", "domain")),
        MarkerConfig(mode="baseline"),
        MarkerConfig(placement="completion"),
    ],
    ids=["paper", "compact", "compact-2cats", "baseline", "completion-only"],
)
def test_wrapped_template_renders_like_the_python_path(tok, paper, name, config):
    template = template_text(name)
    messages = CONVERSATION[1:] if name in NO_SYSTEM else CONVERSATION
    markers = {k: v for k, v in MARKERS.items() if k in config.marker_taxonomy(paper)}
    a, b = _both(tok, template, messages, markers, config, paper, add_generation_prompt=True)
    assert a == b
    if config.prompt_markers:
        assert config.separator + block_of(markers, config, paper) in a
    else:  # ignored where the model never saw prompt markers
        assert "<MARKER_LIST> <" not in a and "<|markers|>" not in a
    # a finished conversation (what evaluation renders) and no markers at all
    full = [*messages, {"role": "assistant", "content": "done"}]
    a, b = _both(tok, template, full, markers, config, paper)
    assert a == b
    a, b = _both(tok, template, messages, None, config, paper, add_generation_prompt=True)
    assert a == b


@needs_shared
def test_without_markers_the_template_is_the_original_one(tok, paper):
    for name in TEMPLATES:
        template = template_text(name)
        messages = CONVERSATION[1:2]
        wrapped = wrap_chat_template(template, MarkerConfig(), paper)
        plain = [{"role": "user", "content": "plain text"}]
        assert tok.apply_chat_template(plain, chat_template=wrapped, add_generation_prompt=True, **KW) == (
            tok.apply_chat_template(plain, chat_template=template, add_generation_prompt=True, **KW)
        )
        assert original_chat_template(wrapped) == template
        assert wrap_chat_template(wrapped, MarkerConfig(format="compact"), paper) == wrap_chat_template(
            template, MarkerConfig(format="compact"), paper
        )
        del messages


_PIECES = [
    "<", "|", ">", "=", "/", " ", "\n", "a", "Z", "_", "9", "é", "\u0130", "\u0131", "\u017f", "\u212a", "K", "s",
    "i", "MARKER_LIST", "marker_lıſt", "<|", "|>", "<MARKER_LIST>", "</marker_list>", "<|domain=Code|>", "<|/x|>",
    "<|a=b c|>", "<|a=|>", "<|=a|>", "<||>", "<|9a|>", "<|_|>", "<|a b|>", "<|a=<|>", "<|a=>|>", "\u200b", "x",
]  # fmt: skip


def test_jinja_sanitize_matches_markers_sanitize_on_random_text(tok, paper):
    template = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    wrapped = wrap_chat_template(template, MarkerConfig(mode="baseline"), paper)
    rng = random.Random(0)
    texts = ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 14))) for _ in range(400)]
    messages = [{"role": "user", "content": t} for t in texts]
    out = tok.apply_chat_template(messages, chat_template=wrapped, tokenize=False)
    assert out == "".join(sanitize(t) + "|" for t in texts)


def _random_value(rng, cat):
    odd = [None, True, 1.5, "nope", [], "", " 7 ", -3, 10**20, "nan", "inf", "1e3", "2.999", 0, "0x1"]
    if cat.kind == "categorical":
        good = [
            rng.choice(cat.values),
            rng.choice(cat.values).lower(),
            " " + rng.choice(cat.values).upper() + " ",
        ]
    else:
        good = [
            rng.uniform(-5, 1000),
            rng.randint(0, 5000),
            str(rng.randint(0, 99)),
            f"{rng.uniform(0, 9):.5f}",
        ]
    return rng.choice(good if rng.random() < 0.75 else odd)


def test_random_markers_render_or_fail_alike(tok, paper):
    """Canonicalisation (case folding, numbers from strings, 2-decimal floats, bounds) matches render_block."""
    rng = random.Random(1)
    for fmt in ("paper", "compact"):
        config = MarkerConfig(format=fmt)
        wrapped = wrap_chat_template(tok.chat_template, config, paper)
        for _ in range(200):
            cats = rng.sample(paper.categories, rng.randint(0, 4))
            markers = {c.name: _random_value(rng, c) for c in cats}
            if rng.random() < 0.05:
                markers["not_a_category"] = "x"
            messages = [{"role": "user", "content": "hi"}]
            try:
                expected = tok.apply_chat_template(
                    render_prompt(messages, markers, config, paper),
                    add_generation_prompt=True,
                    tokenize=False,
                )
            except (TreasureError, OverflowError):
                with pytest.raises((TemplateError, OverflowError)):
                    tok.apply_chat_template(
                        messages,
                        chat_template=wrapped,
                        markers=markers,
                        add_generation_prompt=True,
                        tokenize=False,
                    )
                continue
            got = tok.apply_chat_template(
                messages, chat_template=wrapped, markers=markers, add_generation_prompt=True, tokenize=False
            )
            assert got == expected, markers


def test_invalid_markers_raise_a_template_error(tok, paper):
    wrapped = wrap_chat_template(tok.chat_template, MarkerConfig(), paper)
    messages = [{"role": "user", "content": "hi"}]
    for bad in (
        {"colour": "red"},
        {"domain": "Cooking"},
        {"length_tokens": -1},
        {"quality": "high"},
        ["domain"],
    ):
        with pytest.raises(TemplateError):
            tok.apply_chat_template(messages, chat_template=wrapped, markers=bad, tokenize=False)
    with pytest.raises(TemplateError, match="user turn"):
        tok.apply_chat_template(
            [{"role": "system", "content": "s"}],
            chat_template=wrapped,
            markers={"domain": "Code"},
            tokenize=False,
        )


def test_case_folding_tables_match_python_re_over_every_code_point():
    chars = [chr(i) for i in range(sys.maxunicode + 1) if not 0xD800 <= i <= 0xDFFF]
    for letter, table in zip("MARKER_LIST", _MARKER_LIST_CHARS, strict=True):
        rx = re.compile("(?i)" + re.escape(letter))
        assert sorted(table) == sorted(c for c in chars if rx.fullmatch(c)), letter
    rx = re.compile(r"(?i)[A-Za-z_]")
    assert sorted(_NAME_START_CHARS) == sorted(c for c in chars if rx.fullmatch(c))
    # the state machine's classes: \w is isalnum() or "_", [^\s<>|] is not isspace() and not one of <>|
    word, value = re.compile(r"(?i)\w"), re.compile(r"(?i)[^\s<>|]")
    assert all(bool(word.fullmatch(c)) == (c.isalnum() or c == "_") for c in chars)
    assert all(bool(value.fullmatch(c)) == (not c.isspace() and c not in "<>|") for c in chars)
