"""Helpers for the training tests: tokenizers for the real chat templates, tiny records and tiny configs.

Plain functions (imported by tests/test_train_*.py), no fixtures: everything is built locally, nothing downloaded.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TINY_TRAIN = REPO / "configs" / "data" / "tiny_train.jsonl"

# name -> (file in shared/data/chat_templates, bos token, eos token). Each template's own control tokens (found in
# its text) become special tokens of a GPT-2 tokenizer, as they are in the real model's tokenizer.
TEMPLATES: dict[str, tuple[str, str | None, str]] = {
    "llama-3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2.5": ("qwen2_5.jinja", None, "<|im_end|>"),
    "qwen2.5-relaid": ("qwen2.5-instruct.jinja", None, "<|im_end|>"),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"),
    "gemma-2": ("google-gemma-2-2b-it.jinja", "<bos>", "<eos>"),
    "phi-3.5": ("microsoft-Phi-3.5-mini-instruct.jinja", None, "<|endoftext|>"),
    "command-r7b": (
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
    ),
}
# Templates that reject a system turn (documented in docs/training.md).
NO_SYSTEM = {"gemma-2"}
_CONTROL = re.compile(
    r"<\|[A-Za-z_]+\|>|<start_of_turn>|<end_of_turn>|\[/?INST\]|\[/?AVAILABLE_TOOLS\]|\[TOOL_CALLS\]"
)


def template_text(name: str) -> str:
    return (SHARED / "chat_templates" / TEMPLATES[name][0]).read_text(encoding="utf-8")


@cache
def _template_tokenizer(name: str):
    from treasure.train.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    _, bos, eos = TEMPLATES[name]
    text = template_text(name)
    specials = sorted(set(_CONTROL.findall(text)) | {t for t in (bos, eos) if t})
    tok.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    if bos:
        tok.bos_token = bos
    tok.eos_token = eos
    tok.chat_template = text
    return tok


def template_tokenizer(name: str):
    """A GPT-2 tokenizer with `name`'s template and control tokens (a fresh copy each call)."""
    import copy

    return copy.deepcopy(_template_tokenizer(name))


def records(n: int = 16) -> list[dict]:
    """The first `n` tiny training records (configs/data/tiny_train.jsonl), with their markers."""
    out = []
    with TINY_TRAIN.open(encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def write_records(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, *, n_records: int = 16, name: str = "config.yaml", **fields: Any) -> Path:
    """A YAML for a few fast steps of tiny-llama on `n_records` records; `fields` override or add keys."""
    train = write_records(tmp_path / "train.jsonl", records(n_records))
    config: dict[str, Any] = {
        "model_name_or_path": "tiny-llama",
        "train_file": train.name,
        "output_dir": str(tmp_path / "run"),
        "markers": {"format": "compact"},
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "max_length": 192,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 7,
        "bf16": False,
        "use_cpu": True,
        "activation_checkpointing": False,
        "report_to": "none",
        "disable_tqdm": True,
    }
    config.update(fields)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def snapshot(model) -> dict[str, Any]:
    """A detached copy of every parameter."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
