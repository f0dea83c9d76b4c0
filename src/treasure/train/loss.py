"""The training loss with the decision to stop weighted: `end_of_turn_weight` and `line_break_weight` in a
`treasure train` config.

    end_of_turn_weight: 8    # each end-of-turn label counts as 8 reply tokens
    line_break_weight: 8     # and so does each line break: the other side of "stop here or go on"

Why: in human replies the content foretells where a reply ends, so a model can learn when to stop without reading
its `length_tokens` marker, and the one label per example that a length marker changes is the end of turn: 1 of
~100 trained tokens. Weighting the end of turn alone teaches "stop sooner" everywhere (measured in
docs/findings.md); weighting the line breaks too (the label where a reply that goes on continues, at every end of
a line or paragraph) makes both answers to "stop here?" count, so only what tells them apart (the marker) pays.

The loss is TRL's own (its fused LM head's token-mean negative log-likelihood) plus (weight - 1) times each weighted
label's term, over the same token count, so each weighted term is multiplied by its weight and weights of 1 are
TRL's loss exactly. It reads the per-token log-probabilities TRL's fused head already returns: no second forward
pass, no full logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trl import SFTTrainer

IGNORE = -100  # the label of a position without loss (prompt, padding)


def line_break_ids(tokenizer: Any) -> list[int]:
    """Every id whose text starts with a newline (SmolLM2 writes a paragraph break as two "\\n" tokens)."""
    vocab = tokenizer.get_vocab()
    return sorted(i for t, i in vocab.items() if tokenizer.convert_tokens_to_string([t]).startswith("\n"))


def label_weights(
    stop_ids: Sequence[int], end_of_turn_weight: float, break_ids: Sequence[int], line_break_weight: float
) -> dict[int, float]:
    """id -> weight for every label weighted other than 1 (an end-of-turn id keeps its own weight)."""
    weights = {i: float(line_break_weight) for i in break_ids}
    weights.update({i: float(end_of_turn_weight) for i in stop_ids})
    return {i: w for i, w in weights.items() if w != 1}


def weighted_term(log_probs: Any, labels: Any, weights: Mapping[int, float], count: Any) -> Any:
    """sum over positions of (weight(label) - 1) * -log p(label), divided by `count`.

    `log_probs` is the fused head's [batch, positions] output, aligned with the shifted `labels` (labels[:, 1:], or
    TRL's pre-shifted `shift_labels` of the same shape)."""
    import torch

    if labels.shape != log_probs.shape:
        labels = labels[:, 1:]
    labels = labels.to(log_probs.device)
    extra = torch.zeros_like(log_probs)
    for w in set(weights.values()):
        ids = torch.tensor([i for i, v in weights.items() if v == w], device=labels.device)
        extra = extra + (w - 1) * torch.isin(labels, ids)
    return -(log_probs * extra).sum() / torch.as_tensor(count, device=log_probs.device).clamp(min=1)


class WeightedStopSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with chosen labels weighted (module docstring); `weights` from `label_weights`."""

    def __init__(self, *args: Any, weights: Mapping[int, float], **kwargs: Any):
        if not weights:
            raise ValueError("end_of_turn_weight / line_break_weight: the tokenizer has none of those tokens")
        super().__init__(*args, **kwargs)
        self.label_weights = dict(weights)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("shift_labels", inputs.get("labels"))
        fused: list[Any] = []

        def forward(*args: Any, **kwargs: Any) -> Any:  # the model, keeping the fused head's output
            out = model(*args, **kwargs)
            if kwargs.get("fused_lm_head"):
                fused.append(out)
            return out

        result = super().compute_loss(forward, inputs, return_outputs, num_items_in_batch)
        if not fused or getattr(fused[0], "log_probs", None) is None or labels is None:
            raise RuntimeError(
                "end_of_turn_weight / line_break_weight need TRL's fused LM head (per-token log-probabilities); "
                "this run's settings (compute_loss_func, label smoothing or sequence parallelism) bypass it"
            )
        out = fused[0]
        count = out.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        extra = weighted_term(out.log_probs, labels, self.label_weights, count)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            extra = extra * (self.accelerator.num_processes // self.get_tp_size())  # as TRL scales its loss
        return (result[0] + extra, result[1]) if return_outputs else result + extra
