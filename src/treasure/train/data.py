"""Rendered examples -> the tokenised dataset TRL trains on: `input_ids` plus `completion_mask` per example.

Why tokenise here instead of handing TRL the conversational prompt/completion: TRL tokenises the prompt alone and
prompt+completion and starts the completion where the two diverge. When a template or tokenizer merges tokens
across that boundary (GPT-2's BPE turns Llama 3's "\\n\\n" + text into "\\n" "\\n" + ..., not "\\n\\n"), or renders the
prompt differently once a reply follows it (Mistral Nemo moves the system message), TRL trains on a context the
model never sees at inference and may put the end of the prompt under the loss. Here the prompt's tokens are always
exactly what `apply_chat_template(prompt, add_generation_prompt=True)` gives at inference:

1. When those tokens are a prefix of the tokenised conversation (the usual case), the conversation's tokens are used.
2. Otherwise the completion's text (what the template renders after the prompt's turns) is tokenised on its own and
   appended to the prompt's tokens.

TRL still builds the labels from `completion_mask` (completion-only loss), truncates, packs and collates.

Per-epoch dropout: TRL tokenises a dataset once, so the dataset holds one copy of the records per epoch, each copy
in that epoch's order (render.epoch_order) with that epoch's dropout, and the trainer reads it sequentially. Each
epoch sees a fresh draw, and a baseline run reads the same records in the same order for the same steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from treasure.errors import RecordError, TreasureError
from treasure.recipe import MarkerConfig
from treasure.taxonomy import Taxonomy
from treasure.train.render import render_example

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

# Stands in for the completion's content to find where the template puts it; private-use characters, and no
# whitespace for templates that trim content.
_SENTINEL = "\ue000treasure-completion\ue001"


def _ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **kw) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))


def _completion_text(tokenizer, prompt: list[dict], completion: list[dict], kw: dict) -> str:
    """What the model must write after the inference-time prompt: the completion's content, what the template puts
    after it (end of turn), and what it puts before it beyond the generation prompt (Command R's <|START_RESPONSE|>)."""

    def render(messages: list[dict], **extra) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw, **extra)

    probe = [*completion[:-1], {**completion[-1], "content": _SENTINEL}]
    with_probe = render(prompt + probe)
    at = with_probe.find(_SENTINEL)
    full = render(prompt + completion)
    if at < 0 or not full.startswith(with_probe[:at]):
        raise TreasureError("the chat template does not render the reply's text where this tool can find it")
    before, text = with_probe[:at], full[at:]
    turns, with_generation = render(prompt), render(prompt, add_generation_prompt=True)
    if before.startswith(turns) and with_generation.startswith(turns):
        header, generation = before[len(turns) :], with_generation[len(turns) :]
        if header.startswith(generation):
            return header[len(generation) :] + text
    # The template renders the prompt's turns differently once a reply follows (Mistral Nemo moves the system
    # message): the reply's opening cannot be told apart, so the content and what follows it are the completion.
    return text


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: Mapping[str, Any],
    *,
    chat_template: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`{"input_ids", "completion_mask", "split"}` for a rendered example; `split` is "tokens" or "text" (see above)."""
    kw = {"chat_template": chat_template, **(template_kwargs or {})}
    prompt, completion = list(example["prompt"]), list(example["completion"])
    prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True, **kw)
    full_ids = _ids(tokenizer, prompt + completion, **kw)
    n = len(prompt_ids)
    if full_ids[:n] == prompt_ids and len(full_ids) > n:
        ids, split = full_ids, "tokens"
    else:
        text = _completion_text(tokenizer, prompt, completion, kw)
        ids, split = prompt_ids + tokenizer(text, add_special_tokens=False)["input_ids"], "text"
    return {"input_ids": ids, "completion_mask": [0] * n + [1] * (len(ids) - n), "split": split}


@dataclass
class DataSpec:
    """How examples are rendered and tokenised: shared by the train and eval sets and by `treasure inspect`."""

    config: MarkerConfig
    taxonomy: Taxonomy
    seed: int
    chat_template: str | None = None  # the model's own template (the tokenizer carries the wrapped one)
    template_kwargs: Mapping[str, Any] | None = None

    def example(self, tokenizer, record: Mapping[str, Any], *, epoch: int, index: int) -> dict[str, Any]:
        """Render and tokenise one record: the rendered example plus `input_ids`, `completion_mask`, `split`."""
        rendered = render_example(
            record, self.config, self.taxonomy, seed=self.seed, epoch=epoch, index=index
        )
        return {
            **rendered,
            **tokenize_example(
                tokenizer, rendered, chat_template=self.chat_template, template_kwargs=self.template_kwargs
            ),
        }


def build_dataset(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, Any]],
    spec: DataSpec,
    plan: Sequence[tuple[int, int]],
    *,
    source: str = "<records>",
    lines: Sequence[int] | None = None,
    num_proc: int | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """Tokenise `plan` ((epoch, record index) pairs, in training order) into a Dataset of input_ids/completion_mask.

    Returns the dataset and counts {"examples", "text_split"}. A record the template or renderer rejects raises a
    RecordError naming `source` and its line.
    """
    from datasets import Dataset

    def work(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "completion_mask": [], "split": [], "error": []}
        for epoch, index in zip(batch["epoch"], batch["index"], strict=True):
            try:
                ex = spec.example(tokenizer, records[index], epoch=epoch, index=index)
                row = (ex["input_ids"], ex["completion_mask"], ex["split"], "")
            except Exception as e:  # the template's own errors (jinja2 TemplateError) included
                message = " ".join(str(e).split())  # one line: the CLI prints errors as one line
                row = ([], [], "", f"{index}\t{type(e).__name__}: {message}")
            for key, value in zip(out, row, strict=True):
                out[key].append(value)
        return out

    plan_ds = Dataset.from_dict({"epoch": [e for e, _ in plan], "index": [i for _, i in plan]})
    ds = plan_ds.map(
        work,
        batched=True,
        remove_columns=["epoch", "index"],
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        desc="Rendering and tokenising",
    )
    errors = [e for e in ds["error"] if e]
    if errors:
        index, message = errors[0].split("\t", 1)
        line = lines[int(index)] if lines is not None else int(index) + 1
        raise RecordError(message, source=source, line=line, field="messages")
    counts = {"examples": len(ds), "text_split": sum(1 for s in ds["split"] if s == "text")}
    return ds.remove_columns(["split", "error"]), counts


def truncate_dataset(ds: Dataset, max_length: int, mode: str = "keep_start") -> Dataset:
    """Cut every example to `max_length` tokens and drop those left without a trained token, as TRL's own
    preparation does (TRL skips both steps for `padding_free` without packing, so treasure does them first)."""
    sl = slice(None, max_length) if mode == "keep_start" else slice(-max_length, None)

    def cut(ex: dict[str, list]) -> dict[str, list]:
        return {"input_ids": ex["input_ids"][sl], "completion_mask": ex["completion_mask"][sl]}

    return ds.map(cut, desc="Truncating").filter(lambda ex: any(ex["completion_mask"]), desc="Dropping empty")
