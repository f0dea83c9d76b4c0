"""The training loss when the end of a turn is weighted: `end_of_turn_weight` in a `treasure train` config.

    end_of_turn_weight: 20   # each end-of-turn label counts as 20 reply tokens

Why: in human replies the content foretells where a reply ends, so a model can learn when to stop without reading
its `length_tokens` marker, and the one label per example that a length marker changes is the end of turn: 1 of
~100 trained tokens. A weight above 1 makes that decision count (the demo's length lever, issue 13).

The loss is TRL's own (its fused LM head's token-mean negative log-likelihood) plus (weight - 1) times the
end-of-turn labels' share of it, over the same token count, so each end-of-turn term is multiplied by the weight
and a weight of 1 is TRL's loss exactly. It reads the per-token log-probabilities TRL's fused head already
returns: no second forward pass, no full logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl import SFTTrainer

IGNORE = -100  # the label of a position without loss (prompt, padding)


def end_of_turn_term(log_probs: Any, labels: Any, stop_ids: Sequence[int], count: Any) -> Any:
    """-sum(log p) over the positions whose next-token label is in `stop_ids`, divided by `count`.

    `log_probs` is the fused head's [batch, positions] output, aligned with the shifted `labels` (labels[:, 1:], or
    TRL's pre-shifted `shift_labels` of the same shape)."""
    import torch

    if labels.shape != log_probs.shape:
        labels = labels[:, 1:]
    labels = labels.to(log_probs.device)
    stops = torch.isin(labels, torch.tensor(list(stop_ids), device=labels.device))
    return -(log_probs * stops).sum() / torch.as_tensor(count, device=log_probs.device).clamp(min=1)


class WeightedEndSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with each end-of-turn label weighted by `end_of_turn_weight` (module docstring)."""

    def __init__(self, *args: Any, stop_ids: Sequence[int], end_of_turn_weight: float, **kwargs: Any):
        if not stop_ids:
            raise ValueError("end_of_turn_weight: the tokenizer has no end-of-turn token to weight")
        super().__init__(*args, **kwargs)
        self.stop_ids = list(stop_ids)
        self.end_of_turn_weight = float(end_of_turn_weight)

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
                "end_of_turn_weight needs TRL's fused LM head (per-token log-probabilities); this run's "
                "settings (compute_loss_func, label smoothing or sequence parallelism) bypass it"
            )
        out = fused[0]
        count = out.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        extra = end_of_turn_term(out.log_probs, labels, self.stop_ids, count)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            extra = extra * (self.accelerator.num_processes // self.get_tp_size())  # as TRL scales its loss
        extra = (self.end_of_turn_weight - 1) * extra
        return (result[0] + extra, result[1]) if return_outputs else result + extra
