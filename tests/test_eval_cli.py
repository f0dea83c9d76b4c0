"""`treasure eval` end to end: tiny bundles trained by the real CLI, the real eval CLI, the report's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval_judge import JudgeServer
from tiny import REPO, tiny_config, write_records

from treasure.cli import main


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """A baseline and a marker bundle of tiny-llama, a few steps each (same records, order and steps)."""
    out = {}
    for mode in ("baseline", "markers"):
        d = tmp_path_factory.mktemp(mode)
        cfg = tiny_config(d, max_steps=2, n_records=16)
        assert main(["train", str(cfg), "--markers.mode", mode]) == 0
        out[mode] = d / "run"
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny held-out records, two of them moved to a domain training never saw (the long tail)."""
    recs = [json.loads(x) for x in (REPO / "configs/data/tiny_eval.jsonl").read_text().splitlines()][:8]
    for r in recs[:2]:
        r["markers"]["domain"] = "Legal"
    return write_records(tmp_path_factory.mktemp("data") / "test.jsonl", recs)


def test_eval_report_writes_every_section(bundles, data, tmp_path, capsys):
    out = tmp_path / "report"
    with JudgeServer() as judge:
        argv = [
            "eval", "report", "--run", f"baseline={bundles['baseline']}", "--run", f"markers={bundles['markers']}",
            "--run", f"fixed={bundles['markers']}:fixed", "--data", str(data), "--out", str(out),
            "--control-n", "2", "--code-limit", "1", "--max-new-tokens", "12", "--slice-categories", "domain",
            "--judge-url", judge.base_url, "--judge-slice", "domain=tail",
        ]  # fmt: skip
        assert main(argv) == 0
    assert "eval: wrote" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["baseline", "markers", "fixed"]
    assert report["meta"]["command"].startswith("treasure eval report --run baseline=")
    assert report["meta"]["versions"]["torch"] and report["meta"]["versions"]["transformers"]
    # marker accuracy: only the marker bundle in mode inferred writes its own markers
    assert set(report["marker_accuracy"]) == {"markers"}
    domain = report["marker_accuracy"]["markers"]["domain"]
    assert domain["n"] == 8 and 0 <= domain["accuracy"] <= 1 and "Legal" in domain["labels"]
    # control: baseline is asked by instruction, the fixed run by markers
    assert report["control"]["baseline"]["asked_by"] == "instruction"
    assert report["control"]["fixed"]["asked_by"] == "markers"
    assert report["control"]["markers"]["summary"]["length"]["n"] == 2
    # slices: the two Legal records are the tail; lifts against the first run
    assert report["slices"]["counts"] == {"head": 6, "tail": 2}
    assert set(report["slices"]["tail_lift"]) == {"markers", "fixed"}
    assert "marker_match" in report["slices"]["metrics"]["markers"]
    # code repair ran in the sandbox
    assert report["code_repair"]["baseline"]["total"] == 1
    # judge: the two tail records, both orders, for each pair against the baseline
    assert [(j["a"], j["b"]) for j in report["judge"]] == [("markers", "baseline"), ("fixed", "baseline")]
    for j in report["judge"]:
        s = j["summary"]
        assert s["n"] == 2 and s["judged"] + (s["n"] - s["judged"]) == 2 and s["errors"] == 0
    assert len(judge.calls) == 2 * 2 * 2
    md = (out / "report.md").read_text()
    for section in ("## Runs", "## Marker accuracy", "## Control", "## Long-tail slices", "## Code repair",
                    "## Pairwise judge", "## How this report was made"):  # fmt: skip
        assert section in md
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"length_scatter.png", "slices_exact_match.png", "confusion_markers_domain.png"} <= plots


def test_one_evaluation_alone_and_errors(bundles, data, tmp_path, capsys):
    out = tmp_path / "ma"
    argv = ["eval", "marker-accuracy", "--run", f"m={bundles['markers']}", "--data", str(data), "--out", str(out),
            "--limit", "3", "--max-new-tokens", "8"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["evals"] == ["markers"] and "control" not in report
    assert report["marker_accuracy"]["m"]["domain"]["n"] == 3
    assert (
        main(["eval", "judge", "--run", f"m={bundles['markers']}", "--data", str(data), "--out", str(out)])
        == 2
    )
    assert "needs --judge-url" in capsys.readouterr().err
    assert main(["eval", "slices", "--run", f"m={bundles['markers']}:fixd", "--out", str(out)]) == 2
