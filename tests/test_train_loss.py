"""`end_of_turn_weight` and `line_break_weight` (train/loss.py): each weighted label's term of TRL's loss is
multiplied by its weight, checked against a cross-entropy over the full logits; the options are validated and reach
`treasure train`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_suite import treasure
from tiny import tiny_config

from treasure.errors import ConfigError
from treasure.generate.engine import stop_ids
from treasure.train.config import load_config
from treasure.train.loss import WeightedStopSFTTrainer, label_weights, line_break_ids, weighted_term
from treasure.train.trainer import build_trainer, prepare


def _reference(logits, labels, weights):
    """The weighted token-mean cross-entropy written out from the full logits."""
    lg, tg = logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
    ce = F.cross_entropy(lg, tg, ignore_index=-100, reduction="none")
    w = torch.tensor([weights.get(int(t), 1.0) for t in tg])
    return float((ce * w * (tg != -100)).sum() / (tg != -100).sum())


def test_weighted_term_adds_weight_minus_one_of_each_weighted_label():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, -4.0]])
    labels = torch.tensor([[9, 5, 7, 2], [9, 2, -100, 2]])  # unshifted: positions 1.. are the targets
    assert float(weighted_term(log_probs, labels, {2: 3.0}, count=4)) == pytest.approx(
        2 * (3.0 + 0.5 + 4.0) / 4
    )
    assert float(weighted_term(log_probs, labels[:, 1:], {2: 3.0}, count=4)) == pytest.approx(15 / 4)
    both = weighted_term(log_probs, labels, {2: 2.0, 7: 5.0}, count=4)
    assert float(both) == pytest.approx((7.5 + 4 * 2.0) / 4)
    assert float(weighted_term(log_probs, labels, {}, count=4)) == 0.0
    # an end-of-turn id keeps its own weight if it is also a line break; weights of 1 are dropped
    assert label_weights([2], 4.0, [2, 3], 6.0) == {2: 4.0, 3: 6.0}
    assert label_weights([2], 1.0, [3], 6.0) == {3: 6.0}


def test_line_break_ids_are_the_tokens_that_start_with_a_newline(tmp_path):
    run = load_config(tiny_config(tmp_path))
    tok = prepare(run, load_model=False, build_datasets=False).tokenizer
    ids = line_break_ids(tok)
    assert tok.convert_tokens_to_ids("\u010a") in ids  # GPT-2's "\n"
    assert all(tok.decode([i]).startswith("\n") for i in ids)
    assert not any(tok.decode([i]).startswith("\n") for i in set(range(len(tok))) - set(ids))


def test_weighted_loss_equals_the_full_logits_reference(tmp_path):
    losses = {}
    for weight in (1.0, 6.0):
        run = load_config(tiny_config(tmp_path, n_records=8, per_device_train_batch_size=4, max_length=96,
                                      end_of_turn_weight=weight, line_break_weight=weight / 2 + 0.5))  # fmt: skip
        trainer = build_trainer(run, prepare(run))
        assert isinstance(trainer, WeightedStopSFTTrainer) == (weight != 1)
        trainer.model.eval()
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            losses[weight] = float(trainer.compute_loss(trainer.model, dict(batch)))
            logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        tok = trainer.processing_class
        stops, breaks = stop_ids(trainer.model, tok), line_break_ids(tok)
        assert torch.isin(batch["labels"], torch.tensor(stops)).any()  # every reply's end is trained
        weights = label_weights(stops, weight, breaks, weight / 2 + 0.5)
        assert losses[weight] == pytest.approx(_reference(logits, batch["labels"], weights), rel=1e-4)
    assert losses[6.0] > losses[1.0]


def test_end_of_turn_weight_is_checked_and_reaches_the_cli(tmp_path):
    with pytest.raises(ConfigError, match="end_of_turn_weight"):
        load_config(tiny_config(tmp_path, end_of_turn_weight=0))
    with pytest.raises(ConfigError, match="line_break_weight"):
        load_config(tiny_config(tmp_path, line_break_weight=-1))
    r = treasure("train", str(tiny_config(tmp_path, name="bad.yaml", end_of_turn_weight="many")))
    assert r.returncode == 2 and "end_of_turn_weight" in r.stderr and "Traceback" not in r.stderr
    r = treasure("train", str(tiny_config(tmp_path, max_steps=2)), "--end_of_turn_weight", "10")
    assert r.returncode == 0, r.stderr[-2000:]
