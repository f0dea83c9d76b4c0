"""The demo's table: each of the paper's comparisons beside the paper's figure, with its n and spread over seeds."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from treasure.demo.score import wilson_interval

PAPER_INFERENCE = {"domain": "75", "task": "54", "format": "47", "length_bucket": ""}


def _ms(values: list[float], pct: bool = True, digits: int = 1) -> str:
    """Mean ± standard deviation over seeds (the value alone for one seed), as a percentage unless not `pct`."""
    k = 100.0 if pct else 1.0
    vals = [v * k for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{mean(vals):.{digits}f} ± {stdev(vals):.{digits}f}"


def summary_table(results: dict[str, Any]) -> list[str]:
    seeds = list(results["seeds"].values())
    n_seeds = len(seeds)
    ev = [s["eval"] for s in seeds]
    length = [e["length"]["conditions"] for e in ev]
    n_len = length[0]["baseline"]["n"]
    rows = [
        f"| comparison ({n_seeds} seed{'s' if n_seeds > 1 else ''}; %) | baseline | markers, inferred | markers, fixed | paper |",
        "|---|---|---|---|---|",
    ]

    def col(key: str, cond: str) -> list[float]:
        return [c[cond][key] for c in length]

    def violations(cond: str) -> str:
        """Mean ± sd over seeds; for one seed, the rate with its Wilson 95% interval over the n items."""
        rates = col("violation_rate", cond)
        if n_seeds > 1:
            return _ms(rates)
        lo, hi = wilson_interval(rates[0], n_len)
        return f"{_ms(rates)} [{100 * lo:.1f}, {100 * hi:.1f}]"

    target = results["config"].get("length_target", 1.0)
    rows.append(
        f"| word-limit violations, AlpacaEval-LI wording (n={n_len} per arm; limits {', '.join(map(str, results['config']['limits']))} words; "
        f"fixed = + length_tokens for {target:g} x the limit{'; [95% interval]' if n_seeds == 1 else ''}) | "
        f"{violations('baseline')} | {violations('inferred')} | {violations('fixed')} | 36.58 -> 24.74 -> 1.25 |"
    )
    rows.append(
        f"| median words / limit (x100; the budget stops an answer soon after its limit) | {_ms(col('median_ratio', 'baseline'))} | {_ms(col('median_ratio', 'inferred'))} | "
        f"{_ms(col('median_ratio', 'fixed'))} | |"
    )
    rows.append(
        "| does the length follow the limit? Spearman of words vs limit (1 = grows with it, 0 = not at all) | "
        f"{_ms(col('follows_limit', 'baseline'), False, 2)} | {_ms(col('follows_limit', 'inferred'), False, 2)} | "
        f"{_ms(col('follows_limit', 'fixed'), False, 2)} | |"
    )
    limits = [str(x) for x in results["config"]["limits"]]
    rows.append(
        f"| median words at limit {' / '.join(limits)} | "
        + " | ".join(
            " / ".join(_ms([c[cond]["median_words_by_limit"][lim] for c in length], False) for lim in limits)
            if "median_words_by_limit" in length[0][cond]
            else "n/a"
            for cond in ("baseline", "inferred", "fixed")
        )
        + " | |"
    )
    rows.append(
        f"| empty answers (count) | {_ms(col('empty', 'baseline'), False)} | {_ms(col('empty', 'inferred'), False)} | "
        f"{_ms(col('empty', 'fixed'), False)} | |"
    )
    q = [e["quality"] for e in ev]
    rows.append(
        f"| quality lever: top-ranked human reply more likely than bottom-ranked (n={q[0]['n']} pairs) | "
        f"{_ms([x['baseline'] for x in q])} | | "
        f"bucket 1: {_ms([x['quality_bucket 1'] for x in q])}; bucket 4: {_ms([x['quality_bucket 4'] for x in q])} | "
        "not reported as a number |"
    )
    if all("format" in e for e in ev):
        f = [e["format"]["conditions"] for e in ev]
        names = list(f[0]["fixed"]["by_format"])
        rows.append(
            f"| format control: compliance by the format annotator (n={ev[0]['format']['n']}: "
            f"{', '.join(names)}; baseline and inferred: asked in words; fixed: the `format` marker) | "
            + " | ".join(_ms([x[c]["compliance_rate"] for x in f]) for c in ("baseline", "inferred", "fixed"))
            + " | not reported as a number |"
        )
    if all("tail" in e for e in ev):
        for group in ev[0]["tail"]["groups"]:
            g = [e["tail"]["groups"][group] for e in ev]
            if not g[0]["n"]:
                continue
            rows.append(
                f"| long tail: held-out reply log-prob per token, {group} (n={g[0]['n']}; tail = under "
                f"{100 * ev[0]['tail']['tail_share']:.0f}% of training) | {_ms([x['baseline'] for x in g], False, 2)} | "
                f"{_ms([x['markers'] for x in g], False, 2)} | | +9.1 win rate on rare domains |"
            )
    if all("code_repair" in e for e in ev):
        c = [e["code_repair"]["conditions"] for e in ev]
        rows.append(
            f"| CodeRepair: HumanEvalFix pass@1 in the sandbox (n={ev[0]['code_repair']['n']} problems; "
            "fixed = + task CodeFix, domain Code) | "
            + " | ".join(_ms([x[k]["pass_at_1"] for x in c]) for k in ("baseline", "inferred", "fixed"))
            + " | +14.1% relative |"
        )
    for cat in ("task", "domain", "format", "length_bucket"):
        vals = [e["inference"][cat]["accuracy"] for e in ev if cat in e["inference"]]
        if not vals:
            continue
        n = ev[0]["inference"][cat]["n"]
        rows.append(
            f"| marker inference: {cat} vs annotation (n={n}) | | {_ms(vals)} | | {PAPER_INFERENCE[cat]} |"
        )
    train = [s["train"] for s in seeds]
    for arm in ("baseline", "markers"):
        tok = [t[arm]["tokens"] or 0 for t in train]
        sec = [t[arm]["seconds"] for t in train]
        rows.append(
            f"| compute, {arm} arm: {train[0][arm]['steps']} steps x {results['config']['batch_size']}, "
            f"tokens read (with padding) / train seconds | {_ms(tok, False)} / {_ms(sec, False)} | | | |"
        )
    return rows


def _marker_recipe(cfg: dict) -> str:
    """The marker arm's settings beyond the run's: format, its new rows' rate, its block's categories."""
    out = f", format {cfg['format']}"
    if cfg.get("embedding_learning_rate") and cfg["format"] == "compact":
        out += f", marker rows lr {cfg['embedding_learning_rate']}"
    if cfg.get("categories"):
        out += f", blocks of {', '.join(cfg['categories'])}"
    return out


def _train_records(results: dict[str, Any]) -> str:
    data, cfg = results["data"], results["config"]
    if cfg.get("fit") and "annotated" in data:
        return f"{data['train']} train (of {data['annotated']} annotated: those that fit {cfg['max_length']} tokens whole)"
    return f"{data['train']} train"


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    table = summary_table(results)
    cfg = results["config"]
    md = [
        "# treasure demo: markers on a real pretrained model",
        "",
        f"Base model {cfg['model']}, LoRA r={cfg['lora_r']}, {cfg['steps']} steps x {cfg['batch_size']} per arm, "
        f"lr {cfg['learning_rate']}{_marker_recipe(cfg)}; data: OpenAssistant oasst1 English validation, "
        f"{_train_records(results)} / {results['data']['test']} held-out replies, split by message tree.",
        "",
        *table,
        "",
        "Samples of what each condition wrote are in results.json (`length.conditions.*.samples`).",
    ]
    paths = {"md": out / "report.md", "json": out / "report.json"}
    paths["md"].write_text("\n".join(md) + "\n", encoding="utf-8")
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
