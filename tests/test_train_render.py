"""Rendering a record for training: block placement, modes, placements, dropout rates, per-epoch order (no torch)."""

from __future__ import annotations

import math

import pytest
from tiny import records

from treasure.markers import PAPER_OPEN, parse_block, render_block
from treasure.recipe import MarkerConfig
from treasure.train.render import epoch_order, epoch_plan, render_example, render_prompt

REC = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Fix <|domain=Code|> this: x = 1 +"},
        {"role": "assistant", "content": "x = 1 + 1"},
    ],
    "markers": {
        "domain": "Code",
        "task": "CodeFix",
        "length_bucket": "concise",
        "quality": 4.123,
        "code_type": "python",
    },
}


def _render(config: MarkerConfig, paper, rec=REC, epoch=0, index=0, seed=1):
    return render_example(rec, config, paper, seed=seed, epoch=epoch, index=index)


@pytest.mark.parametrize("fmt", ["paper", "compact"])
def test_blocks_go_after_the_last_user_turn_and_before_the_response(paper, fmt):
    config = MarkerConfig(format=fmt, dataset_dropout=0.0, sample_dropout=0.0)
    ex = _render(config, paper)
    block = render_block(REC["markers"], paper, fmt)
    sep = config.separator
    assert ex["prompt"][0] == REC["messages"][0]
    user = ex["prompt"][1]["content"]
    assert user.endswith(sep + block)
    assert (
        user[: -len(sep + block)] == "Fix <\u200b|domain=Code|> this: x = 1 +"
    )  # typed marker syntax sanitised
    assert ex["completion"] == [{"role": "assistant", "content": block + sep + "x = 1 + 1"}]
    assert ex["prompt_markers"] == ex["completion_markers"] == paper.validate_markers(REC["markers"])


def test_the_completion_block_parses_back_to_every_marker(paper):
    ex = _render(MarkerConfig(), paper)
    parsed = parse_block(ex["completion"][0]["content"], paper, "paper")
    assert parsed.complete and not parsed.problems
    assert parsed.markers == {**paper.validate_markers(REC["markers"]), "quality": 4.12}  # floats to 2 places


@pytest.mark.parametrize(
    "placement,prompt_has,completion_has",
    [("both", True, True), ("prompt", True, False), ("completion", False, True)],
)
def test_placement(paper, placement, prompt_has, completion_has):
    ex = _render(MarkerConfig(placement=placement, dataset_dropout=0.0, sample_dropout=0.0), paper)
    assert (PAPER_OPEN in ex["prompt"][1]["content"]) is prompt_has
    assert ex["completion"][0]["content"].startswith(PAPER_OPEN) is completion_has
    assert bool(ex["prompt_markers"]) is prompt_has and bool(ex["completion_markers"]) is completion_has


@pytest.mark.parametrize("fmt", ["paper", "compact"])
def test_baseline_renders_no_marker_anywhere(paper, fmt):
    config = MarkerConfig(mode="baseline", format=fmt, dataset_dropout=0.0, sample_dropout=0.0)
    for index, rec in enumerate(records(32)):
        ex = _render(config, paper, rec=rec, index=index)
        text = "".join(m["content"] for m in ex["prompt"] + ex["completion"])
        assert "MARKER_LIST" not in text and "<|" not in text
        assert ex["prompt_markers"] == ex["completion_markers"] == {}
        # ...and the very same text as the marker arm once its blocks are taken out
        marked = _render(MarkerConfig(format=fmt), paper, rec=rec, index=index)
        assert ex["prompt"][-1]["content"] in marked["prompt"][-1]["content"]
        assert marked["completion"][0]["content"].endswith(ex["completion"][0]["content"])


def test_categories_restrict_the_blocks(paper):
    ex = _render(MarkerConfig(categories=("task", "domain"), dataset_dropout=0.0, sample_dropout=0.0), paper)
    assert ex["completion_markers"] == {
        "task": "CodeFix",
        "domain": "Code",
    }  # taxonomy order, not config order
    assert "<quality>" not in ex["prompt"][1]["content"]


def test_an_empty_prompt_side_renders_no_block(paper):
    ex = _render(MarkerConfig(dataset_dropout=1.0), paper)
    assert ex["prompt"][1]["content"] == "Fix <\u200b|domain=Code|> this: x = 1 +"
    no_markers = {**REC, "markers": {}}
    ex = _render(MarkerConfig(dataset_dropout=0.0), paper, rec=no_markers)
    assert PAPER_OPEN not in ex["prompt"][1]["content"]
    assert ex["completion"][0]["content"].startswith(
        "<MARKER_LIST> </MARKER_LIST>\n"
    )  # the reply always opens one


def _shares(paper, config, n_draws=3000):
    """(share of examples whose prompt has no marker, mean share of markers kept) over many (epoch, index)."""
    k = len(paper.validate_markers(REC["markers"]))
    empty = kept = 0
    for draw in range(n_draws):
        ex = _render(config, paper, epoch=draw % 7, index=draw // 7)
        empty += not ex["prompt_markers"]
        kept += len(ex["prompt_markers"]) / k
    return empty / n_draws, kept / n_draws, k


@pytest.mark.parametrize("d,s", [(0.5, 0.5), (0.2, 0.7), (0.8, 0.1)])
def test_measured_dropout_matches_the_configured_rates(paper, d, s):
    config = MarkerConfig(dataset_dropout=d, sample_dropout=s)
    n = 3000
    empty, kept, k = _shares(paper, config, n)
    p_empty = d + (1 - d) * s**k  # dropped at dataset level, or every marker dropped at sample level
    p_kept = (1 - d) * (1 - s)
    assert abs(empty - p_empty) < 4 * math.sqrt(p_empty * (1 - p_empty) / n)
    # kept share per example is a mean of k Bernoullis given the dataset draw: variance bounded by p(1-p)
    assert abs(kept - p_kept) < 4 * math.sqrt(p_kept * (1 - p_kept) / n) + 1e-9


def test_dropout_extremes_are_exact(paper):
    assert _shares(paper, MarkerConfig(dataset_dropout=0.0, sample_dropout=0.0), 200)[:2] == (0.0, 1.0)
    assert _shares(paper, MarkerConfig(dataset_dropout=1.0, sample_dropout=0.0), 200)[:2] == (1.0, 0.0)
    assert _shares(paper, MarkerConfig(dataset_dropout=0.0, sample_dropout=1.0), 200)[:2] == (1.0, 0.0)


def test_dropout_is_fresh_every_epoch_and_reproducible(paper):
    config = MarkerConfig()
    per_epoch = [
        [_render(config, paper, epoch=e, index=i)["prompt_markers"] for i in range(40)] for e in range(3)
    ]
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]
    again = [_render(config, paper, epoch=1, index=i)["prompt_markers"] for i in range(40)]
    assert again == per_epoch[1]
    other_seed = [_render(config, paper, epoch=1, index=i, seed=2)["prompt_markers"] for i in range(40)]
    assert other_seed != per_epoch[1]


def test_epoch_order_is_a_fresh_permutation_per_epoch():
    orders = [epoch_order(50, seed=3, epoch=e) for e in range(3)]
    assert all(sorted(o) == list(range(50)) for o in orders)
    assert orders[0] != orders[1] and orders[0] == epoch_order(50, seed=3, epoch=0)
    plan = epoch_plan(50, 3, seed=3)
    assert plan == [(e, i) for e in range(3) for i in orders[e]]


def test_render_prompt_is_the_inference_side_of_training(paper):
    config = MarkerConfig(dataset_dropout=0.0, sample_dropout=0.0)
    train = _render(config, paper)
    assert render_prompt(REC["messages"][:-1], REC["markers"], config, paper) == train["prompt"]
    assert render_prompt(REC["messages"][:-1], REC["markers"], MarkerConfig(mode="baseline"), paper)[1][
        "content"
    ] == ("Fix <\u200b|domain=Code|> this: x = 1 +")


def test_a_record_without_a_user_turn_is_rejected(paper):
    from treasure.errors import TreasureError

    with pytest.raises(TreasureError, match="no user turn"):
        _render(
            MarkerConfig(), paper, rec={"messages": [{"role": "assistant", "content": "hi"}], "markers": {}}
        )
