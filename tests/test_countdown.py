"""The length countdown (treasure/countdown.py): its rows read from the token stream, the same in one pass and step
by step, trained with a run, saved in the bundle and its checkpoints, loaded by every later stage, checked in the
config."""

from __future__ import annotations

import pytest
import torch
from test_suite import treasure
from tiny import tiny_config

from treasure.bundle import load_bundle
from treasure.countdown import (
    COUNTDOWN_FILE,
    N_BUCKETS,
    OFF,
    SCALE,
    Vocab,
    bucket,
    find_countdown,
    remaining_ids,
)
from treasure.errors import ConfigError, TreasureError
from treasure.generate.engine import Generator
from treasure.markers import render_block
from treasure.train.bundle import export_bundle
from treasure.train.config import load_config
from treasure.train.trainer import prepare, train

COUNTDOWN = {"format": "compact", "countdown": True}
LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])


def test_buckets_are_exact_near_the_end_then_powers_of_two():
    # overdue shares the row of "none left": a reply that runs past its length keeps being told to stop
    got = [bucket(r) for r in (-5, -1, 0, 1, 2, 3, 4, 5, 8, 9, 16, 17)]
    assert got == [1, 1, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7]
    assert bucket(512) == N_BUCKETS - 2 and bucket(513) == bucket(10_000) == N_BUCKETS - 1
    assert OFF not in {bucket(r) for r in range(-3, 2000)}
    assert len({bucket(r) for r in range(-3, 2000)}) == N_BUCKETS - 1  # every row is some remaining length


def _vocab(tmp_path):
    run = load_config(tiny_config(tmp_path, markers=COUNTDOWN))
    prep = prepare(run, load_model=False, build_datasets=False)
    tok, mtax = prep.tokenizer, run.markers.marker_taxonomy(run.taxonomy)
    return tok, mtax, Vocab.of(tok, mtax, [tok.eos_token_id])


def test_rows_count_down_the_reply_after_a_block_with_length_tokens(tmp_path):
    tok, mtax, vocab = _vocab(tmp_path)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    reply = ids(" one two three four five six")
    block = ids(render_block({"length_tokens": 4, "task": "Rewrite"}, mtax, "compact"))
    rows = remaining_ids(ids("Say it.") + block + reply + [tok.eos_token_id] + ids(" after"), vocab)
    n_before = len(ids("Say it.")) + len(block)
    assert set(rows[:n_before]) == {OFF}  # the prompt and the block itself
    assert rows[n_before : n_before + 6] == [bucket(r) for r in (3, 2, 1, 0, -1, -2)]
    assert set(rows[n_before + 6 :]) == {OFF}  # the end of turn stops it; nothing after
    # a block without length_tokens, or before any block: no countdown
    plain = ids(render_block({"task": "Rewrite"}, mtax, "compact"))
    assert set(remaining_ids(plain + reply, vocab)) == {OFF}
    # a number of several digit tokens; a later block starts afresh
    big = ids(render_block({"length_tokens": 1234}, mtax, "compact"))
    assert remaining_ids(big + reply[:1], vocab)[-1] == bucket(1233)
    again = remaining_ids(block + reply[:2] + big + reply[:1], vocab)
    assert again[len(block) + 2 + len(big)] == bucket(1233)


def _trained(tmp_path, name, **fields):
    out = tmp_path / name
    run = load_config(
        tiny_config(tmp_path, name=f"{name}.yaml", output_dir=str(out), markers=COUNTDOWN, **fields)
    )
    train(run)
    return out


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_run_trains_saves_and_loads_its_countdown(tmp_path, lora):
    out = _trained(tmp_path, "run", max_steps=4, **(LORA if lora else {}))
    assert (out / COUNTDOWN_FILE).is_file()
    bundle = load_bundle(out)
    table = find_countdown(bundle.model).table.weight.detach()
    head = find_countdown(bundle.model).head.weight.detach()
    assert find_countdown(bundle.model).scale == SCALE  # saved beside the rows
    for rows in (table, head):
        assert float(rows[OFF].abs().sum()) == 0.0  # OFF stays a zero vector
        assert float(rows[1:].abs().sum()) > 0  # trained from zeros
    if not lora:  # the full model's weights do not carry the table
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert not any("countdown" in k for k in f.keys())  # noqa: SIM118 (safe_open is no mapping)
    # the loaded model's rows, step by step in generate, are those of one pass over the same ids
    gen = Generator(bundle)
    res = gen.generate(
        [{"role": "user", "content": "Reverse 'apple'."}], {"length_tokens": 3}, max_new_tokens=12
    )
    assert res.markers["length_tokens"] == 3
    countdown = find_countdown(bundle.model)
    enc = gen.tokenizer(res.raw + " x y z", add_special_tokens=False)["input_ids"]  # a reply after the block
    one_pass = countdown.rows(torch.tensor([enc]))[0].tolist()
    countdown.rows(torch.tensor([enc[:5]]))
    stepped = countdown.rows(torch.tensor([enc[:5]]))[0].tolist()
    stepped += [countdown.rows(torch.tensor([[t]]))[0, 0].item() for t in enc[5:]]
    assert stepped == one_pass and one_pass.count(OFF) < len(one_pass)
    # export keeps it beside the merged model
    if lora:
        exported = load_bundle(export_bundle(out, tmp_path / "exported"))
        assert torch.equal(find_countdown(exported.model).table.weight, table)
        assert torch.equal(find_countdown(exported.model).head.weight, head)


def test_the_head_tap_moves_the_logits_by_the_output_embeddings_of_its_row(tmp_path):
    """After the final norm: the counted positions' logits move by exactly scale * lm_head(row), the others not at
    all; a countdown file saved before the head tap (no head table) loads with it at zero."""
    from safetensors.torch import save_file

    from treasure.countdown import attach_countdown
    from treasure.train.tiny import tiny_llama
    from treasure.train.tokens import add_marker_tokens

    tok, mtax, vocab = _vocab(tmp_path)
    model = tiny_llama(tok).eval()
    add_marker_tokens(model, tok, mtax)
    countdown = attach_countdown(model, tok, mtax)
    ids = tok(
        "Say it." + render_block({"length_tokens": 4}, mtax, "compact") + " one two three",
        add_special_tokens=False,
    )
    x = torch.tensor([ids["input_ids"]])
    counted = torch.tensor(remaining_ids(ids["input_ids"], vocab)) != OFF
    assert counted.any() and not counted.all()
    with torch.no_grad():
        before = model(x).logits[0]
        countdown.head.weight[1:] = torch.randn(N_BUCKETS - 1, countdown.head.weight.shape[1])
        after = model(x).logits[0]
        rows = (
            countdown.scale
            * countdown.head_scale
            * countdown.head(torch.tensor(remaining_ids(ids["input_ids"], vocab)))
        )
        expected = model.get_output_embeddings()(rows)
    assert torch.allclose(after - before, expected, atol=1e-4)
    assert torch.equal(after[~counted], before[~counted])
    old = tmp_path / "old.safetensors"
    save_file(
        {"weight": torch.zeros(N_BUCKETS, countdown.head.weight.shape[1])},
        str(old),
        metadata={"scale": "16.0"},
    )
    fresh = tiny_llama(tok).eval()
    add_marker_tokens(fresh, tok, mtax)
    assert float(attach_countdown(fresh, tok, mtax, old).head.weight.abs().sum()) == 0.0


def test_resume_restores_the_countdown_from_its_checkpoint(tmp_path):
    from transformers import TrainerCallback

    fields = dict(
        max_steps=3, save_strategy="steps", save_steps=2, n_records=8, per_device_train_batch_size=1
    )
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    train(load_config(tiny_config(tmp_path / "a", markers=COUNTDOWN, **fields)))

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(tiny_config(tmp_path / "b", markers=COUNTDOWN, **fields)), callbacks=[Crash()])
    assert (tmp_path / "b" / "run" / "checkpoint-2" / COUNTDOWN_FILE).is_file()
    train(load_config(tiny_config(tmp_path / "b", markers=COUNTDOWN, **fields)), resume=True)
    a, b = (find_countdown(load_bundle(tmp_path / x / "run").model).table.weight.detach() for x in "ab")
    assert float(a.abs().sum()) > 0 and torch.allclose(a, b, atol=1e-6)


def test_countdown_is_checked_in_the_config_and_the_bundle(tmp_path):
    with pytest.raises(ConfigError, match="markers.countdown: needs format compact"):
        load_config(tiny_config(tmp_path, markers={"format": "paper", "countdown": True}))
    with pytest.raises(ConfigError, match="markers.countdown: needs the 'length_tokens'"):
        load_config(tiny_config(tmp_path, markers={**COUNTDOWN, "categories": ["task", "domain"]}))
    with pytest.raises(ConfigError, match="markers.countdown: expected true or false"):
        load_config(tiny_config(tmp_path, markers={**COUNTDOWN, "countdown": "sometimes"}))
    # a baseline run ignores it: the same model as plain SFT
    base = load_config(tiny_config(tmp_path, markers={**COUNTDOWN, "mode": "baseline"}))
    assert not base.markers.uses_countdown
    r = treasure("train", str(tiny_config(tmp_path, name="bad.yaml")), "--markers.countdown", "maybe")
    assert r.returncode == 2 and "markers.countdown" in r.stderr and "Traceback" not in r.stderr
    out = _trained(tmp_path, "run", max_steps=1)
    (out / COUNTDOWN_FILE).unlink()
    with pytest.raises(TreasureError, match=f"{COUNTDOWN_FILE} is missing"):
        load_bundle(out)
