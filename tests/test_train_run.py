"""Training tiny-llama for a few steps: parameters change, the loss mask, the bundle, resume, LoRA and export."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import records, snapshot, tiny_config

from treasure.bundle import load_bundle
from treasure.cli import main
from treasure.markers import compact_tokens
from treasure.train.config import load_config
from treasure.train.tiny import tiny_llama, tiny_tokenizer
from treasure.train.tokens import add_marker_tokens
from treasure.train.trainer import ROWS_PARAMETER, build_trainer, prepare, train

USER = [{"role": "user", "content": "Reverse 'apple'."}]


def _initial_compact_model(paper):
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    add_marker_tokens(model, tok, paper)
    return snapshot(model)


def test_cli_train_changes_every_parameter_and_saves_a_bundle(tmp_path, capsys, paper):
    cfg = tiny_config(tmp_path, markers={"format": "compact"})
    assert main(["train", str(cfg), "--max_steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "16 records x 1 epoch copies = 16 examples" in out and "saved bundle to" in out
    run_dir = tmp_path / "run"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "taxonomy.yaml",
        "treasure.json",
        "marker_stats.json",
    ):
        assert (run_dir / name).is_file(), name
    bundle = load_bundle(run_dir)
    before, after = _initial_compact_model(paper), bundle.model.state_dict()
    unchanged = [k for k, v in before.items() if torch.equal(v, after[k])]
    assert not unchanged
    # the bundle describes the run
    info = bundle.info
    assert info["format"] == "compact" and info["mode"] == "markers" and info["placement"] == "both"
    assert info["taxonomy"]["fingerprint"] == paper.fingerprint() and info["separator"] == ""
    assert info["marker_tokens"] == compact_tokens(paper) and info["adapter"] is False
    from treasure.stats import marker_stats

    assert bundle.stats == json.loads(json.dumps(marker_stats(records(16), paper)))
    # its chat template renders markers, as training did, from a `markers` argument
    assert bundle.tokenizer.apply_chat_template(
        USER, markers={"domain": "code", "quality": 3.14159}, add_generation_prompt=True, tokenize=False
    ) == (
        "<|im_start|>user\nReverse 'apple'.<|markers|><|quality|>3.14<|domain=Code|><|/markers|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert bundle.tokenizer.encode("<|domain=Code|>", add_special_tokens=False) == [
        bundle.tokenizer.convert_tokens_to_ids("<|domain=Code|>")
    ]
    parsed, response = bundle.split_completion("<|markers|><|task=Rewrite|><|/markers|>elppa")
    assert parsed.markers == {"task": "Rewrite"} and response == "elppa"
    # and the model generates from it
    ids = bundle.tokenizer(bundle.prompt(USER, {"task": "Rewrite"}), return_tensors="pt")
    assert (
        bundle.model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    )


def test_inspect_marks_the_trained_tokens(tmp_path, capsys):
    cfg = tiny_config(tmp_path, markers={"format": "compact", "dataset_dropout": 0.0, "sample_dropout": 0.0})
    assert main(["inspect", str(cfg), "--n", "2", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.count("== example") == 2
    assert "<|im_start|>assistant\n[[<|markers|><|quality|>" in out and "<|im_end|>\n]]" in out
    assert main(["inspect", "--color", "always", str(cfg), "--n", "1", "--markers.mode", "baseline"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[32m" in out and "<|markers|>" not in out


def test_trl_trains_exactly_the_completion_markers_and_response(tmp_path, paper):
    run = load_config(tiny_config(tmp_path, markers={"format": "compact"}, max_length=40))
    prep = prepare(run)
    trainer = build_trainer(run, prep)
    batch = next(iter(trainer.get_train_dataloader()))
    tok = prep.tokenizer
    for row, ids, labels in zip(prep.train_dataset, batch["input_ids"], batch["labels"], strict=False):
        n = len(row["input_ids"][:40])
        trained = [i for i, lab in enumerate(labels[:n].tolist()) if lab != -100]
        expected = [i for i, m in enumerate(row["completion_mask"][:40]) if m]
        assert trained == expected  # the completion (block + response), nothing of the prompt
        assert (labels[n:] == -100).all()  # padding
        text = tok.decode(ids[trained[0] : trained[-1] + 1], skip_special_tokens=False)
        assert text.startswith("<|markers|>")


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    from transformers import TrainerCallback

    fields = dict(
        max_steps=3, save_strategy="steps", save_steps=2, n_records=8, per_device_train_batch_size=1
    )
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = load_config(tiny_config(tmp_path / "a", **fields))
    train(straight)

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt  # as a kill would: after checkpoint-2, in the middle of the run

    interrupted = load_config(tiny_config(tmp_path / "b", **fields))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[Crash()])
    assert (tmp_path / "b" / "run" / "checkpoint-2").is_dir() and not (
        tmp_path / "b" / "run" / "treasure.json"
    ).exists()
    result = train(load_config(tiny_config(tmp_path / "b", **fields)), resume=True)
    assert result.resumed_from.endswith("checkpoint-2")
    a = load_bundle(tmp_path / "a" / "run").model.state_dict()
    b = load_bundle(tmp_path / "b" / "run").model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_baseline_sees_the_same_records_in_the_same_order_for_the_same_steps(tmp_path):
    fields = dict(num_train_epochs=2, n_records=10)
    del_steps = {"max_steps": -1}
    marked = prepare(load_config(tiny_config(tmp_path, **fields, **del_steps)), load_model=False)
    base = prepare(
        load_config(tiny_config(tmp_path, **fields, **del_steps), ["--markers.mode", "baseline"]),
        load_model=False,
    )
    assert marked.counts["examples"] == base.counts["examples"] == 20
    tok_m, tok_b = marked.tokenizer, base.tokenizer
    for m, b in zip(marked.train_dataset, base.train_dataset, strict=True):
        reply_m = tok_m.decode([i for i, k in zip(m["input_ids"], m["completion_mask"], strict=True) if k])
        reply_b = tok_b.decode([i for i, k in zip(b["input_ids"], b["completion_mask"], strict=True) if k])
        assert reply_m.startswith("<|markers|>") and reply_m.endswith(reply_b) and "<|" not in reply_b[:-12]
    assert len(tok_b) == 50259  # the baseline model has the plain vocabulary


def test_lora_trains_the_new_token_rows_and_exports_a_plain_checkpoint(tmp_path, paper, capsys):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(
        tmp_path, use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], max_steps=2
    )
    result = train(load_config(cfg))
    run_dir = result.output_dir
    assert (run_dir / "adapter_config.json").is_file() and not (run_dir / "model.safetensors").exists()
    assert json.loads((run_dir / "treasure.json").read_text())["adapter"] is True
    merged = load_bundle(run_dir).model.state_dict()
    before = _initial_compact_model(paper)
    new_rows = slice(50259, None)
    emb = "model.embed_tokens.weight"
    assert not torch.equal(merged[emb][new_rows], before[emb][new_rows])  # the marker rows were trained
    assert torch.equal(merged[emb][:50259], before[emb][:50259])  # the old vocabulary was not
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(
        merged["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"]
    )

    out = tmp_path / "merged"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert "export: wrote" in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(plain[k], merged[k]) for k in merged)
    exported = load_bundle(out)
    assert exported.info["adapter"] is False and exported.markers.format == "compact"
    assert "<|markers|><|task=Rewrite|><|/markers|>" in exported.prompt(USER, {"task": "Rewrite"})


def test_lora_bundle_of_a_local_base_saves_the_adapter_and_marker_rows_only(tmp_path, paper):
    """A base model in a local folder is what makes PEFT's "auto" save the whole resized embedding matrix (it
    compares the vocabulary with the folder's config): the bundle must hold only the adapter and the new rows,
    and still load, and export, to the trained model."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    base_dir = tmp_path / "base"
    tiny_llama(tok).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    cfg = tiny_config(
        tmp_path,
        model_name_or_path=str(base_dir),
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"],
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    result = train(load_config(cfg))
    run_dir = result.output_dir
    for folder in (run_dir, run_dir / "checkpoint-2"):
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
        assert not any(shape[0] >= 50259 for shape in shapes.values()), shapes  # no vocabulary-sized matrix
        deltas = [k for k in shapes if "trainable_tokens_delta" in k]
        assert deltas and all(shapes[k][0] == len(compact_tokens(paper)) for k in deltas)
    bundle = load_bundle(run_dir)
    trained = bundle.model.state_dict()
    emb = "model.embed_tokens.weight"
    assert trained[emb].shape[0] == len(bundle.tokenizer)
    assert not torch.equal(trained[emb][50259:], _initial_compact_model(paper)[emb][50259:])
    assert main(["export", str(run_dir), str(tmp_path / "merged")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert all(torch.equal(plain[k], trained[k]) for k in trained)


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    from treasure.train.trainer import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    for step, complete in ((2, True), (10, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # numeric order; 12 was being written


@pytest.mark.slow
def test_cli_resume_after_a_kill(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tiny_config(tmp_path, max_steps=10, save_strategy="steps", save_steps=2, n_records=8)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "treasure.cli", "train", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = tmp_path / "run"
    deadline = time.time() + 600
    while not (run_dir / "checkpoint-2" / "trainer_state.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "treasure.json").exists()  # killed before the end
    assert main(["train", str(cfg), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "(resumed from " in out and (run_dir / "treasure.json").is_file()
    state = json.loads((run_dir / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10


def test_epochs_become_one_sequential_pass_over_epoch_copies(tmp_path):
    from treasure.train.trainer import epoch_copies, trl_args

    run = load_config(
        tiny_config(tmp_path, max_steps=-1, num_train_epochs=3, eval_strategy="epoch", save_strategy="epoch")
    )
    assert epoch_copies(run.args, 10) == 3
    args = trl_args(run.args, 10, 3)
    assert args.num_train_epochs == 1.0 and args.train_sampling_strategy == "sequential"
    assert args.completion_only_loss is True
    assert args.save_strategy == "steps" and args.save_steps == 5  # 10 records / batch 2
    assert args.eval_strategy == "steps" and args.eval_steps == 5
    assert run.args.save_strategy == "epoch"  # the user's config is left as it was
    run = load_config(tiny_config(tmp_path, max_steps=7, per_device_train_batch_size=3))
    assert epoch_copies(run.args, 10) == 3  # 7 steps x 3 examples need 21 examples: 3 copies of 10


def test_embedding_learning_rate_moves_only_the_marker_rows_faster(tmp_path, paper):
    """One step of Adam moves each parameter by about its group's rate: with embedding_learning_rate at 10x the
    run's, the new rows move ~10x as far, while the LoRA weights take the very same first step."""
    lora = {
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "max_steps": 1,
    }
    trained = {}
    for name, extra in (("plain", {}), ("rows", {"embedding_learning_rate": 1e-1})):
        folder = tmp_path / name
        folder.mkdir()
        cfg = tiny_config(folder, learning_rate=1e-2, **lora, **extra)
        trainer = build_trainer(load_config(cfg), prepare(load_config(cfg)))
        trainer.create_optimizer()
        groups = trainer.optimizer.param_groups
        (row,) = [p for n, p in trainer.model.named_parameters() if ROWS_PARAMETER in n]
        assert row.shape[0] == len(compact_tokens(paper))
        (group,) = [g for g in groups if any(p is row for p in g["params"])]
        assert group["lr"] == (1e-1 if extra else 1e-2) and (len(group["params"]) == 1) == bool(extra)
        assert sum(len(g["params"]) for g in groups) == len({id(p) for g in groups for p in g["params"]})
        trained[name] = load_bundle(train(load_config(cfg)).output_dir).model.state_dict()
    before = _initial_compact_model(paper)
    emb, new = "model.embed_tokens.weight", slice(50259, None)
    moved = {k: (m[emb][new] - before[emb][new]).abs().max().item() for k, m in trained.items()}
    assert 5 < moved["rows"] / moved["plain"] < 15, moved
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(trained["rows"][q], trained["plain"][q]) and not torch.equal(
        trained["plain"][q], before[q]
    )


def test_embedding_learning_rate_needs_new_rows_to_train(tmp_path):
    from treasure.errors import ConfigError

    cfg = tiny_config(tmp_path, embedding_learning_rate=1e-1)  # a full fine-tune: no rows apart
    with pytest.raises(ConfigError, match="embedding_learning_rate: .*use_peft"):
        build_trainer(load_config(cfg), prepare(load_config(cfg)))
    with pytest.raises(ConfigError, match="embedding_learning_rate: expected a number above 0"):
        load_config(tiny_config(tmp_path, name="bad.yaml", embedding_learning_rate=-1))
