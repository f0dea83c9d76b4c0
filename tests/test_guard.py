"""No marker syntax outside the block, on a model pushed to write it.

`Pusher` makes a tiny bundle's model want one marker string over and over (the defect a real SmolLM2 run showed:
``<|markers|><|/markers|>`` pairs after the block): a hook on the LM head raises the logit of the next id of the
string's canonical tokenization by a wide margin, per row. Constrained, no response may hold marker syntax (batch,
stream, served); unconstrained, the same model does write it, and the response is cut there and flagged: that
proves the push is strong enough for the constrained checks to mean something.
"""

from __future__ import annotations

import openai
import pytest
from test_generate import make_bundle
from test_serve import Server

from treasure.bundle import load_bundle
from treasure.generate.constrain import token_texts
from treasure.generate.engine import Generator
from treasure.generate.guard import MarkerSyntaxGuard, _Tables, tables_for
from treasure.markers import find_marker_syntax, marker_syntax
from treasure.serve import create_app

PROMPTS = [
    [{"role": "user", "content": "Reverse 'apple'."}],
    [{"role": "user", "content": "Add 2 and 3."}],
    [{"role": "user", "content": "Write a haiku about rain."}],
    [{"role": "user", "content": "Fix: prnt(1)"}],
]
# What each format's model is pushed to write, again and again: the observed defect, and the paper's empty block.
PUSHED = {"compact": "<|markers|><|/markers|>", "paper": "<MARKER_LIST> </MARKER_LIST>\n"}


class Pusher:
    """Raise the logit of the next id of `text`'s tokenization (cycling) by `boost`, row by row."""

    def __init__(self, model, tokenizer, text: str, boost: float = 60.0):
        self.target = tokenizer.encode(text, add_special_tokens=False)
        self.boost = boost
        self.pos: list[int] = []
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.get_output_embeddings().register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None:
            return
        if ids.shape[1] > 1 or not self.pos:  # a new generate call: the whole prompt
            self.pos = [0] * ids.shape[0]
            return
        for b, tok in enumerate(ids[:, -1].tolist()):
            k = self.pos[b]
            self.pos[b] = (k + 1) % len(self.target) if tok == self.target[k] else int(tok == self.target[0])

    def _post(self, module, args, out):
        out = out.clone()
        for b, k in enumerate(self.pos):
            out[b, -1, self.target[k]] += self.boost
        return out


@pytest.fixture(scope="module", params=["compact", "paper"])
def pushed(request, tmp_path_factory):
    fmt = request.param
    bundle = load_bundle(make_bundle(tmp_path_factory.mktemp(f"guard-{fmt}"), fmt))
    Pusher(bundle.model, bundle.tokenizer, PUSHED[fmt])
    return fmt, bundle


def _clean(gen, bundle) -> bool:
    return find_marker_syntax(gen.text, bundle.taxonomy) < 0


def test_unconstrained_pushed_model_leaks_and_is_cut(pushed):
    fmt, bundle = pushed
    gen = Generator(bundle, constrained=False)
    outs = gen.generate_batch(PROMPTS, mode="inferred", max_new_tokens=40)
    # the push works: the raw completions do carry marker syntax after their start ...
    leaked = [o for o in outs if find_marker_syntax(o.raw[1:], bundle.taxonomy) >= 0]
    assert len(leaked) == len(outs)
    # ... and every response is cut where it began, and says so
    assert all(_clean(o, bundle) for o in outs)
    assert all(o.cut and any("cut" in p for p in o.problems) for o in outs)


@pytest.mark.parametrize("mode", ["inferred", "fixed"])
def test_constrained_batch_never_writes_marker_syntax(pushed, mode):
    fmt, bundle = pushed
    gen = Generator(bundle)
    markers = (
        [{"domain": "Code"}, {"length_tokens": 40}, None, {"task": "CodeFix"}] if mode == "fixed" else None
    )
    outs = gen.generate_batch(PROMPTS, markers, mode=mode, max_new_tokens=48, batch_size=4)
    for o in outs:
        assert o.block_closed
        parsed, _ = bundle.split_completion(o.raw)
        after = o.raw[parsed.end :]
        assert find_marker_syntax(after, bundle.taxonomy) < 0, after
        assert _clean(o, bundle) and not o.cut and o.completion_tokens == 48
    # the model was not left idle: it wrote the pieces it was pushed to, only never a whole marker string
    pieces = set(PUSHED[fmt][:5])
    assert any(pieces & set(o.text) for o in outs)


def test_constrained_sampling_and_stream(pushed):
    fmt, bundle = pushed
    gen = Generator(bundle)
    for seed in range(3):
        outs = gen.generate_batch(PROMPTS, mode="inferred", max_new_tokens=32, temperature=1.0, seed=seed)
        assert all(_clean(o, bundle) for o in outs)
    pieces = list(gen.stream(PROMPTS[0], {"domain": "Code"}, max_new_tokens=40))
    result = pieces[-1]
    assert "".join(pieces[:-1]) == result.text and _clean(result, bundle)
    # unconstrained streaming: pieces join to the cut response, none carries marker syntax
    free = Generator(bundle, constrained=False)
    pieces = list(free.stream(PROMPTS[1], max_new_tokens=40))
    assert "".join(pieces[:-1]) == pieces[-1].text and pieces[-1].cut
    assert all(find_marker_syntax(p, bundle.taxonomy) < 0 for p in pieces[:-1])


def test_served_answers_never_carry_marker_syntax(pushed):
    fmt, bundle = pushed
    app = create_app(Generator(bundle), model_name="pushed")
    with Server(app) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)
        for i, messages in enumerate(PROMPTS):
            extra = {"markers": {"domain": "Code"}} if i % 2 else {}
            resp = client.chat.completions.create(
                model="pushed", messages=messages, max_tokens=40, temperature=0, extra_body=extra
            )
            assert find_marker_syntax(resp.choices[0].message.content, bundle.taxonomy) < 0
            chunks = client.chat.completions.create(
                model="pushed", messages=messages, max_tokens=40, temperature=0, extra_body=extra, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == resp.choices[0].message.content


def test_tables_ban_exactly_what_completes_a_marker_string(pushed):
    """For tails that end in part of a marker string: every id left allowed adds no marker string to the text,
    and every id that would add one is banned (checked over the whole vocabulary)."""
    _, bundle = pushed
    strings = marker_syntax(bundle.taxonomy)
    texts = token_texts(bundle.tokenizer)
    tables = tables_for(bundle.tokenizer, strings)
    assert tables is tables_for(bundle.tokenizer, strings)  # cached
    for tail in [
        "",
        "plain text",
        "a <",
        "x <MARK",
        "<MARKER_LIST",
        "</MARKER_LIS",
        "ok <|",
        "<|domain=Co",
        "<|/markers|",
    ]:
        banned = set(tables.banned(tail).tolist())
        for tok, text in enumerate(texts):
            completes = any(s in (tail + text) for s in strings) and not any(s in tail for s in strings)
            assert completes == (tok in banned), (tail, text)


def test_tables_refuse_strings_they_cannot_guard():
    with pytest.raises(ValueError, match="start with"):
        _Tables(["a", "b"], ["MARK<ER"])


def test_guard_leaves_block_rows_alone():
    import torch

    texts = ["<|m", "|>", "a", "<|m|>"]
    tables = _Tables(texts, ["<|m|>"])
    inside = {0}
    guard = MarkerSyntaxGuard(tables, texts, in_block=lambda b: b in inside)
    scores = guard(torch.tensor([[2], [2]]), torch.zeros(2, 4))
    assert scores[0].isfinite().all() and scores[1].tolist() == [0, 0, 0, float("-inf")]
    scores = guard(torch.tensor([[2, 0], [2, 0]]), torch.zeros(2, 4))  # row 1 ends in "<|m": "|>" completes
    assert scores[0].isfinite().all() and scores[1].isinf().tolist() == [False, True, False, True]


def test_guard_keeps_the_turn_open_for_the_first_response_token():
    import torch

    texts = ["<|m", "|>", "a", "<|m|>", "END"]
    inside = {0}
    guard = MarkerSyntaxGuard(_Tables(texts, ["<|m|>"]), texts, in_block=lambda b: b in inside, stop_ids=[4])
    scores = guard(
        torch.tensor([[2], [2]]), torch.zeros(2, 5)
    )  # row 0 in its block, row 1 at its first token
    assert scores[0].isfinite().all() and scores[1].isinf().tolist() == [False, False, False, True, True]
    inside.clear()  # row 0's block closed with this token: its first response token may not end the turn either
    scores = guard(torch.tensor([[2, 1], [2, 2]]), torch.zeros(2, 5))
    assert scores[0].isinf().tolist() == [False, False, False, True, True]
    assert scores[1].isinf().tolist() == [
        False,
        False,
        False,
        True,
        False,
    ]  # row 1 has its first token: it may stop
