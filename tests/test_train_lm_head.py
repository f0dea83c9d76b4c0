"""On a CPU the fused LM head scores only the trained positions (trainer.score_trained_positions_on_cpu): the loss
and every gradient equal those of TRL's own all-position scoring, and the kernel is handed the trained rows only."""

from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils
from tiny import tiny_config

from treasure.train.config import load_config
from treasure.train.trainer import build_trainer, prepare, score_trained_positions_on_cpu


def _loss_grads_rows(trainer, batch, monkeypatch, compact: bool):
    if not compact:  # TRL's own choice on this device
        monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)
    rows = []
    real_apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        rows.append(hidden.shape[0])
        return real_apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    monkeypatch.undo()  # the spy, and TRL's own choice where it was set: treasure's hook is back
    return loss.item(), grads, rows


def test_cpu_scores_trained_positions_only_with_the_same_loss_and_gradients(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, n_records=8, per_device_train_batch_size=4, max_length=96)
    run = load_config(cfg)
    trainer = build_trainer(run, prepare(run))
    trainer.model.eval()  # no dropout: the two passes must be comparable
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"]
    trained = int((labels[:, 1:] != -100).sum())
    assert 0 < trained < labels[:, 1:].numel()  # the prompt and the padding are not trained

    loss_c, grads_c, rows_c = _loss_grads_rows(trainer, batch, monkeypatch, compact=True)
    loss_f, grads_f, rows_f = _loss_grads_rows(trainer, batch, monkeypatch, compact=False)
    assert rows_c == [trained] and rows_f == [labels[:, 1:].numel()]
    assert abs(loss_c - loss_f) < 1e-5
    assert grads_c.keys() == grads_f.keys() and grads_c
    for name, g in grads_c.items():
        torch.testing.assert_close(g, grads_f[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_hook_is_installed_once():
    assert score_trained_positions_on_cpu()
    hook = trl_utils._use_triton
    assert score_trained_positions_on_cpu() and trl_utils._use_triton is hook
    assert hook(torch.device("cpu"))
