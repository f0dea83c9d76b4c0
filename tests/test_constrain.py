"""Constrained marker decoding: the machine accepts exactly the canonical blocks, and `generate` with an untrained
model (the worst case: it knows nothing of markers) always starts its output with a valid block."""

from __future__ import annotations

import random
from importlib import resources

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    PreTrainedTokenizerFast,
    StoppingCriteria,
)

from treasure.errors import TaxonomyError
from treasure.generate.constrain import MarkerConstraint, MarkerTokenizationError
from treasure.markers import (
    COMPACT_OPEN,
    PAPER_CLOSE,
    PAPER_OPEN,
    SEPARATOR,
    compact_tokens,
    format_value,
    render_block,
    split_completion,
)
from treasure.taxonomy import paper_taxonomy

PAPER = paper_taxonomy()
ORDER = {name: i for i, name in enumerate(PAPER.names)}
PROMPTS = ["Write a haiku about the sea.", "Hi", "Explain recursion to a child, with one example please."]


def _tokenizer(fmt: str) -> PreTrainedTokenizerFast:
    path = resources.files("treasure.assets").joinpath("gpt2-tokenizer.json")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    tok.pad_token, tok.padding_side = "<|endoftext|>", "left"
    if fmt == "compact":  # as the trainer does: plain added tokens, one per categorical marker
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in compact_tokens(PAPER)])
    return tok


@pytest.fixture(scope="module")
def toks() -> dict[str, PreTrainedTokenizerFast]:
    return {fmt: _tokenizer(fmt) for fmt in ("paper", "compact")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far more steadily on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(toks) -> dict[str, LlamaForCausalLM]:
    torch.manual_seed(0)
    base = _tokenizer("paper")
    cfg = LlamaConfig(
        vocab_size=len(base), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512,
    )  # fmt: skip
    out = {}
    for fmt in ("paper", "compact"):
        model = LlamaForCausalLM(cfg).eval()
        model.resize_token_embeddings(len(toks[fmt]))  # the compact tokens, as training adds them
        model.generation_config.eos_token_id = (
            None  # run to max_new_tokens: the response is part of the check
        )
        model.generation_config.pad_token_id = toks[fmt].pad_token_id
        out[fmt] = model
    return out


def _enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _check_block(text: str, fmt: str, fixed: dict | None, allowed) -> dict:
    """The output starts with a complete, problem-free block holding every fixed marker, allowed categories only."""
    parsed, response = split_completion(text, PAPER, fmt)
    assert parsed.found and parsed.complete and not parsed.problems, (text[:300], parsed.problems)
    assert text.startswith(PAPER_OPEN if fmt == "paper" else COMPACT_OPEN)
    for name, value in (fixed or {}).items():
        cat = PAPER[name]
        assert format_value(cat, parsed.markers[name]) == format_value(cat, PAPER.coerce(name, value)), text
    assert set(parsed.markers) <= set(allowed)
    names = list(parsed.markers)
    assert names == sorted(names, key=ORDER.__getitem__)
    # the block text is exactly what render_block writes for these markers (no stray spaces, canonical numbers)
    assert text.startswith(render_block(parsed.markers, PAPER, fmt) + SEPARATOR[fmt])
    return parsed.markers


# ---------------------------------------------------------------------------------------------------------------
# Tokenization: the pieces the machine is built from are how the block tokenizes in context.


def _values(cat):
    if not cat.numeric:
        return list(cat.values)
    if cat.kind == "int":
        return [0, 1, 7, 42, 120, 999, 2048, 98765, 123456]
    return [0.0, 0.05, 0.5, 0.87, 1.0, 3.14159, -0.5, -12.25, 987.65, 123456.78]


def test_paper_segments_tokenize_on_their_own(toks):
    """With byte-level BPE every paper segment (" <cat> value </cat>") starts with a space, so it tokenizes the same
    alone as inside a block: checked for every category and value (and numbers of 1 to 6 digits)."""
    tok = toks["paper"]
    con = MarkerConstraint(tok, PAPER, "paper")
    opener, closer, sep = _enc(tok, PAPER_OPEN), _enc(tok, " " + PAPER_CLOSE), _enc(tok, "\n")
    for cat in PAPER:
        for value in _values(cat):
            block = render_block({cat.name: value}, PAPER, "paper")
            segment = block[len(PAPER_OPEN) : -len(" " + PAPER_CLOSE)]
            full = _enc(tok, block + "\n")
            assert full == opener + _enc(tok, segment) + closer + sep, block
            assert con.render_ids({cat.name: value}) == full
            assert con.block_length(full) == len(full), block
            assert con.block_length(full, fixed={cat.name: value}) == len(full), block


def test_compact_markers_are_one_token_each(toks):
    tok = toks["compact"]
    con = MarkerConstraint(tok, PAPER, "compact")
    for cat in PAPER:
        for value in _values(cat):
            ids = con.render_ids({cat.name: value})
            assert con.block_length(ids) == len(ids)
            if not cat.numeric:
                assert len(ids) == 3  # <|markers|> <|cat=value|> <|/markers|>
            else:  # the numeric token, then its number as ordinary text tokens
                assert tok.convert_ids_to_tokens(ids[1]) == f"<|{cat.name}|>"
                assert tok.decode(ids[2:-1]) == format_value(cat, PAPER.coerce(cat.name, value))


@pytest.mark.parametrize("prompt_end", ["", "\n", "Assistant:\n", "<|endoftext|>", "User: hi\nAssistant:"])
def test_the_block_tokenizes_alike_after_usual_prompt_ends(toks, prompt_end):
    tok = toks["paper"]
    con = MarkerConstraint(tok, PAPER, "paper", prompt_end=prompt_end)
    markers = {"quality": 0.87, "length_tokens": 120, "domain": "Sciences", "language": "French"}
    text = render_block(markers, PAPER, "paper") + "\n" + "Sure, here it is."
    ids = _enc(tok, prompt_end + text)[len(_enc(tok, prompt_end)) :]
    assert con.block_length(ids) == len(_enc(tok, render_block(markers, PAPER, "paper") + "\n"))


def test_a_prompt_ending_in_a_space_merges_with_the_block(toks):
    """The documented exception: " <" is one GPT-2 token, so a prompt ending in a space swallows the opener's "<"."""
    with pytest.raises(MarkerTokenizationError):
        MarkerConstraint(toks["paper"], PAPER, "paper", prompt_end="Assistant: ")


# Llama-3's pre-tokenizer regex (Qwen2's differs only in splitting digits one by one): "<MARKER" is one pre-token,
# digits go in threes and the space before a number stands alone, and ">\n" is one pre-token.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _llama3_style_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE with Llama-3's pre-tokenizer, trained here on rendered blocks and a little text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    corpus = []
    for _ in range(300):
        markers = {
            c.name: rng.choice(c.values) if not c.numeric else rng.randint(0, 999)
            for c in PAPER
            if rng.random() < 0.4
        }
        corpus.append(render_block(markers, PAPER) + "\nHello world, this is a response. 1234.\n")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1200, initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tk)


def test_a_llama3_style_pre_tokenizer(toks):
    """Pieces are cut where that pre-tokenizer cuts too: the closer and its separator are one piece (">\n")."""
    tok = _llama3_style_tokenizer()
    assert any(t.endswith(">Ċ") for t in tok.convert_ids_to_tokens(_enc(tok, " </MARKER_LIST>\nHi")))
    con = MarkerConstraint(tok, PAPER, "paper")
    rng = random.Random(1)
    for _ in range(200):
        numbers = {"int": [0, 7, 120, 123456], "float": [0.0, 0.87, -3.5, 1234.5]}
        markers = {c.name: rng.choice(numbers.get(c.kind) or c.values) for c in PAPER if rng.random() < 0.3}
        ids = _enc(tok, render_block(markers, PAPER) + "\n" + "Sure.")
        assert con.block_length(ids) == len(_enc(tok, render_block(markers, PAPER) + "\n")), markers
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    enc = {"input_ids": torch.tensor([_enc(tok, "Hello world")])}
    for seed in range(3):
        torch.manual_seed(seed)
        proc = con.logits_processor({"length_tokens": 1234, "domain": "Code"})
        out = model.generate(
            **enc, logits_processor=[proc], do_sample=True, max_new_tokens=200, pad_token_id=0
        )
        text = tok.decode(out[0, enc["input_ids"].shape[1] :])
        _check_block(text, "paper", {"length_tokens": 1234, "domain": "Code"}, PAPER.names)
        assert proc.results(out)[0].closed


def test_separator_merges_with_a_response_starting_with_newlines(toks):
    """The other documented exception: "\\n" + "\\nHi" is "\\n\\n" (one id) + ...; the machine forces "\\n" alone."""
    tok = toks["paper"]
    con = MarkerConstraint(tok, PAPER, "paper")
    block = render_block({"domain": "Code"}, PAPER, "paper")
    assert con.block_length(_enc(tok, block + "\n" + "Hi")) is not None
    assert con.block_length(_enc(tok, block + "\n" + " Hi")) is not None
    assert con.block_length(_enc(tok, block + "\n" + "\n\nHi")) is None


markers_st = st.fixed_dictionaries(
    {},
    optional={
        "quality": st.floats(-999, 9999, allow_nan=False),
        "quality_bucket": st.sampled_from(PAPER["quality_bucket"].values),
        "length_tokens": st.integers(0, 999_999),
        "length_sentences": st.integers(0, 999),
        "length_paragraphs": st.integers(0, 99),
        "length_bucket": st.sampled_from(PAPER["length_bucket"].values),
        "task": st.sampled_from(PAPER["task"].values),
        "domain": st.sampled_from(PAPER["domain"].values),
        "code_type": st.sampled_from(PAPER["code_type"].values),
        "format": st.sampled_from(PAPER["format"].values),
        "source": st.sampled_from(PAPER["source"].values),
        "style": st.sampled_from(PAPER["style"].values),
        "language": st.sampled_from(PAPER["language"].values),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(markers=markers_st, fmt=st.sampled_from(["paper", "compact"]), data=st.data())
def test_every_rendered_block_walks_through_the_machine(toks, markers, fmt, data):
    """Any block render_block writes (any subset of categories, any values) is a path of the machine, also with
    a subset of it fixed and the allowed categories narrowed to a superset of it."""
    tok = toks[fmt]
    extra = data.draw(st.lists(st.sampled_from(PAPER.names), max_size=4))
    fixed = {k: v for k, v in markers.items() if data.draw(st.booleans())}
    con = MarkerConstraint(tok, PAPER, fmt, categories=sorted({*markers, *extra}) or None)
    block = con.render_ids(markers)
    assert block == _enc(tok, render_block(markers, PAPER, fmt) + SEPARATOR[fmt])
    assert con.block_length(block, fixed=fixed) == len(block)
    assert con.block_length(block + _enc(tok, "Some response."), fixed=fixed) == len(block)


def test_invalid_blocks_do_not_walk(toks):
    tok = toks["paper"]
    con = MarkerConstraint(tok, PAPER, "paper", categories=["quality", "length_tokens", "task", "domain"])

    def walks(text: str, fixed=None) -> bool:
        return con.block_length(_enc(tok, text + "\n"), fixed=fixed) is not None

    def block(*segments: str) -> str:
        return " ".join([PAPER_OPEN, *segments, PAPER_CLOSE])

    assert walks(block("<task> CodeFix </task>", "<domain> Code </domain>"))
    assert not walks(block("<domain> Code </domain>", "<task> CodeFix </task>"))  # out of taxonomy order
    assert not walks(block("<task> CodeFix </task>", "<task> Rewrite </task>"))  # twice
    assert not walks(block("<task> Cooking </task>"))  # unknown value
    assert not walks(block("<language> French </language>"))  # not an allowed category
    assert not walks(block("<domain> Code </domain>"), fixed={"task": "CodeFix"})  # a fixed marker missing
    assert not walks(block("<task> Rewrite </task>"), fixed={"task": "CodeFix"})  # a fixed marker changed
    assert walks(block("<length_tokens> 120 </length_tokens>"))
    for bad in ["007", "-5", "1234567", "1.5", "12a", ""]:  # leading zero, sign, digits, decimals, junk
        assert not walks(block(f"<length_tokens> {bad} </length_tokens>")), bad
    assert walks(block("<quality> -0.50 </quality>"))
    for bad in ["0.5", "1", ".50", "0.505", "00.50"]:  # floats have exactly two decimals, as rendered
        assert not walks(block(f"<quality> {bad} </quality>")), bad


# ---------------------------------------------------------------------------------------------------------------
# Generation with an untrained model.


class _BlocksClosed(StoppingCriteria):
    """Stop once every row has closed its block and written a few response tokens (blocks run up to ~180 ids)."""

    def __init__(self, proc, prompt_width: int, response_tokens: int = 4):
        self.proc, self.prompt_width, self.response_tokens = proc, prompt_width, response_tokens

    def __call__(self, input_ids, scores, **kwargs):
        written = input_ids.shape[1] - self.prompt_width
        results = self.proc.results(input_ids)
        done = all(r.closed and written - r.tokens >= self.response_tokens for r in results)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


FIXED_SETS = [
    None,
    {"domain": "Code"},
    {"length_tokens": 120, "quality": 0.8734},
    {"quality_bucket": 1, "task": "CodeFix", "language": "French"},
    {"length_sentences": 3, "length_bucket": "concise", "style": "Formal", "language": "English"},
]


def _untrained_model_writes_valid_blocks(tok, model, fmt: str, seeds: range) -> None:
    con = MarkerConstraint(tok, PAPER, fmt)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    longest = 0
    for seed in seeds:
        torch.manual_seed(seed)
        fixed = [FIXED_SETS[(seed + k) % len(FIXED_SETS)] for k in range(len(PROMPTS))]
        proc = con.logits_processor(fixed)
        sampling = {"temperature": 1.0 + 0.25 * (seed % 3)} | ({"top_p": 0.95} if seed % 2 else {"top_k": 0})
        out = model.generate(
            **enc, logits_processor=[proc], stopping_criteria=[_BlocksClosed(proc, enc.input_ids.shape[1])], do_sample=True,
            max_new_tokens=200, **sampling,
        )  # fmt: skip
        completions = out[:, enc.input_ids.shape[1] :]
        for row, result in enumerate(proc.results(out)):
            text = tok.decode(completions[row])
            _check_block(text, fmt, fixed[row], PAPER.names)
            assert result.closed and not result.forced
            assert con.block_length(completions[row].tolist(), fixed=fixed[row]) == result.tokens
            assert len(completions[row]) > result.tokens  # a response follows
            longest = max(longest, result.tokens)
    assert longest > con.min_block_tokens() + 5  # the sampled blocks are not all trivial


@pytest.mark.parametrize("fmt", ["paper", "compact"])
def test_untrained_model_always_writes_a_valid_block(toks, models, fmt):
    """Sampling hot (temperature >= 1) from random weights, left-padded batches whose rows fix different markers:
    every row starts with a complete valid block, fixed markers in place, then a free response."""
    _untrained_model_writes_valid_blocks(toks[fmt], models[fmt], fmt, range(5))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["paper", "compact"])
def test_untrained_model_always_writes_a_valid_block_many_seeds(toks, models, fmt):
    _untrained_model_writes_valid_blocks(toks[fmt], models[fmt], fmt, range(5, 65))


def test_restricted_categories_and_greedy(toks, models):
    tok, model = toks["paper"], models["paper"]
    allowed = ["length_tokens", "task", "language"]
    con = MarkerConstraint(tok, PAPER, "paper", categories=allowed, fixed={"language": "German"})
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**enc, logits_processor=[con.logits_processor()], do_sample=False, max_new_tokens=40)
    for row in out[:, enc.input_ids.shape[1] :]:
        markers = _check_block(tok.decode(row), "paper", {"language": "German"}, allowed)
        assert markers["language"] == "German"


def test_num_return_sequences_share_their_prompts_fixed_markers(toks, models):
    tok, model = toks["compact"], models["compact"]
    con = MarkerConstraint(tok, PAPER, "compact")
    fixed = [{"task": "Rewrite"}, {"length_tokens": 7}]
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    torch.manual_seed(1)
    out = model.generate(
        **enc, logits_processor=[con.logits_processor(fixed)], do_sample=True, num_return_sequences=3,
        max_new_tokens=60,
    )  # fmt: skip
    for row in range(6):
        _check_block(tok.decode(out[row, enc.input_ids.shape[1] :]), "compact", fixed[row // 3], PAPER.names)


class _Bias(LogitsProcessor):
    """A stubborn model: it loves digits (and the given tokens), so left alone it writes long blocks."""

    def __init__(self, tok, *boosted: str):
        texts = tok.backend_tokenizer.decode_batch([[i] for i in range(len(tok))], skip_special_tokens=False)
        self.boost = torch.tensor([50.0 if t.strip().isdigit() else 0.0 for t in texts])
        for text in boosted:
            (tok_id,) = _enc(tok, text)
            self.boost[tok_id] = 40.0

    def __call__(self, input_ids, scores):
        return scores + self.boost


def test_budget_forces_the_block_closed_and_flags_it(toks, models):
    tok, model = toks["paper"], models["paper"]
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    free = MarkerConstraint(tok, PAPER, "paper")
    capped = MarkerConstraint(tok, PAPER, "paper", max_block_tokens=40)
    bias = _Bias(tok, " <", "quality", "length")  # open another category, preferably an early, numeric one
    outs = {}
    for name, con in (("free", free), ("capped", capped)):
        proc = con.logits_processor([None, {"length_tokens": 120}, {"domain": "Math", "language": "Greek"}])
        out = model.generate(**enc, logits_processor=[bias, proc], do_sample=False, max_new_tokens=200)
        outs[name] = (out[:, enc.input_ids.shape[1] :], proc.results(out))
    for result in outs["free"][1]:
        # the grammar alone bounds it: every category once, numbers capped at 6 digits
        assert result.closed and not result.forced and result.digit_limit
    for row, result in enumerate(outs["capped"][1]):
        text = tok.decode(outs["capped"][0][row])
        _check_block(text, "paper", None, PAPER.names)
        assert result.closed and result.forced and result.tokens <= 40
        assert len(outs["capped"][0][row]) > result.tokens
    assert "Math" in tok.decode(outs["capped"][0][2]) and "Greek" in tok.decode(outs["capped"][0][2])


def test_budget_below_the_fixed_markers_is_raised_to_fit_them(toks, models):
    tok, model = toks["compact"], models["compact"]
    fixed = {"quality": 0.25, "length_tokens": 300, "task": "Reasoning", "language": "Korean"}
    con = MarkerConstraint(tok, PAPER, "compact", max_block_tokens=1, fixed=fixed)
    enc = tok(PROMPTS[:1], return_tensors="pt")
    proc = con.logits_processor()
    out = model.generate(**enc, logits_processor=[_Bias(tok, "<|task=Rewrite|>"), proc], max_new_tokens=20)
    _check_block(tok.decode(out[0, enc.input_ids.shape[1] :]), "compact", fixed, PAPER.names)
    assert proc.results(out)[0].tokens == con.min_block_tokens(fixed)


def test_digit_limit(toks, models):
    tok, model = toks["compact"], models["compact"]
    con = MarkerConstraint(tok, PAPER, "compact", categories=["length_tokens"], max_number_digits=2)
    enc = tok(PROMPTS[:1], return_tensors="pt")
    proc = con.logits_processor({})
    out = model.generate(**enc, logits_processor=[_Bias(tok, "<|length_tokens|>"), proc], max_new_tokens=12)
    markers = _check_block(tok.decode(out[0, enc.input_ids.shape[1] :]), "compact", None, ["length_tokens"])
    assert 10 <= markers["length_tokens"] <= 99 and proc.results(out)[0].digit_limit


def test_the_response_after_the_block_is_untouched(toks, models):
    """Scores after the block are the model's logits, bit for bit; inside it, -inf exactly outside the allowed ids."""
    tok, model = toks["paper"], models["paper"]
    con = MarkerConstraint(tok, PAPER, "paper", categories=["domain", "language"])
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    proc = con.logits_processor([{"domain": "Legal"}, None, {"language": "Dutch"}])
    out = model.generate(
        **enc, logits_processor=[proc], do_sample=False, max_new_tokens=40, output_scores=True,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    results = proc.results(out.sequences)
    width = enc.input_ids.shape[1]
    for row, result in enumerate(results):
        assert result.closed
        for step in range(40):
            scores, logits = out.scores[step][row], out.logits[step][row]
            if step >= result.tokens:
                assert torch.equal(scores, logits)
            else:
                assert torch.isfinite(scores).sum() >= 1 and torch.isfinite(
                    scores[out.sequences[row, width + step]]
                )
                assert torch.equal(scores[torch.isfinite(scores)], logits[torch.isfinite(scores)])


def test_a_suppressed_forced_token_falls_back_to_the_allowed_ids(toks, models):
    """An earlier processor (suppress_tokens) removing the only allowed id must not turn sampling into NaN."""
    tok, model = toks["paper"], models["paper"]
    con = MarkerConstraint(tok, PAPER, "paper")
    enc = tok(PROMPTS[:1], return_tensors="pt")
    opener_first = _enc(tok, PAPER_OPEN)[0]
    torch.manual_seed(0)
    proc = con.logits_processor()
    out = model.generate(
        **enc, logits_processor=[proc], stopping_criteria=[_BlocksClosed(proc, enc.input_ids.shape[1])], suppress_tokens=[opener_first],
        do_sample=True, max_new_tokens=200,
    )  # fmt: skip
    _check_block(tok.decode(out[0, enc.input_ids.shape[1] :]), "paper", None, PAPER.names)


# ---------------------------------------------------------------------------------------------------------------
# Interface.


def test_machines_are_cached_per_tokenizer_and_settings(toks):
    a = MarkerConstraint(toks["paper"], PAPER, "paper", categories=["task", "domain"])
    b = MarkerConstraint(
        toks["paper"], PAPER, "paper", categories=["domain", "task"], fixed={"task": "Rewrite"}
    )
    c = MarkerConstraint(toks["paper"], PAPER, "paper", categories=["task"])
    assert a._machine is b._machine and a._machine is not c._machine


def test_bad_arguments(toks, models):
    tok = toks["paper"]
    with pytest.raises(TaxonomyError):
        MarkerConstraint(tok, PAPER, "paper", categories=["task"], fixed={"domain": "Code"})
    with pytest.raises(TaxonomyError):
        MarkerConstraint(tok, PAPER, "paper", fixed={"domain": "Cooking"})
    with pytest.raises(TaxonomyError):
        MarkerConstraint(tok, PAPER, "yaml")
    con = MarkerConstraint(tok, PAPER, "paper")
    with pytest.raises(TaxonomyError):
        con.logits_processor([{"length_tokens": -1}])
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="fixed markers"):
        models["paper"].generate(
            **enc, logits_processor=[con.logits_processor([None, None])], max_new_tokens=2
        )
    proc = con.logits_processor()
    models["paper"].generate(**enc, logits_processor=[proc], max_new_tokens=2)
    with pytest.raises(RuntimeError, match="one generate call"):
        models["paper"].generate(**enc, logits_processor=[proc], max_new_tokens=2)
    compact = MarkerConstraint(toks["compact"], PAPER, "compact")
    with pytest.raises(
        ValueError, match="resize"
    ):  # the compact tokens are past an un-resized model's vocabulary
        models["paper"].generate(**enc, logits_processor=[compact.logits_processor()], max_new_tokens=2)


def test_many_fixed_sets_reset_the_memo_without_breaking_processors(toks, monkeypatch):
    from treasure.generate import constrain

    monkeypatch.setattr(constrain, "_MAX_STARTS", 3)
    tok = toks["compact"]
    con = MarkerConstraint(tok, PAPER, "compact", categories=["length_tokens", "domain"])
    blocks = {n: con.render_ids({"length_tokens": n, "domain": "Code"}) for n in range(8)}
    for n, ids in blocks.items():
        assert con.block_length(ids, fixed={"length_tokens": n}) == len(ids)
    assert len(con._machine._starts) <= 3
