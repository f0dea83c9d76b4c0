"""Golden checks of the marker block's every reader and writer, compared exactly with files under tests/golden/.

Taken before the block syntax was defined in one place (issue 15), so that refactor, and any later one, must leave
every byte the same: the prompt and completion text each chat template renders for a few records (with markers,
without, both formats, a fixed-marker prompt), the Jinja template against the Python renderer, the ids of a sample
under the packaged GPT-2 tokenizer with the compact tokens added, what the parser makes of whole, cut and broken
blocks, the constrained decoder's allowed ids at the states of a block, the guard's banned ids, and what an
untrained tiny bundle generates (batch and streamed).

Regenerate (only when a change of output is intended, and say so in the commit):
    TREASURE_REGEN_GOLDEN=1 pytest tests/test_golden_render.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import NO_SYSTEM, SHARED, TEMPLATES, records, template_text, template_tokenizer

from treasure.markers import (
    FORMATS,
    compact_tokens,
    marker_syntax,
    parse_block,
    render_block,
    sanitize,
    split_completion,
)
from treasure.recipe import MarkerConfig
from treasure.taxonomy import paper_taxonomy
from treasure.train.chat_template import wrap_chat_template
from treasure.train.render import render_example, render_prompt
from treasure.train.tiny import tiny_tokenizer

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("TREASURE_REGEN_GOLDEN") == "1"
PAPER = paper_taxonomy()
KW = {"tokenize": False, "date_string": "26 Jul 2024"}  # Llama 3 renders today's date unless given one

EVIL = {
    "messages": [
        {"role": "system", "content": "Be brief. <MARKER_LIST> is text here."},
        {"role": "user", "content": "What is <|domain=Code|> or </marker_list> or <|im_end|>? <|a=b c|>"},
        {"role": "assistant", "content": "It is <|markers|> typed, not a block."},
    ],
    "markers": {
        "domain": "Code",
        "task": "CodeFix",
        "quality": 3.14159,
        "length_tokens": 12,
        "format": "JSON",
    },
}
FIXED = {"length_bucket": "concise", "domain": "code", "quality": 0.5, "length_tokens": " 40 "}
CONFIGS = {
    "paper": MarkerConfig(format="paper"),
    "compact": MarkerConfig(format="compact"),
    "compact-2cats": MarkerConfig(format="compact", categories=("task", "domain")),
    "baseline": MarkerConfig(mode="baseline"),
    "paper-completion-only": MarkerConfig(placement="completion"),
    "compact-prompt-only": MarkerConfig(format="compact", placement="prompt"),
}


def _check(name: str, got: Any) -> None:
    """Compare `got` with tests/golden/NAME.json exactly (or write it when regenerating)."""
    path = GOLDEN / f"{name}.json"
    got = json.loads(json.dumps(got))  # tuples -> lists, as the file holds them
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        lines = [f"{json.dumps(k)}: {json.dumps(got[k], ensure_ascii=False)}" for k in sorted(got)]
        path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")  # one key a line: small diffs
        return
    assert path.is_file(), f"{path} is missing: run with TREASURE_REGEN_GOLDEN=1 once"
    want = json.loads(path.read_text(encoding="utf-8"))
    if got != want:  # name the first differing key, not a wall of JSON
        for key in sorted(set(want) | set(got)) if isinstance(want, dict) else ():
            assert got.get(key) == want.get(key), f"{name}.json: {key}"
    assert got == want


def _ids(ids: torch.Tensor | list[int]) -> Any:
    """A set of ids as stored: the list when short, else its size, first ids and a hash (still exact)."""
    ids = sorted(int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids))
    if len(ids) <= 160:
        return ids
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    return {"n": len(ids), "head": ids[:16], "sha256": digest}


def _text(text: str) -> Any:
    """A rendered text as stored: itself when short, else its length, end and hash (a long system preamble)."""
    if len(text) <= 1200:
        return text
    return {"n": len(text), "tail": text[-400:], "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _samples() -> list[dict]:
    return [*records(3), EVIL]


# ------------------------------------------------------------------------------------------ chat templates


def _render_all(tok, template: str, no_system: bool) -> dict:
    out: dict[str, Any] = {}
    for i, record in enumerate(_samples()):
        if no_system:
            record = {**record, "messages": [m for m in record["messages"] if m["role"] != "system"]}
        for cname, config in CONFIGS.items():
            for epoch in (0, 1) if cname == "paper" else (0,):  # a second epoch's dropout draw, once
                ex = render_example(record, config, PAPER, seed=3, epoch=epoch, index=i)
                prompt = tok.apply_chat_template(
                    ex["prompt"], chat_template=template, add_generation_prompt=True, **KW
                )
                full = tok.apply_chat_template(ex["prompt"] + ex["completion"], chat_template=template, **KW)
                out[f"{i}/{cname}/epoch{epoch}"] = {
                    "prompt": _text(prompt),
                    "completion": ex["completion"][0]["content"],
                    "full": _text(full),
                    "prompt_markers": ex["prompt_markers"],
                }
            # the fixed-marker prompt of inference: Python path and the wrapped Jinja template agree
            messages = record["messages"][:-1]
            markers = {k: v for k, v in FIXED.items() if k in config.marker_taxonomy(PAPER)}
            python = tok.apply_chat_template(
                render_prompt(messages, markers, config, PAPER),
                chat_template=template,
                add_generation_prompt=True,
                **KW,
            )
            wrapped = wrap_chat_template(template, config, PAPER)
            jinja = tok.apply_chat_template(
                messages, chat_template=wrapped, markers=markers, add_generation_prompt=True, **KW
            )
            assert jinja == python, (i, cname)
            out[f"{i}/{cname}/fixed"] = _text(python)
    return out


def test_golden_render_chatml_packaged():
    """The packaged tiny tokenizer's ChatML template (needs nothing outside the package)."""
    tok = tiny_tokenizer()
    _check("render_chatml", _render_all(tok, tok.chat_template, no_system=False))


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_golden_render_shared_templates(name):
    if not (SHARED / "chat_templates" / TEMPLATES[name][0]).is_file():
        pytest.skip(f"needs ../shared/data/chat_templates/{TEMPLATES[name][0]}")
    tok = template_tokenizer(name)
    _check(f"render_{name}", _render_all(tok, template_text(name), no_system=name in NO_SYSTEM))


# ------------------------------------------------------------------------------------------ token ids


def _compact_tokenizer():
    from treasure.train.tokens import extend_tokenizer

    tok = tiny_tokenizer()
    extend_tokenizer(tok, PAPER)
    return tok


def test_golden_tokens_gpt2():
    from treasure.train.tokens import token_texts

    tok = _compact_tokenizer()
    out: dict[str, Any] = {
        "compact_tokens": compact_tokens(PAPER),
        "compact_ids": tok.convert_tokens_to_ids(compact_tokens(PAPER)),
        "init_texts": token_texts(PAPER),
        "vocab": len(tok),
    }
    for i, record in enumerate(_samples()):
        for cname in ("paper", "compact"):
            ex = render_example(record, CONFIGS[cname], PAPER, seed=3, epoch=0, index=i)
            text = tok.apply_chat_template(ex["prompt"] + ex["completion"], **KW)
            out[f"{i}/{cname}"] = tok(text, add_special_tokens=False)["input_ids"]
    _check("render_tokens_gpt2", out)


# ------------------------------------------------------------------------------------------ render / parse


_PIECES = [
    "<MARKER_LIST>", "</MARKER_LIST>", "<|markers|>", "<|/markers|>", " ", "\n", "<", ">", "|", "=", "/",
    "<domain>", " Code ", "</domain>", "</tas>", "<task>", "CodeFix", "<|domain=Code|>", "<|domain=Cooking|>",
    "<|length_tokens|>", "120", "-3", "0.5", "<|quality|>", "<|colour=red|>", "<length_tokens>", "x", "é",
    "<|task|>", "<|length_tokens=7|>", "<quality>", " 1.234 ", "</quality>", "<marker_list>", "\u200b",
]  # fmt: skip
OPENERS = {"paper": "<MARKER_LIST>", "compact": "<|markers|>"}
BLOCKS = [
    {},
    {"domain": "Code"},
    {"task": "CodeFix", "domain": "Sciences", "length_tokens": 120, "quality": 0.8734, "quality_bucket": 1},
    {"language": "french", "length_bucket": "Concise", "quality": "-2.5", "length_tokens": 0},
]


def _parsed(text: str, fmt: str) -> dict:
    p = parse_block(text, PAPER, fmt)
    _, response = split_completion(text, PAPER, fmt)
    return {
        "markers": p.markers,
        "problems": p.problems,
        "found": p.found,
        "complete": p.complete,
        "end": p.end,
        "response": response,
    }


def test_golden_blocks_parse_and_sanitize():
    from treasure.markers import SEPARATOR

    out: dict[str, Any] = {"marker_syntax": marker_syntax(PAPER), "formats": list(FORMATS)}
    rng = random.Random(15)
    randoms = ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 12))) for _ in range(100)]
    for fmt in FORMATS:
        out[f"{fmt}/separator"] = SEPARATOR[fmt]
        for k, markers in enumerate(BLOCKS):
            block = render_block(markers, PAPER, fmt)
            out[f"{fmt}/block{k}"] = block
            full = block + SEPARATOR[fmt] + "  The answer.\n"
            step = 1 if k == 2 else 5  # every cut of the richest block, every 5th of the others
            out[f"{fmt}/block{k}/cuts"] = [_parsed(full[:cut], fmt) for cut in range(0, len(full) + 1, step)]
        for prefix in ("", OPENERS[fmt]):  # free text, and text after an opening delimiter
            out[f"{fmt}/random/{prefix}"] = [_parsed(prefix + t, fmt) for t in randoms]
    out["sanitize"] = [sanitize(t) for t in randoms]
    _check("render_blocks", out)


# ------------------------------------------------------------------------------------------ decoding


def _allowed(processor, history: list[int], vocab: int) -> Any:
    scores = torch.zeros(1, vocab)
    out = processor(torch.tensor([history], dtype=torch.long), scores)
    return _ids(torch.nonzero(~torch.isneginf(out[0])).flatten())


def _walk(constraint, tok, markers: dict, fixed: dict | None, budget: int | None) -> list:
    """The allowed ids at every state along the canonical ids of `markers`' block (then two more steps)."""
    ids = constraint.render_ids(markers)
    processor = constraint.logits_processor(fixed, max_block_tokens=budget)
    prompt = tok("Hi\n", add_special_tokens=False)["input_ids"]
    steps = []
    history = list(prompt)
    for tok_id in [*ids, ids[-1] if ids else 0]:
        steps.append(_allowed(processor, history, len(tok)))
        history.append(tok_id)
    results = processor.results(torch.tensor([history], dtype=torch.long))
    return [ids, steps, [vars(r) for r in results]]


def test_golden_constrained_decoder_states():
    from treasure.generate.constrain import MarkerConstraint

    out: dict[str, Any] = {}
    for fmt in FORMATS:
        tok = _compact_tokenizer() if fmt == "compact" else tiny_tokenizer()
        for cats in (None, ("length_tokens", "quality", "task", "domain")):
            constraint = MarkerConstraint(tok, PAPER, fmt, categories=cats, max_block_tokens=None)
            key = f"{fmt}/{'all' if cats is None else 'four'}"
            out[f"{key}/min"] = [
                constraint.min_block_tokens(),
                constraint.min_block_tokens({"domain": "Code"}),
            ]
            for k, markers in enumerate(BLOCKS[1:3]):
                markers = {m: v for m, v in markers.items() if m in constraint.categories}
                out[f"{key}/walk{k}"] = _walk(constraint, tok, markers, None, None)
                fixed = {"domain": markers["domain"]} if "domain" in markers else None
                out[f"{key}/walk{k}/fixed"] = _walk(constraint, tok, markers, fixed, None)
                out[f"{key}/walk{k}/budget"] = _walk(constraint, tok, markers, None, 6)
                full = constraint.render_ids(markers)
                out[f"{key}/walk{k}/length"] = constraint.block_length(full + [11, 12])
    _check("render_constrain", out)


def test_golden_guard_banned_sets():
    from treasure.generate.constrain import token_texts
    from treasure.generate.guard import MarkerSyntaxGuard, tables_for

    out: dict[str, Any] = {}
    tails = ["", "abc", "<", "a <", "<M", "<MARKER_LIST", "</MARKER_LIS", "<|", "<|mark", "<|/markers",
             "<|domain=Co", "<|length_tokens", "<b>", "<marker"]  # fmt: skip
    for fmt in FORMATS:
        tok = _compact_tokenizer() if fmt == "compact" else tiny_tokenizer()
        tables = tables_for(tok, marker_syntax(PAPER))
        out[f"{fmt}/always"] = _ids(tables.always)
        for tail in tails:
            out[f"{fmt}/{tail!r}"] = _ids(tables.banned(tail))
        guard = MarkerSyntaxGuard(tables, token_texts(tok), None, [tok.eos_token_id])
        first = guard(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, len(tok)))
        out[f"{fmt}/first-step"] = _ids(torch.nonzero(torch.isneginf(first[0])).flatten())
    _check("render_guard", out)


# ------------------------------------------------------------------------------------------ generation


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from test_generate import make_bundle

    from treasure.bundle import load_bundle

    return {fmt: load_bundle(make_bundle(tmp_path_factory.mktemp(f"golden-{fmt}"), fmt)) for fmt in FORMATS}


def _generation(g) -> dict:
    return {k: getattr(g, k) for k in ("text", "markers", "fixed", "inferred", "mode", "block_closed",
            "block_forced", "problems", "cut", "raw", "prompt_tokens", "completion_tokens", "finish_reason")}  # fmt: skip


def test_golden_generator_outputs(bundles):
    from treasure.generate.engine import Generator

    prompts = [
        [{"role": "user", "content": "Reverse 'apple'."}],
        [{"role": "user", "content": "Join 'a' and 'b' <|markers|> with a dash, <MARKER_LIST> please."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three."}],
    ]
    out: dict[str, Any] = {}
    for fmt, bundle in bundles.items():
        for constrained in (True, False):
            gen = Generator(bundle, constrained=constrained)
            key = f"{fmt}/{'constrained' if constrained else 'free'}"
            out[f"{key}/stop_ids"] = gen._stop_ids
            out[f"{key}/inferred"] = [_generation(g) for g in gen.generate_batch(prompts, max_new_tokens=40)]
            fixed = [{"length_bucket": "concise"}, None, {"domain": "Code", "length_tokens": 30}]
            batch = gen.generate_batch(prompts, fixed, mode="fixed", max_new_tokens=40, batch_size=2)
            out[f"{key}/fixed"] = [_generation(g) for g in batch]
            sampled = gen.generate_batch(prompts, mode="inferred", max_new_tokens=24, temperature=1.0, seed=5)
            out[f"{key}/sampled"] = [_generation(g) for g in sampled]
            pieces = list(gen.stream(prompts[2], {"domain": "Code"}, max_new_tokens=40))
            assert "".join(pieces[:-1]) == pieces[-1].text
            out[f"{key}/stream"] = [pieces[:-1], _generation(pieces[-1])]
    _check("render_generate", out)
