"""Tokenising rendered examples: the prompt is a token prefix under every real template; golden loss mask."""

from __future__ import annotations

import hashlib
import json

import pytest
from tiny import NO_SYSTEM, SHARED, TEMPLATES, records, template_tokenizer

from treasure.errors import RecordError
from treasure.recipe import MarkerConfig
from treasure.train.data import DataSpec, build_dataset, tokenize_example
from treasure.train.render import epoch_plan
from treasure.train.tiny import tiny_tokenizer
from treasure.train.tokens import extend_tokenizer

SYSTEM = {"role": "system", "content": "Answer in one line."}


def _spec(config, paper, tok, **kw):
    return DataSpec(config, paper, seed=5, chat_template=tok.chat_template, **kw)


def _prompt_ids(tok, ex):
    return list(
        tok.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
    )


@pytest.mark.skipif(not (SHARED / "chat_templates").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("fmt", ["paper", "compact"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_prompt_tokens_are_a_prefix_of_the_training_sequence(paper, name, fmt):
    tok = template_tokenizer(name)
    config = MarkerConfig(format=fmt)
    if config.adds_tokens:
        extend_tokenizer(tok, paper)
    spec = _spec(config, paper, tok)
    recs = records(6)
    if name not in NO_SYSTEM:  # multi-turn with a system message too
        recs.append({**recs[0], "messages": [SYSTEM, *recs[1]["messages"], *recs[0]["messages"]]})
    for index, rec in enumerate(recs):
        ex = spec.example(tok, rec, epoch=0, index=index)
        prompt_ids = _prompt_ids(tok, ex)
        n = len(prompt_ids)
        assert ex["input_ids"][:n] == prompt_ids, (name, ex["split"])
        assert ex["completion_mask"] == [0] * n + [1] * (len(ex["input_ids"]) - n)
        trained = tok.decode(ex["input_ids"][n:], skip_special_tokens=False)
        reply = ex["completion"][0]["content"]
        assert reply.strip() in trained  # the block and the response are in the loss...
        assert reply.strip() not in tok.decode(
            prompt_ids, skip_special_tokens=False
        )  # ...and not in the context


def test_where_the_tokens_merge_the_completion_is_tokenised_on_its_own(paper):
    """GPT-2's BPE merges Llama 3's "\\n\\n" differently before text: the prompt keeps its inference-time tokens."""
    if not (SHARED / "chat_templates").is_dir():
        pytest.skip("needs ../shared/data")
    tok = template_tokenizer("llama-3.2")
    ex = _spec(MarkerConfig(), paper, tok, template_kwargs={"date_string": "26 Jul 2024"}).example(
        tok, records(1)[0], epoch=0, index=0
    )
    assert ex["split"] == "text"
    full = tok.apply_chat_template(
        ex["prompt"] + ex["completion"], tokenize=False, date_string="26 Jul 2024"
    )  # same text either way
    assert tok.decode(ex["input_ids"], skip_special_tokens=False) == full


REC = {
    "messages": [{"role": "user", "content": "Reverse 'apple'."}, {"role": "assistant", "content": "elppa"}],
    "markers": {"task": "Rewrite", "domain": "Unspecified", "length_bucket": "concise", "quality": 4.5},
}


def test_golden_loss_mask_compact(paper):
    tok = tiny_tokenizer()
    config = MarkerConfig(format="compact", dataset_dropout=0.0, sample_dropout=0.0)
    extend_tokenizer(tok, paper)
    ex = _spec(config, paper, tok).example(tok, REC, epoch=0, index=0)
    ids, mask = ex["input_ids"], ex["completion_mask"]
    n = mask.index(1)
    block = "<|markers|><|quality|>4.50<|length_bucket=concise|><|task=Rewrite|><|domain=Unspecified|><|/markers|>"
    assert tok.decode(ids[:n], skip_special_tokens=False) == (
        f"<|im_start|>user\nReverse 'apple'.{block}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(ids[n:], skip_special_tokens=False) == f"{block}elppa<|im_end|>\n"
    assert all(mask[n:]) and not any(mask[:n])
    # one token per categorical marker and delimiter; the float is text
    assert tok.convert_ids_to_tokens(ids[n : n + 3]) == ["<|markers|>", "<|quality|>", "4"]
    assert ids == GOLDEN_COMPACT_IDS


def test_golden_loss_mask_paper(paper):
    tok = tiny_tokenizer()
    ex = _spec(MarkerConfig(dataset_dropout=0.0, sample_dropout=0.0), paper, tok).example(
        tok, REC, epoch=0, index=0
    )
    n = ex["completion_mask"].index(1)
    block = (
        "<MARKER_LIST> <quality> 4.50 </quality> <length_bucket> concise </length_bucket> <task> Rewrite </task> "
        "<domain> Unspecified </domain> </MARKER_LIST>"
    )
    assert tok.decode(ex["input_ids"][n:], skip_special_tokens=False) == f"{block}\nelppa<|im_end|>\n"
    assert hashlib.sha256(json.dumps(ex["input_ids"]).encode()).hexdigest()[:16] == GOLDEN_PAPER


# Token ids of the two examples above with the tiny tokenizer (GPT-2 + ChatML turn tokens + compact markers).
GOLDEN_COMPACT_IDS = [
    50257, 7220, 198, 49, 964, 325, 705, 18040, 4458, 50259, 50261, 19, 13, 1120, 50269, 50280, 50296, 50260, 50258,
    198, 50257, 562, 10167, 198, 50259, 50261, 19, 13, 1120, 50269, 50280, 50296, 50260, 417, 44989, 50258, 198,
]  # fmt: skip
GOLDEN_PAPER = "b0d666db11760b9f"  # sha256 of the 125 ids, first 16 hex digits


def test_baseline_tokens_carry_no_marker(paper):
    tok = tiny_tokenizer()
    recs = records(24)
    ds, counts = build_dataset(
        tok, recs, _spec(MarkerConfig(mode="baseline"), paper, tok), epoch_plan(24, 2, 5)
    )
    assert counts == {"examples": 48, "text_split": 0} and len(tok) == 50259  # no token added
    for ids in ds["input_ids"]:
        text = tok.decode(ids, skip_special_tokens=False)
        assert "MARKER_LIST" not in text and "<|markers|>" not in text


def test_the_dataset_follows_the_epoch_plan(paper):
    tok = tiny_tokenizer()
    recs = records(10)
    plan = epoch_plan(10, 3, 5)
    spec = _spec(MarkerConfig(), paper, tok)
    ds, _ = build_dataset(tok, recs, spec, plan)
    assert ds.column_names == ["input_ids", "completion_mask"]
    for row, (epoch, index) in zip(ds, plan, strict=True):
        assert row["input_ids"] == spec.example(tok, recs[index], epoch=epoch, index=index)["input_ids"]


def test_a_record_the_template_rejects_names_its_line(paper, tmp_path):
    if not (SHARED / "chat_templates").is_dir():
        pytest.skip("needs ../shared/data")
    tok = template_tokenizer("gemma-2")
    recs = records(3)
    recs[2] = {**recs[2], "messages": [SYSTEM, *recs[2]["messages"]]}
    with pytest.raises(
        RecordError, match=r"train\.jsonl:7: messages: TemplateError: System role not supported"
    ):
        build_dataset(
            tok,
            recs,
            _spec(MarkerConfig(), paper, tok),
            epoch_plan(3, 1, 5),
            source="train.jsonl",
            lines=[3, 5, 7],
        )


def test_tokenize_example_is_the_plain_conversation_when_tokens_line_up():
    tok = tiny_tokenizer()
    ex = {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "yo"}],
    }
    out = tokenize_example(tok, ex)
    full = tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=False)
    assert out["input_ids"] == list(full) and out["split"] == "tokens"


@pytest.mark.skipif(not (SHARED / "chat_templates").is_dir(), reason="needs ../shared/data")
def test_a_completion_tokenised_apart_keeps_what_the_template_opens_the_reply_with(paper):
    from treasure.train.data import _completion_text

    tok = template_tokenizer("command-r7b")
    prompt = [{"role": "user", "content": "hi"}]
    text = _completion_text(tok, prompt, [{"role": "assistant", "content": "yo"}], {})
    assert (
        text
        == "<|START_RESPONSE|>yo<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )
    tok = tiny_tokenizer()
    assert _completion_text(tok, prompt, [{"role": "assistant", "content": "yo"}], {}) == "yo<|im_end|>\n"
