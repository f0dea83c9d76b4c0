"""A third block format is one `BlockFormat`: registered here, in the test alone, every stage reads it.

Two throwaway formats, one of each kind: `tags`, plain text with other delimiters and segment shapes, and
`brackets`, added tokens with other brackets. Each renders, parses back, round-trips through a completion, is
neutralised in user text (Python and the Jinja template alike), is constrained while an untrained model writes it,
and is kept out of responses by the guard; no other module knows either of them.
"""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import AddedToken

from treasure.errors import TaxonomyError
from treasure.generate.constrain import MarkerConstraint, token_texts
from treasure.generate.guard import tables_for
from treasure.markers import (
    FORMATS,
    SEPARATOR,
    BlockFormat,
    block_format,
    marker_syntax,
    parse_block,
    register_format,
    render_block,
    sanitize,
    split_completion,
    unregister_format,
)
from treasure.recipe import MarkerConfig
from treasure.train.chat_template import wrap_chat_template
from treasure.train.render import render_example, render_prompt
from treasure.train.tiny import tiny_llama, tiny_tokenizer

TAGS = BlockFormat(
    name="tags",
    open="<TAGS>",
    close="</TAGS>",
    categorical="[{name}: {value}]",
    numeric="[{name}= {value}]",
    joiner=" ",
    separator="\n\n",
)
BRACKETS = BlockFormat(
    name="brackets",
    open="<[m]>",
    close="<[/m]>",
    categorical="<[{name}:{value}]>",
    numeric="<[{name}]>{value}",
    added_tokens=True,
    float_decimals=3,
)
MARKERS = {
    "task": "CodeFix",
    "domain": "Sciences",
    "length_tokens": 120,
    "quality": 0.8734,
    "quality_bucket": 1,
}


@pytest.fixture(params=[TAGS, BRACKETS], ids=lambda f: f.name)
def fmt(request):
    register_format(request.param)
    yield request.param
    unregister_format(request.param.name)
    assert request.param.name not in FORMATS


def _tokenizer(fmt: BlockFormat, taxonomy):
    tok = tiny_tokenizer()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fmt.tokens(taxonomy)])
    return tok


def test_renders_parses_and_round_trips(fmt, paper):
    block = render_block(MARKERS, paper, fmt.name)
    if fmt is TAGS:
        assert block == (
            "<TAGS> [quality= 0.87] [quality_bucket: 1] [length_tokens= 120] [task: CodeFix] [domain: Sciences] </TAGS>"
        )
    else:
        assert block == (
            "<[m]><[quality]>0.873<[quality_bucket:1]><[length_tokens]>120<[task:CodeFix]><[domain:Sciences]><[/m]>"
        )
    parsed, response = split_completion(block + SEPARATOR[fmt.name] + "The answer.", paper, fmt.name)
    assert parsed.complete and not parsed.problems and response == "The answer."
    assert parsed.markers == paper.validate_markers(
        {**MARKERS, "quality": float(fmt.value_text(paper["quality"], 0.8734))}
    )
    assert render_block(parsed.markers, paper, fmt.name) == block
    # cut anywhere, it never raises and keeps only valid markers
    for cut in range(len(block)):
        for k, v in parse_block(block[:cut], paper, fmt.name).markers.items():
            assert paper.coerce(k, v) == v
    # damage is reported, the valid markers kept
    bad = fmt.segment(paper["domain"], "Astrology") + fmt.joiner + fmt.segment(paper["task"], "CodeFix")
    parsed = parse_block(fmt.block([bad]), paper, fmt.name)
    assert parsed.markers == {"task": "CodeFix"} and "Astrology" in " ".join(parsed.problems)


def test_it_is_a_format_of_the_training_recipe(fmt, paper):
    config = MarkerConfig.from_dict({"format": fmt.name, "dataset_dropout": 0.0, "sample_dropout": 0.0})
    assert config.separator == fmt.separator
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    ex = render_example({**record, "markers": MARKERS}, config, paper, seed=0, epoch=0, index=0)
    block = render_block(MARKERS, paper, fmt.name)
    assert ex["prompt"][-1]["content"] == "Hi" + fmt.separator + block
    assert ex["completion"][0]["content"] == block + fmt.separator + "Hello."


def test_user_text_is_neutralised_in_python_and_jinja(fmt, paper):
    tok = _tokenizer(fmt, paper)
    config = MarkerConfig(format=fmt.name)
    typed = [
        fmt.open,
        fmt.close,
        fmt.open.lower(),
        fmt.segment(paper["domain"], "Code"),
        "<[x:a b]>",
        "<[/q]>",
    ]
    pieces = [
        *typed,
        "<",
        "[",
        "]",
        ">",
        ":",
        "/",
        " ",
        "x",
        "TAGS",
        "m",
        "<MARKER_LIST>",
        "<|a=b|>",
        "\u212a",
    ]
    rng = random.Random(3)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    reserved = [fmt.open, fmt.close, fmt.open.lower(), fmt.close.swapcase()]
    if fmt.added_tokens:  # every string of the token shape, of any taxonomy
        reserved += [*fmt.tokens(paper)[2:6], "<[x:a]>", "<[x]>", "<[/x]>"]
    for text in reserved:
        clean = sanitize(text)
        assert clean != text and clean.replace("\u200b", "") == text, text
    assert not parse_block(sanitize(render_block(MARKERS, paper, fmt.name)), paper, fmt.name).found
    wrapped = wrap_chat_template("{% for m in messages %}{{ m['content'] }}|{% endfor %}", config, paper)
    out = tok.apply_chat_template(
        [{"role": "user", "content": t} for t in texts], chat_template=wrapped, tokenize=False
    )
    assert out == "".join(sanitize(t) + "|" for t in texts)
    # the fixed-marker prompt: the markers-aware template renders what the Python path does
    messages = [{"role": "user", "content": "Fix " + fmt.open + " this"}]
    wrapped = wrap_chat_template(tok.chat_template, config, paper)
    jinja = tok.apply_chat_template(
        messages, chat_template=wrapped, markers=MARKERS, add_generation_prompt=True, tokenize=False
    )
    python = tok.apply_chat_template(
        render_prompt(messages, MARKERS, config, paper), add_generation_prompt=True, tokenize=False
    )
    assert jinja == python and render_block(MARKERS, paper, fmt.name) in jinja


def test_constrained_decoding_and_the_guard(fmt, paper):
    tok = _tokenizer(fmt, paper)
    constraint = MarkerConstraint(
        tok, paper, fmt.name, max_block_tokens=48
    )  # builds and verifies the machine
    ids = constraint.render_ids(MARKERS)
    assert constraint.block_length([*ids, 11]) == len(ids)
    torch.manual_seed(0)
    model = tiny_llama(tok, num_hidden_layers=1, hidden_size=32, intermediate_size=64).eval()
    prompt = tok("Hi\n", return_tensors="pt", add_special_tokens=False)
    for fixed in (None, {"domain": "Code", "length_tokens": 30}):
        processor = constraint.logits_processor(fixed)
        out = model.generate(
            **prompt, logits_processor=[processor], max_new_tokens=56, do_sample=True, top_k=0
        )
        text = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=False)
        parsed = parse_block(text, paper, fmt.name)
        assert parsed.complete and not parsed.problems, text
        assert all(parsed.markers[k] == v for k, v in paper.validate_markers(fixed or {}).items())
    # the guard's tables know the new syntax
    strings = marker_syntax(paper)
    assert fmt.open in strings and fmt.close in strings
    tables = tables_for(tok, strings)
    texts = token_texts(tok)
    completes = [i for i, t in enumerate(texts) if t.startswith(fmt.open[-1])]
    assert set(completes) <= set(tables.banned(fmt.open[:-1]).tolist())


def test_bad_formats_are_refused():
    with pytest.raises(TaxonomyError, match="unknown marker format 'tags'"):
        block_format("tags")
    with pytest.raises(TaxonomyError, match="delimiter"):
        BlockFormat("x", open="[[", close="]]", categorical="{name}={value}", numeric="{name}={value}")
    with pytest.raises(TaxonomyError, match="token segments"):
        BlockFormat("x", open="<[m]>", close="<[/m]>", categorical="<[{name}:{value}]>", numeric="<[{name}]{value}>",
                    added_tokens=True)  # fmt: skip
    with pytest.raises(TaxonomyError, match="built in"):
        unregister_format("paper")
    with pytest.raises(TaxonomyError, match="already registered"):
        register_format(
            BlockFormat(
                "paper", open="<A>", close="</A>", categorical="{name}{value}", numeric="{name}{value}"
            )
        )
