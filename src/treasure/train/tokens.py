"""The compact format's added tokens: add them to the tokenizer, grow the embeddings, start them somewhere sensible.

One token per categorical ``category=value``, one per numeric category, and the two delimiters
(markers.compact_tokens). They are added as ordinary (non-special) added tokens with ``normalized=False``: the
tokenizer always matches them whole, and decoding keeps them, so a generated block can be parsed back.

Initialisation (``markers.embedding_init``):
- ``description`` (default): a marker's row is the mean of the embeddings of the tokens of its text in the
  taxonomy, e.g. ``<|domain=Medical|>`` starts at the mean of "domain Medical: health, medicine, diseases, ...".
  Each marker starts near words that mean what it means, and two values of a category start apart.
- ``mean``: every new row is the mean of all existing rows (what transformers' ``mean_resizing`` approximates).
Output rows (an untied LM head) get the same treatment from the output matrix. Rows of tokens that were already in
the tokenizer (a model trained before) are left as they are.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from treasure.markers import COMPACT
from treasure.taxonomy import Taxonomy

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def token_texts(taxonomy: Taxonomy) -> dict[str, str]:
    """For every compact token of `taxonomy` (in markers.compact_tokens order), the text its embedding starts from."""
    texts = {COMPACT.open: "start of the markers: data characteristics", COMPACT.close: "end of the markers"}
    for cat in taxonomy:
        label = cat.name.replace("_", " ")
        if cat.numeric:
            texts[COMPACT.around_value(cat)[0]] = f"{label}: {cat.description}"
        else:
            for value in cat.values:
                about = cat.value_descriptions.get(value) or cat.description
                texts[COMPACT.segment(cat, value)] = f"{label} {value}: {about}"
    return texts


def _gathered(*params):
    """Under DeepSpeed ZeRO-3 the weights are partitioned: gather them (rank 0 writes) around an in-place edit."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=0)
    return contextlib.nullcontext()


def _init_rows(weight: torch.Tensor, new_ids: list[int], sources: list[list[int]], old_rows: int) -> None:
    mean = weight[:old_rows].float().mean(dim=0)
    for row, ids in zip(new_ids, sources, strict=True):
        ids = [i for i in ids if i < old_rows]
        vec = weight[ids].float().mean(dim=0) if ids else mean
        weight[row] = vec.to(weight.dtype)


def extend_tokenizer(tokenizer: PreTrainedTokenizerBase, taxonomy: Taxonomy) -> list[str]:
    """Add the compact tokens of `taxonomy` the tokenizer lacks; returns those it added (in a stable order)."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in token_texts(taxonomy) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    return missing


def add_marker_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, taxonomy: Taxonomy, init: str = "description"
) -> list[int]:
    """Add the compact tokens of `taxonomy` (the run's categories), resize and initialise. Returns all their ids.

    Idempotent: tokens the tokenizer already has keep their rows. The embedding matrix only grows (a model whose
    matrix has spare rows, as Qwen's has, keeps its size).
    """
    import torch

    texts = token_texts(taxonomy)
    missing = extend_tokenizer(tokenizer, taxonomy)
    ids = tokenizer.convert_tokens_to_ids(list(texts))
    if not missing:
        return ids
    new_ids = tokenizer.convert_tokens_to_ids(missing)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # Only rows of tokens the old tokenizer had are sources (not spare rows beyond its vocabulary).
    old_vocab = min(old_rows, len(tokenizer) - len(missing))
    if init == "description":
        sources = [tokenizer(texts[t], add_special_tokens=False)["input_ids"] for t in missing]
    elif init == "mean":
        sources = [[] for _ in missing]
    else:
        raise ValueError(f"unknown embedding init {init!r}")
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    out_w = out.weight if out is not None and out.weight is not inp else None
    with torch.no_grad(), _gathered(*(w for w in (inp, out_w) if w is not None)):
        _init_rows(inp.data, new_ids, sources, old_vocab)
        if out_w is not None:
            _init_rows(out_w.data, new_ids, sources, old_vocab)
    return ids
