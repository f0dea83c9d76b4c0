"""The length countdown: what lets a model stop where its `length_tokens` marker says (``markers.countdown: true``).

Fine-tuned on a few hundred replies, SmolLM2-135M writes the block with the right `length_tokens` and then ignores it
(docs/findings.md): to stop at N tokens a model must read a number and count its own tokens, which it does not
learn in that budget. The countdown does the counting for it. After a marker block that holds `length_tokens` N,
every following token of the turn gets one learned vector added to its input embedding: the vector of its
*remaining length* N - j (j = the token's place after the block), bucketed in powers of two, so the decision to
stop reads "0 left" at the input instead of comparing a number with a position. Inspired by length-difference
positional encoding (Butcher et al. 2024, arXiv 2412.11937); beyond the paper (arXiv 2506.14702), which relies on
a 7B model learning the number.

Each row has two vectors, at the two ends of the network: one added to the token's input embedding (the
model reads how much is left) and one added to its final hidden state, after the last norm (the *head* tap: it
moves the next-token logits directly, by the output embeddings' dot product with it, so the stop at "0 left" is
learnt in a few steps instead of through every layer; measured in docs/findings.md). The vectors start at zero (a
fresh countdown changes nothing) and train with the run; `remaining_ids` reads them from the token stream alone,
so training, `generate`, `serve` and `stream` need no extra input: a forward hook on the input embeddings reads
the ids, one on the final norm adds the head tap. The marker arm uses it when its block holds `length_tokens`: inferred (its
own number) and fixed (the caller's). Compact format only: its `<|length_tokens|>` token and block delimiters are
single tokens.

    countdown = attach_countdown(model, tokenizer, marker_taxonomy)  # before training, or on loading a bundle
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treasure.errors import TreasureError

COUNTDOWN_FILE = "countdown.safetensors"
HEAD_KEY = "head"  # the head tap's table in COUNTDOWN_FILE ("weight" is the input tap's)
ATTR = "treasure_countdown"  # the submodule's name on the model (its weight: treasure_countdown.table.weight)
LENGTH_CATEGORY = "length_tokens"
OFF = 0  # no countdown at this position (outside a turn with a length marker): a zero vector, never trained
# remaining tokens -> row: none left (0 or overdue: one row, so a reply that runs past its length keeps being told
# to stop; training never shows an overdue position, so a row of its own would stay zero), 1, 2, then (2, 4],
# (4, 8], ..., (256, 512], > 512
_EDGES = (2, 4, 8, 16, 32, 64, 128, 256, 512)
N_BUCKETS = 1 + 3 + len(_EDGES)  # OFF, none left, 1, 2, the powers of two, > 512
# What the table's rows are multiplied by: with Adam a row moves ~lr a step per element whatever its gradient, so
# the scale is the table's learning rate relative to the run's. Measured on SmolLM2 (LoRA, lr 1e-3, 64 steps): at
# scale 1 the rows reached norm ~0.2 against 3.2 for a token embedding, too small to move the stop (the lever probe:
# median reply tokens 95 / 89.5 / 88 at length_tokens 16 / 48 / 144); 16 lets them reach a token's size.
SCALE = 16.0
# The head tap's own multiplier, over SCALE: its rows move the logits directly. 4 was worse than 1 on the lever
# probe (16 steps: median tokens 125 / 88 / 147 at length_tokens 16 / 48 / 144, against 44 / 74 / 158.5; docs/findings.md).
HEAD_SCALE = 1.0


def bucket(remaining: int) -> int:
    """The row of a position with `remaining` tokens left (1 ... N_BUCKETS - 1; OFF is never returned)."""
    if remaining <= 2:
        return 1 + max(remaining, 0)
    for i, edge in enumerate(_EDGES[1:]):
        if remaining <= edge:
            return 4 + i
    return N_BUCKETS - 1


@dataclass(frozen=True)
class Vocab:
    """The token ids the countdown reads: the block's delimiters, the `length_tokens` token, digits, ends of turn."""

    open_id: int
    close_id: int
    length_id: int
    digits: dict[int, str] = field(repr=False)
    stop_ids: frozenset[int]

    @classmethod
    def of(cls, tokenizer: Any, marker_taxonomy: Any, stop_ids: Iterable[int]) -> Vocab:
        from treasure.markers import block_format

        fmt = block_format("compact")
        if LENGTH_CATEGORY not in marker_taxonomy:
            raise TreasureError(
                f"markers.countdown needs the {LENGTH_CATEGORY!r} category among the run's markers"
            )
        pieces = (fmt.open, fmt.close, fmt.around_value(marker_taxonomy[LENGTH_CATEGORY])[0])
        ids = [tokenizer.convert_tokens_to_ids(p) for p in pieces]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise TreasureError(f"markers.countdown: the tokenizer lacks the compact marker tokens {pieces}")
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        digits = {i: t for i, t in enumerate(vocab) if t and t.isascii() and t.isdigit()}
        return cls(*ids, digits, frozenset(stop_ids))


@dataclass
class Reader:
    """One token stream's countdown state: feed it ids in order, it returns each position's row."""

    vocab: Vocab
    in_block: bool = False
    digits: str | None = None  # the number being read after `<|length_tokens|>`
    target: int | None = None
    count: int | None = None  # tokens since the block closed; None when not counting

    def feed(self, token: int) -> int:
        v = self.vocab
        if token == v.open_id:
            self.in_block, self.digits, self.target, self.count = True, None, None, None
            return OFF
        if self.in_block:
            if self.digits is not None and token in v.digits:
                self.digits += v.digits[token]
                return OFF
            if self.digits:
                self.target = int(self.digits)
            self.digits = "" if token == v.length_id else None
            if token == v.close_id:
                self.in_block = False
                self.count = 0 if self.target is not None else None
            return OFF
        if self.count is None:
            return OFF
        if token in v.stop_ids:
            self.count = None
            return OFF
        self.count += 1
        return bucket(self.target - self.count)


def remaining_ids(ids: Sequence[int], vocab: Vocab) -> list[int]:
    """The countdown row of every position of one token stream (a whole conversation, or several packed)."""
    reader = Reader(vocab)
    return [reader.feed(int(t)) for t in ids]


def _torch_module():
    import torch

    class Countdown(torch.nn.Module):
        """The countdown's table and its state across `generate` steps (one row of state per sequence)."""

        def __init__(self, vocab: Vocab, hidden: int):
            super().__init__()
            self.vocab = vocab
            self.table = torch.nn.Embedding(N_BUCKETS, hidden, padding_idx=OFF)
            self.head = torch.nn.Embedding(N_BUCKETS, hidden, padding_idx=OFF)  # the final-hidden-state tap
            torch.nn.init.zeros_(self.table.weight)
            torch.nn.init.zeros_(self.head.weight)
            self.scale = SCALE
            self.head_scale = HEAD_SCALE
            self.readers: list[Reader] = []
            self.handle: Any = None
            self.head_handle: Any = None
            self._rows: Any = None  # the rows of the forward pass under way (set by the input hook)
            self._hooked: list[Any] = []  # in a list: an attribute would make the embeddings a submodule

        def hook_to(self, embeddings: Any) -> None:
            """Read the ids of `embeddings` (the model's input embeddings now: PEFT's trainable-token wrapper
            computes its output without calling the layer it wraps, so the hook moves to the wrapper)."""
            if self._hooked and self._hooked[0] is embeddings:
                return
            if self.handle is not None:
                self.handle.remove()
            self.handle, self._hooked[:] = embeddings.register_forward_hook(self.hook), [embeddings]

        def hook_head(self, norm: Any) -> None:
            """Add the head tap to the output of `norm`, the model's final norm (once)."""
            if self.head_handle is None:
                self.head_handle = norm.register_forward_hook(self.hook_out)

        def rows(self, input_ids: torch.Tensor) -> torch.Tensor:
            """Rows for a batch of ids: a call with more than one position per sequence starts every stream afresh
            (training, scoring, the prompt of a generation); one position per sequence continues them (a decoding
            step with the KV cache)."""
            ids = input_ids.tolist()
            if input_ids.shape[1] > 1 or len(self.readers) != len(ids):
                self.readers = [Reader(self.vocab) for _ in ids]
            out = [[r.feed(t) for t in row] for r, row in zip(self.readers, ids, strict=True)]
            return torch.tensor(out, dtype=torch.long, device=input_ids.device)

        def hook(self, module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
            rows = self.rows(args[0])
            if not bool((rows != OFF).any()):
                self._rows = None
                return output
            self._rows = rows
            return output + (self.scale * self.table(rows)).to(output.dtype)

        def hook_out(self, module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
            rows, self._rows = self._rows, None  # each forward's rows serve its own final norm once
            if rows is None or rows.shape != output.shape[:2]:
                return output
            return output + (self.scale * self.head_scale * self.head(rows)).to(output.dtype)

    return Countdown


def attach_countdown(
    model: Any, tokenizer: Any, marker_taxonomy: Any, weights: str | Path | None = None
) -> Any:
    """Give `model` a countdown (zero vectors, or those saved in `weights`): a submodule and a forward hook on its
    input embeddings. Idempotent: a model that has one (or wraps one: PEFT) keeps it, hooked to its input
    embeddings as they are now, and gets `weights` loaded into it."""
    from treasure.generate.engine import stop_ids

    embeddings = model.get_input_embeddings()
    countdown = find_countdown(model)
    if countdown is None:
        vocab = Vocab.of(tokenizer, marker_taxonomy, stop_ids(model, tokenizer))
        countdown = _torch_module()(vocab, embeddings.weight.shape[1]).to(embeddings.weight.device)
        setattr(model, ATTR, countdown)
        # a full fine-tune saves the table in COUNTDOWN_FILE, not in the model's weights
        ignore = getattr(model, "_keys_to_ignore_on_save", None)
        if isinstance(ignore, set):
            ignore.update({f"{ATTR}.table.weight", f"{ATTR}.head.weight"})
    countdown.hook_to(embeddings)
    countdown.hook_head(final_norm(model))
    if weights is not None:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            countdown.table.load_state_dict({"weight": f.get_tensor("weight")})
            if HEAD_KEY in f.keys():  # noqa: SIM118 (a file saved before the head tap has none: it stays zero)
                countdown.head.load_state_dict({"weight": f.get_tensor(HEAD_KEY)})
            meta = f.metadata() or {}
            countdown.scale = float(meta.get("scale", 1.0))
            countdown.head_scale = float(meta.get("head_scale", 1.0))
    return countdown


def final_norm(model: Any) -> Any:
    """The norm the last hidden state goes through before the LM head (`model.norm` of a decoder, under any PEFT
    wrapping); a TreasureError for a model without one."""
    found = None
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if (
            last in ("norm", "final_layernorm", "ln_f")
            and ".layers." not in f".{name}."
            and ".h." not in f".{name}."
        ):
            found = module
    if found is None:
        raise TreasureError(
            "markers.countdown: the model has no final norm (model.norm) to add the head tap to"
        )
    return found


def save_countdown(model: Any, folder: str | Path) -> Path | None:
    """Write the countdown's table to folder/COUNTDOWN_FILE (None when `model` has no countdown)."""
    countdown = find_countdown(model)
    if countdown is None:
        return None
    from safetensors.torch import save_file

    path = Path(folder) / COUNTDOWN_FILE
    tensors = {key: t.weight.detach().float().cpu().contiguous()
               for key, t in (("weight", countdown.table), (HEAD_KEY, countdown.head))}  # fmt: skip
    save_file(
        tensors,
        str(path),
        metadata={"scale": repr(countdown.scale), "head_scale": repr(countdown.head_scale)},
    )
    return path


def find_countdown(model: Any) -> Any:
    """The countdown of `model`, a PEFT wrapper of it, or a DDP / accelerate wrapper (None without one)."""
    for module in getattr(model, "modules", lambda: [])():
        if hasattr(module, ATTR):
            return getattr(module, ATTR)
    return None
