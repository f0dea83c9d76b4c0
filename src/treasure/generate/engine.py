"""A trained bundle -> responses, with markers optional: inferred, fixed, or predicted on the fly.

    gen = Generator(load_bundle("runs/tiny"))
    out = gen.generate([{"role": "user", "content": "Fix this line: prnt(1 + 2)"}], markers={"length_bucket": "concise"})
    out.text      # the response, never any marker syntax
    out.markers   # every marker of the block: out.fixed (given by the caller) + out.inferred (written by the model)

Modes (the paper's three):
- ``inferred``: no markers in the prompt; the model writes its whole block, then the response.
- ``fixed``: the caller's markers go into the prompt (as training placed them) and are forced into the completion's
  block by constrained decoding; the model infers the rest.
- ``onthefly``: an annotator predicts markers from the prompt (domain, task, language by default), which are then
  fixed; markers the caller gives win over predicted ones.
With constrained decoding (the default) the block can only hold valid categories and values of the bundle's
taxonomy; a block that the model leaves open (unconstrained, or a truncated generation) still yields a response
and `block_closed=False`, never an exception.

A request is planned first (`Generator.plan`: the prompt text and the validated fixed markers, a `Plan`), then
run: `generate_batch` and `stream` share the planning, the encoding (left-padded here, so the bundle's tokenizer is
never changed) and the logits processors; only how the new ids come back differs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from treasure.errors import TaxonomyError, TreasureError
from treasure.markers import block_format, first_of, marker_syntax, merge_markers

log = logging.getLogger(__name__)

MODES = ("inferred", "fixed", "onthefly")
# Annotators that read only the prompt, so they can run before a response exists.
PROMPT_ANNOTATORS = ("embedding", "language")
# End-of-turn tokens of common chat templates (ChatML/Qwen, Llama 3, Gemma, Phi-3, Command R): a model may end its
# turn with one of them even where its generation config names only the end of the text.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|END_OF_TURN_TOKEN|>")


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the model's and the tokenizer's eos ids, and those END_OF_TURN_TOKENS it has."""
    ids = set()
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    for tok in END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(ids)


class Plan(NamedTuple):
    """One conversation, planned: the prompt text the model reads and the (validated) markers its block must hold."""

    prompt: str
    fixed: dict[str, Any]


@dataclass
class Generation:
    text: str  # the response, after the marker block
    markers: dict[str, Any]  # fixed + inferred, in taxonomy order
    fixed: dict[str, Any]
    inferred: dict[str, Any]
    mode: str
    block_closed: bool = True  # the completion's block was complete (always True for bundles without one)
    block_forced: bool = False  # the length budget had to steer the block closed
    problems: list[str] = field(default_factory=list)  # what the parser rejected in an unconstrained block
    # marker syntax followed the block (only possible unconstrained): the response was cut where it began
    cut: bool = False
    raw: str = ""  # the whole completion: block + separator + response
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (end of turn) or "length" (max_new_tokens)


class Generator:
    """Generation for one loaded bundle (see treasure.bundle.load_bundle)."""

    def __init__(
        self,
        bundle: Any,
        *,
        constrained: bool = True,
        max_block_tokens: int | None = 64,
        onthefly_annotators: Sequence[Any] | None = None,
    ):
        if bundle.model is None:
            raise TreasureError(f"{bundle.path}: loaded without its model; load it with load_model=True")
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.tokenizer = bundle.tokenizer  # shared with the bundle: read, never reconfigured
        # Rows are left-padded here (`_encode`) with the pad token, or the end of text where there is none.
        tok = self.tokenizer
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._pad_text = tok.pad_token if tok.pad_token_id is not None else tok.eos_token
        cfg = bundle.markers
        self.config = cfg
        self.taxonomy = bundle.marker_taxonomy
        self.uses_markers = cfg.mode == "markers"
        self.writes_block = self.uses_markers and cfg.completion_markers
        self.constraint = None
        if constrained and self.writes_block:
            from treasure.generate.constrain import MarkerConstraint

            self.constraint = MarkerConstraint(
                self.tokenizer, self.taxonomy, cfg.format, max_block_tokens=max_block_tokens
            )
        # Every marker string of the run's taxonomy: never part of a response (guard.py keeps them out when
        # constrained; unconstrained, a response is cut where one begins).
        self._syntax = marker_syntax(bundle.taxonomy) if self.uses_markers else []
        self._guard = None
        if constrained and self.uses_markers:
            from treasure.generate.constrain import token_texts
            from treasure.generate.guard import tables_for

            self._texts = token_texts(self.tokenizer)
            self._guard = tables_for(self.tokenizer, self._syntax)
        self._onthefly = list(onthefly_annotators) if onthefly_annotators is not None else None
        self._stop_ids = stop_ids(self.model, self.tokenizer)
        self._lock = threading.Lock()  # one generate at a time per model (the server's threads share it)
        # A fast tokenizer is a Rust object that refuses concurrent use ("Already borrowed") when a call changes its
        # settings while another reads it; the bundle's tokenizer may be used by others: encode and decode here
        # go through this lock.
        self._tok_lock = threading.RLock()

    # -------------------------------------------------------------------------------------------- markers in

    def validate_markers(self, markers: dict[str, Any] | None) -> dict[str, Any]:
        """Canonical markers, or a TaxonomyError naming the category, for this bundle's categories."""
        if not markers:
            return {}
        if not self.uses_markers:
            raise TaxonomyError(f"{self.bundle.path} was trained without markers (baseline): it takes none")
        return self.taxonomy.validate_markers(dict(markers))

    def predict_markers(self, messages: list[dict]) -> dict[str, Any]:
        """On-the-fly markers: what the prompt-level annotators say about this conversation."""
        if self._onthefly is None:
            from treasure.annotate.options import AnnotateOptions
            from treasure.annotate.registry import build_annotators

            self._onthefly = []
            for kind in PROMPT_ANNOTATORS:
                cats = [c.name for c in self.taxonomy if c.annotator == kind]
                if not cats:
                    continue
                try:
                    self._onthefly += build_annotators(
                        self.bundle.taxonomy, AnnotateOptions(categories=cats)
                    )[0]
                except ModuleNotFoundError as e:  # an annotator this install lacks: predict the others
                    log.warning("on-the-fly markers: no %s annotator (%s); %s not predicted", kind, e,
                                ", ".join(cats))  # fmt: skip
        record = {"messages": [*messages, {"role": "assistant", "content": ""}], "markers": {}}
        found: dict[str, Any] = {}
        for ann in self._onthefly:
            for cat, value in ann.annotate([record])[0].items():
                if cat in self.taxonomy and cat not in found:
                    found[cat] = value
        return self.taxonomy.validate_markers(found)

    def plan(self, messages: list[dict], markers: dict[str, Any] | None, mode: str) -> Plan:
        """The prompt text and fixed markers for one conversation in one mode (validated: raises on bad input)."""
        if mode not in MODES:
            raise TreasureError(f"unknown mode {mode!r} (valid: {', '.join(MODES)})")
        fixed = self.validate_markers(markers)
        if mode == "inferred" and fixed:
            raise TreasureError("mode 'inferred' takes no markers; use mode 'fixed' (or give none)")
        if mode == "onthefly" and self.uses_markers:
            fixed = merge_markers(fixed, self.predict_markers(messages))
            fixed = self.taxonomy.validate_markers(fixed)
        prompt = self.bundle.prompt(messages, markers=fixed or None)
        return Plan(prompt, fixed)

    # ------------------------------------------------------------------------------------------- generation

    def _processors(self, fixed: list[dict], max_new_tokens: int):
        """(block constraint or None, the logits processors) for one generate call: the block constraint, then the
        guard that keeps marker syntax out of the response. The block's budget never exceeds `max_new_tokens`, so
        a short generation still closes its block (the response is then cut, not the block)."""
        from transformers import LogitsProcessorList

        block = None
        if self.constraint is not None:
            budget = self.constraint.max_block_tokens
            budget = max_new_tokens if budget is None else min(budget, max_new_tokens)
            block = self.constraint.logits_processor(fixed, max_block_tokens=budget)
        processors = LogitsProcessorList([block] if block else [])
        if self._guard is not None:
            from treasure.generate.guard import MarkerSyntaxGuard

            processors.append(
                MarkerSyntaxGuard(self._guard, self._texts, block.in_block if block else None, self._stop_ids)
            )
        return block, processors

    def _clean(self, response: str, *, partial: bool = False) -> tuple[str, bool]:
        """(response without marker syntax, whether it was cut). A partial response also holds back a trailing
        piece that may still become marker syntax, so streamed pieces never have to be taken back."""
        if not self._syntax:
            return response, False
        cut = first_of(response, self._syntax)
        if cut >= 0:
            return response[:cut], True
        if partial:
            lt = response.rfind("<")
            if lt >= 0 and any(s.startswith(response[lt:]) for s in self._syntax):
                return response[:lt], False
        return response, False

    def _generate_kwargs(
        self, max_new_tokens: int, temperature: float, top_p: float, min_new_tokens: int = 0
    ) -> dict[str, Any]:
        if max_new_tokens < 1:
            raise TreasureError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        kw: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min(min_new_tokens, max_new_tokens) or None,
            "eos_token_id": self._stop_ids or None,
            "pad_token_id": self._pad_id,
        }
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _decode(self, ids: list[int]) -> tuple[str, int, str]:
        """(text, tokens, finish reason) for one row's new ids: cut at the first end-of-turn, drop padding."""
        stop = set(self._stop_ids)
        out, reason = [], "length"
        for i in ids:
            if i in stop:
                reason = "stop"
                break
            out.append(i)
        with self._tok_lock:
            text = self.tokenizer.decode(out, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if self._pad_text:
            text = text.replace(self._pad_text, "")
        return text, len(out), reason

    def _encode(self, prompts: list[str]) -> dict[str, Any]:
        """The prompts' ids, left-padded to one width (every block then starts right after the input columns)."""
        import torch

        with self._tok_lock:
            enc = self.tokenizer(prompts, add_special_tokens=False)
        width = max(len(ids) for ids in enc["input_ids"])
        fill = {"input_ids": self._pad_id, "attention_mask": 0}
        out = {}
        for key, rows in enc.items():
            pad = fill.get(key, 0)
            out[key] = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
        return {k: v.to(self.model.device) for k, v in out.items()}

    def _prepare(
        self,
        plans: Sequence[Plan],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        min_new_tokens: int,
    ):
        """(encoded prompts, block constraint or None, logits processors, generate kwargs) for one generate call:
        everything `generate_batch` and `stream` hand to the model."""
        enc = self._encode([p.prompt for p in plans])
        block, processors = self._processors([p.fixed for p in plans], max_new_tokens)
        return (
            enc,
            block,
            processors,
            self._generate_kwargs(max_new_tokens, temperature, top_p, min_new_tokens),
        )

    def _result(self, raw: str, fixed: dict, mode: str, block: Any, n_prompt: int, n_new: int, reason: str):
        if not self.writes_block:
            text, cut = self._clean(raw)
            problems = ["marker syntax in the response: cut where it began"] if cut else []
            return Generation(text, dict(fixed), dict(fixed), {}, mode, raw=raw, prompt_tokens=n_prompt,
                              completion_tokens=n_new, finish_reason=reason, cut=cut,
                              problems=problems)  # fmt: skip
        parsed, response = self.bundle.split_completion(raw)
        response, cut = self._clean(response)
        problems = list(parsed.problems)
        if cut:
            problems.append("marker syntax after the block: the response was cut where it began")
        inferred = {k: v for k, v in parsed.markers.items() if k not in fixed}
        markers = self.taxonomy.validate_markers(merge_markers(fixed, parsed.markers))
        return Generation(
            text=response,
            markers=markers,
            fixed=dict(fixed),
            inferred=inferred,
            mode=mode,
            block_closed=parsed.complete,
            block_forced=bool(block and block.forced),
            problems=problems,
            cut=cut,
            raw=raw,
            prompt_tokens=n_prompt,
            completion_tokens=n_new,
            finish_reason=reason,
        )

    def generate_batch(
        self,
        conversations: Sequence[list[dict]],
        markers: Sequence[dict[str, Any] | None] | None = None,
        *,
        mode: str = "inferred",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int = 16,
        progress: bool = False,
        min_new_tokens: int = 0,
    ) -> list[Generation]:
        """Generate for many conversations; `markers` gives one dict (or None) per conversation.

        `min_new_tokens` keeps the end of turn out until that many tokens are written (benchmarks use it to fix
        the length of a generation).
        """
        import torch

        markers = list(markers) if markers is not None else [None] * len(conversations)
        if len(markers) != len(conversations):
            raise TreasureError(f"{len(markers)} marker sets for {len(conversations)} conversations")
        plans = [self.plan(msgs, m, mode) for msgs, m in zip(conversations, markers, strict=True)]
        # Batches of prompts of similar length (shortest first), so that a batch pads each prompt to its
        # neighbours' width and not to the longest of all; results come back in the order given.
        with self._tok_lock:
            sizes = [
                len(ids)
                for ids in self.tokenizer([p.prompt for p in plans], add_special_tokens=False)["input_ids"]
            ]
        order = sorted(range(len(plans)), key=sizes.__getitem__)
        results: list[Generation | None] = [None] * len(plans)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), desc="generate", unit="prompt", disable=not progress)
        for start in range(0, len(plans), batch_size):
            rows = order[start : start + batch_size]
            chunk = [plans[i] for i in rows]
            enc, processor, processors, kw = self._prepare(
                chunk, max_new_tokens, temperature, top_p, min_new_tokens
            )
            with self._lock, torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed + start)
                out = self.model.generate(**enc, logits_processor=processors, **kw)
            blocks = processor.results(out) if processor else [None] * len(chunk)
            width = enc["input_ids"].shape[1]
            for row, (plan, block) in enumerate(zip(chunk, blocks, strict=True)):
                raw, n_new, reason = self._decode(out[row, width:].tolist())
                n_prompt = int(enc["attention_mask"][row].sum())
                results[rows[row]] = self._result(raw, plan.fixed, mode, block, n_prompt, n_new, reason)
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]  # every slot filled

    def generate(self, messages: list[dict], markers: dict[str, Any] | None = None, *, mode: str | None = None,
                 **kw: Any) -> Generation:  # fmt: skip
        """One conversation. Without `mode`: `fixed` when markers are given, else `inferred`."""
        mode = mode or ("fixed" if markers else "inferred")
        return self.generate_batch([messages], [markers], mode=mode, batch_size=1, **kw)[0]

    def stream(
        self,
        messages: list[dict],
        markers: dict[str, Any] | None = None,
        *,
        mode: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> Iterator[str | Generation]:
        """Yield the response text in pieces as it is generated (the block is held back), then the Generation.

        The pieces join to exactly `Generation.text` of the same call without streaming.
        """
        import torch
        from transformers.generation.streamers import BaseStreamer

        mode = mode or ("fixed" if markers else "inferred")
        plan = self.plan(messages, markers, mode)
        enc, processor, processors, gen_kw = self._prepare(
            [plan], max_new_tokens, temperature, top_p, min_new_tokens
        )
        width = enc["input_ids"].shape[1]
        ids_q: queue.Queue = queue.Queue()

        class _Ids(BaseStreamer):
            first = True

            def put(self, value):  # the first call carries the prompt
                if self.first:
                    self.first = False
                    return
                ids_q.put(value.reshape(-1).tolist())

            def end(self):
                ids_q.put(None)

        box: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if seed is not None:
                        torch.manual_seed(seed)
                    box["out"] = self.model.generate(
                        **enc, streamer=_Ids(),
                        logits_processor=processors,
                        **gen_kw,
                    )  # fmt: skip
            except BaseException as e:  # surfaced to the caller below
                box["error"] = e
                ids_q.put(None)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        ids: list[int] = []
        sent = ""
        while True:
            new = ids_q.get()
            if new is None:
                break
            ids.extend(new)
            raw, _, _ = self._decode(ids)
            response = self._visible(raw)
            if response is None:
                continue
            response = response.rstrip("\ufffd")  # an incomplete UTF-8 sequence: wait for its next bytes
            if response.startswith(sent) and len(response) > len(sent):
                yield response[len(sent) :]
                sent = response
        thread.join()
        if "error" in box:
            raise box["error"]
        out = box["out"]
        block = processor.results(out)[0] if processor else None
        raw, n_new, reason = self._decode(out[0, width:].tolist())
        result = self._result(raw, plan.fixed, mode, block, width, n_new, reason)
        if result.text.startswith(sent) and len(result.text) > len(sent):
            yield result.text[len(sent) :]
        yield result

    def _visible(self, raw: str) -> str | None:
        """The response part of a partial completion, or None while the block is still being written."""
        if not self.writes_block:
            return self._clean(raw, partial=True)[0]
        parsed, response = self.bundle.split_completion(raw)
        if parsed.found and not parsed.complete:
            return None
        if not parsed.found and block_format(self.config.format).open.startswith(raw.lstrip()):
            return None  # may still become a block
        return self._clean(response, partial=True)[0]
