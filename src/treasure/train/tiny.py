"""`tiny-llama`: a small Llama built on the spot from the packaged GPT-2 tokenizer, so training runs with no download.

`model_name_or_path: tiny-llama` in a config means this model: 2 layers, width 64, 4 heads, tied embeddings,
the GPT-2 byte-level BPE vocabulary (src/treasure/assets/gpt2-tokenizer.json) plus ChatML's two turn tokens, and a
ChatML chat template. Its weights are drawn from a fixed seed (not the training seed), so `tiny-llama` names the
same starting model in every run and a LoRA adapter trained on it can be reloaded. It exists for demos and tests;
it learns string tasks, not language.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_LLAMA = "tiny-llama"
TINY_SEED = 0
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The architecture; small enough that a CPU step is dominated by the 50k-row output layer.
TINY_ARCH = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def is_tiny(name: str | None) -> bool:
    return name == TINY_LLAMA


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The packaged GPT-2 tokenizer with ChatML turn tokens and template; eos is `<|im_end|>`."""
    from transformers import PreTrainedTokenizerFast

    path = resources.files("treasure.assets").joinpath("gpt2-tokenizer.json")
    with resources.as_file(path) as file:
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(file), model_max_length=TINY_ARCH["max_position_embeddings"]
        )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = CHATML_TEMPLATE
    return tok


def char_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer with no merges (one token per UTF-8 byte, 256 + 3 special tokens), ChatML turns.

    Built with Hugging Face `tokenizers` on the spot, saved and loaded like any fast tokenizer. The demo's models use
    it: the output layer is 259 rows instead of GPT-2's 50k (the 50k rows dominate a tiny model's CPU step), and
    letter-level tasks see letters.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, model_max_length=TINY_ARCH["max_position_embeddings"]
    )
    tok.add_special_tokens(
        {"pad_token": "<|endoftext|>", "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    )
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase | None = None, *, seed: int = TINY_SEED, **arch
) -> PreTrainedModel:
    """The tiny Llama for `tokenizer` (default: `tiny_tokenizer()`), with weights drawn from `seed`.

    `arch` overrides TINY_ARCH (hidden_size, num_hidden_layers, ...); with it the model is no longer `tiny-llama`
    (save it and name the folder)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{**TINY_ARCH, **arch},
    )
    # Fork the RNG so building the model neither depends on nor disturbs the caller's seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if not arch and seed == TINY_SEED:
        model.config.name_or_path = TINY_LLAMA
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model
