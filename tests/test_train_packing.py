"""TRL's padding-free batching and best-fit packing keep marker examples apart: no cross-example attention, no loss
leak, and the loss mask still covers exactly each example's completion (its marker block and reply).

Each check builds the trainer `treasure train` builds (tiny-llama, compact markers in prompt and completion) with
`padding_free: true` or `packing: true`, takes the first batch its data loader returns (the examples flattened into
one row, told apart only by `position_ids`), and compares every example's per-token log-probabilities in that batch
with the same example run alone, on the CPU's attention implementations (sdpa, eager).
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

from treasure.train.config import load_config
from treasure.train.trainer import build_trainer, prepare

TOL = 1e-4


def _trainer(tmp_path, attn: str, **fields):
    tmp_path.mkdir(parents=True, exist_ok=True)
    fields = {"per_device_train_batch_size": 4, "max_length": 96, **fields}
    cfg = tiny_config(tmp_path, n_records=12, **fields)
    run = load_config(cfg)
    prep = prepare(run)
    trainer = build_trainer(run, prep)
    trainer.model.set_attn_implementation(attn)
    trainer.model.eval()  # no dropout: the two passes must be comparable
    return run, prep, trainer


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each example in a flattened row: a new example starts where the position drops to 0."""
    starts = (position_ids == 0).nonzero().flatten().tolist() + [position_ids.numel()]
    return list(zip(starts[:-1], starts[1:], strict=True))


def _expected(prep, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Every example's (input_ids, labels) as treasure made it, cut to max_length: labels = ids on the completion."""
    out = []
    for row in prep.train_dataset:
        ids, mask = row["input_ids"][:max_length], row["completion_mask"][:max_length]
        out.append((ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]))
    return out


@torch.no_grad()
def _alone(model, ids: list[int], labels: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), fused_lm_head=True)
    return out.log_probs[0]


@torch.no_grad()
def _check_batch(trainer, batch: dict, examples: list[tuple[list[int], list[int]]]) -> int:
    """Every example of a flattened batch scores as it does alone; returns how many examples were checked."""
    model = trainer.model
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding mask
    pos, ids, labels = batch["position_ids"][0], batch["input_ids"][0], batch["labels"][0]
    packed = model(**{k: v for k, v in batch.items()}, fused_lm_head=True).log_probs[0]
    by_ids = {tuple(i): lab for i, lab in examples}
    segments = _segments(pos)
    num, den = 0.0, 0
    for start, end in segments:
        seg_ids = ids[start:end].tolist()
        # the loss mask: exactly this example's completion (marker block + reply), nothing of its prompt or neighbours
        assert tuple(seg_ids) in by_ids, "a flattened example is not one of the dataset's examples"
        want = by_ids[tuple(seg_ids)]
        assert labels[start:end].tolist() == want
        assert pos[start:end].tolist() == list(range(end - start))
        alone = _alone(model, seg_ids, want)
        # log_probs[t] scores token t + 1; the example's last position scores the next example's first token,
        # whose label TRL masks, so it is 0 in the batch and absent alone
        got = packed[start : end - 1]
        assert torch.allclose(got, alone, atol=TOL, rtol=0), (got - alone).abs().max()
        if end - 1 < packed.numel():
            assert packed[end - 1].item() == 0.0
        num += float(alone.sum())
        den += sum(1 for x in want[1:] if x != -100)
    # TRL's loss on the batch is the token mean over every example's completion
    loss = trainer.compute_loss(model, dict(batch))
    assert abs(float(loss) + num / den) < TOL
    return len(segments)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_scores_each_example_as_alone(tmp_path, attn):
    run, prep, trainer = _trainer(tmp_path, attn, padding_free=True)
    assert trainer.padding_free and trainer.args.max_length is None  # treasure cut the examples itself
    examples = _expected(prep, run.args.max_length)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    n = _check_batch(trainer, batch, examples)
    assert n == run.args.per_device_train_batch_size
    # the batch holds the first examples in training order, cut to max_length (treasure's order is kept)
    flat = [t for ids, _ in examples[:n] for t in ids]
    assert batch["input_ids"][0].tolist() == flat
    # and the check is not vacuous: the same row without position_ids (one long causal sequence) scores differently
    with torch.no_grad():
        plain = trainer.model(
            input_ids=batch["input_ids"], labels=batch["labels"], fused_lm_head=True
        ).log_probs
    start, end = _segments(batch["position_ids"][0])[1]
    alone = _alone(
        trainer.model, *[x for x in examples if x[0] == batch["input_ids"][0, start:end].tolist()][0]
    )
    assert (plain[0, start : end - 1] - alone).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_scores_each_example_as_alone(tmp_path, attn):
    run, prep, trainer = _trainer(tmp_path, attn, packing=True, packing_strategy="bfd", max_length=160)
    examples = _expected(prep, run.args.max_length)
    # best-fit packing puts several examples into a row of max_length
    assert any(len(row["seq_lengths"]) > 1 for row in trainer.train_dataset)
    checked = 0
    for raw in trainer.get_train_dataloader():
        checked += _check_batch(trainer, trainer._prepare_inputs(raw), examples)
    assert checked == len(examples)  # every example is trained, once


def test_padding_free_drops_what_trl_drops(tmp_path):
    """Cut by treasure or by TRL, the same examples are trained on the same tokens."""
    _, prep, free = _trainer(tmp_path / "a", "sdpa", padding_free=True, max_length=24)
    _, _, padded = _trainer(tmp_path / "b", "sdpa", max_length=24)
    # some prompts fill max_length (those examples are dropped), the others are cut inside their completion
    assert 0 < len(free.train_dataset) < len(prep.train_dataset)
    cols = ("input_ids", "labels")
    assert [[r[c] for c in cols] for r in free.train_dataset] == [
        [r[c] for c in cols] for r in padded.train_dataset
    ]
