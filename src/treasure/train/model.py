"""Load the model and tokenizer a run names: `tiny-llama`, a local folder, a hub id, a GGUF file or the default
model's alias (treasure.model_source turns the last two into a cached folder); and its chat template.

Model loading follows TRL's `sft.py` script (dtype, attention implementation, quantisation from `ModelConfig`),
through TRL's own `create_model_from_path`, so a config behaves as it would with `trl sft`. The model is loaded here
rather than by `SFTTrainer` because the compact format must add tokens and grow the embeddings first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from treasure.errors import ConfigError
from treasure.model_source import resolve_model
from treasure.train.chat_template import original_chat_template
from treasure.train.config import looks_local
from treasure.train.tiny import is_tiny, tiny_llama, tiny_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import ModelConfig

    from treasure.train.config import TreasureSFTConfig


def _where(name: str) -> str:
    return "a local folder" if Path(os.path.expanduser(name)).is_dir() else "the Hugging Face Hub"


def _brief(e: Exception, limit: int = 300) -> str:
    """An exception's message on one line (the CLI prints errors as one line)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _resolve(name: str) -> str:
    """The folder or hub id transformers loads for `name` (a GGUF file or an alias is converted once)."""
    try:
        return resolve_model(name)
    except ConfigError as e:
        raise ConfigError(f"model_name_or_path: {e}") from None


def load_tokenizer(name: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of `name`; a ConfigError naming `model_name_or_path` when it cannot be loaded."""
    if is_tiny(name):
        return tiny_tokenizer()
    source = _resolve(name)
    if looks_local(source) and not Path(os.path.expanduser(source)).is_dir():
        raise ConfigError(f"model_name_or_path: {name}: no such directory")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model_name_or_path: cannot load a tokenizer for {name!r} from {_where(source)} ({_brief(e)})"
        ) from None


def load_model_and_tokenizer(
    model_args: ModelConfig, args: TreasureSFTConfig
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    name = model_args.model_name_or_path
    if not name:
        raise ConfigError(
            "model_name_or_path: missing (a hub id, a local folder, a .gguf file, smollm2-135m-instruct or tiny-llama)"
        )
    tokenizer = load_tokenizer(
        name, revision=model_args.model_revision, trust_remote_code=args.trust_remote_code
    )
    if is_tiny(name):
        return tiny_llama(tokenizer), tokenizer
    from accelerate import PartialState
    from trl import get_quantization_config
    from trl.trainer.utils import create_model_from_path

    source = _resolve(name)  # converted by load_tokenizer already: a lookup in the cache
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
        **(args.model_init_kwargs or {}),
    )
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        # k-bit weights cannot move after loading: put each process's copy on its own device now
        kwargs.update(quantization_config=quantization, device_map={"": PartialState().local_process_index})
    elif args.world_size > 1:
        kwargs["device_map"] = None  # each process holds its own copy (DDP) or shard (FSDP/DeepSpeed)
    try:
        model = create_model_from_path(source, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model_name_or_path: cannot load {name!r} from {_where(source)} ({_brief(e)})"
        ) from None
    return model, tokenizer


def resolve_chat_template(tokenizer: PreTrainedTokenizerBase, args: TreasureSFTConfig, name: str) -> str:
    """The template the model's turns are rendered with: `chat_template_path` if set, else the tokenizer's own.

    A template that treasure wrapped before (training on from a bundle) is unwrapped: it is wrapped again for this
    run's markers.
    """
    path = args.chat_template_path
    if path:
        if Path(path).is_file():
            template = Path(path).read_text(encoding="utf-8")
        else:
            template = load_tokenizer(path, trust_remote_code=args.trust_remote_code).chat_template
            if not template:
                raise ConfigError(f"chat_template_path: {path}: has no chat template")
    else:
        template = tokenizer.chat_template
        if not template:
            raise ConfigError(
                f"model_name_or_path: {name}: the tokenizer has no chat template; set chat_template_path to a "
                ".jinja file or to a model whose template to use"
            )
    if isinstance(template, dict):  # a tokenizer with several named templates
        template = template.get("default") or next(iter(template.values()))
    return original_chat_template(template)
