"""`end_of_turn_weight` (train/loss.py): each end-of-turn label's term of TRL's loss is multiplied by the weight,
checked against a cross-entropy over the full logits; the option is validated and reaches `treasure train`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_suite import treasure
from tiny import tiny_config

from treasure.errors import ConfigError
from treasure.generate.engine import stop_ids
from treasure.train.config import load_config
from treasure.train.loss import WeightedEndSFTTrainer, end_of_turn_term
from treasure.train.trainer import build_trainer, prepare


def _reference(logits, labels, stops, weight):
    """The weighted token-mean cross-entropy written out from the full logits."""
    lg, tg = logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
    ce = F.cross_entropy(lg, tg, ignore_index=-100, reduction="none")
    w = torch.where(torch.isin(tg, torch.tensor(stops)), weight, 1.0)
    return float((ce * w * (tg != -100)).sum() / (tg != -100).sum())


def test_end_of_turn_term_sums_the_stop_positions_only():
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, -4.0]])
    labels = torch.tensor([[9, 5, 7, 2], [9, 2, -100, 2]])  # unshifted: positions 1.. are the targets
    assert float(end_of_turn_term(log_probs, labels, [2], count=4)) == pytest.approx((3.0 + 0.5 + 4.0) / 4)
    assert float(end_of_turn_term(log_probs, labels[:, 1:], [2], count=4)) == pytest.approx(7.5 / 4)
    assert float(end_of_turn_term(log_probs, labels, [], count=4)) == 0.0


def test_weighted_loss_equals_the_full_logits_reference(tmp_path):
    losses = {}
    for weight in (1.0, 6.0):
        run = load_config(tiny_config(tmp_path, n_records=8, per_device_train_batch_size=4, max_length=96,
                                      end_of_turn_weight=weight))  # fmt: skip
        trainer = build_trainer(run, prepare(run))
        assert isinstance(trainer, WeightedEndSFTTrainer) == (weight != 1)
        trainer.model.eval()
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            losses[weight] = float(trainer.compute_loss(trainer.model, dict(batch)))
            logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        stops = stop_ids(trainer.model, trainer.processing_class)
        assert torch.isin(batch["labels"], torch.tensor(stops)).any()  # every reply's end is trained
        assert losses[weight] == pytest.approx(_reference(logits, batch["labels"], stops, weight), rel=1e-4)
    assert losses[6.0] > losses[1.0]


def test_end_of_turn_weight_is_checked_and_reaches_the_cli(tmp_path):
    with pytest.raises(ConfigError, match="end_of_turn_weight"):
        load_config(tiny_config(tmp_path, end_of_turn_weight=0))
    r = treasure("train", str(tiny_config(tmp_path, name="bad.yaml", end_of_turn_weight="many")))
    assert r.returncode == 2 and "end_of_turn_weight" in r.stderr and "Traceback" not in r.stderr
    r = treasure("train", str(tiny_config(tmp_path, max_steps=2)), "--end_of_turn_weight", "10")
    assert r.returncode == 0, r.stderr[-2000:]
