"""Summarise an experiment over seeds: the paper's comparisons as one table, a report in Markdown, JSON and PNG.

Every number is a mean over seeds with its standard deviation (sample, n-1) and the per-seed values in the JSON.
Differences between arms are paired by seed (both arms of a seed saw the same records in the same order), then
averaged. Accuracies are macro averages over tasks (each task has the same number of test items); the head is the
tasks with at least 5% of the training records, the tail the rest.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from treasure.stats import TAIL_SHARE

# The paper's figures (arXiv 2506.14702), beside ours; they come from 7B models and LLM judges, not this suite.
PAPER = {
    "overall": "+5.7 win rate (Arena-Hard, inferred)",
    "tail": "+9.1 win rate (rare domains)",
    "tail_minus_head": "tail gains > overall",
    "repair": "+14.1% relative (CodeRepair)",
    "length": "36.58% -> 1.25% violations",
    "quality": "not reported as a number",
    "markers": "task/format/domain 47-75%",
}


def _mean_sd(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "values": []}
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "sd": sd, "values": vals}


def _macro(acc: dict[str, float], tasks: list[str]) -> float | None:
    vals = [acc[t] for t in tasks if t in acc]
    return statistics.fmean(vals) if vals else None


def _per_seed(result: dict[str, Any], fn) -> list[float | None]:
    """fn(baseline_scores, marker_scores) for each seed both arms have."""
    runs = result["runs"]
    seeds = sorted(set(runs["baseline"]) & set(runs["markers"]), key=int)
    return [fn(runs["baseline"][s], runs["markers"][s]) for s in seeds]


def _mode(scores: dict[str, Any], mode: str) -> dict[str, Any] | None:
    return scores["modes"].get(mode)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The table's rows (each a dict of cells of mean/sd/values) and the per-task and per-category details."""
    runs = result["runs"]
    any_scores = next(iter(runs["markers"].values()))
    shares = any_scores["shares"]
    tasks = list(shares)
    head = [t for t in tasks if shares[t] >= TAIL_SHARE]
    tail = [t for t in tasks if shares[t] < TAIL_SHARE]
    groups = {"overall": tasks, "head": head, "tail": tail, "repair": ["repair"] if "repair" in tasks else []}

    def acc(scores, mode, group):
        m = _mode(scores, mode)
        return _macro(m["accuracy"], groups[group]) if m else None

    def cell(fn):
        return _mean_sd(_per_seed(result, fn))

    def diff(a, b):
        return None if a is None or b is None else a - b

    rows: dict[str, dict[str, Any]] = {}
    for group in ("overall", "head", "tail", "repair"):
        if not groups[group]:
            continue
        rows[group] = {
            "baseline": cell(lambda b, m, g=group: acc(b, "plain", g)),
            "inferred": cell(lambda b, m, g=group: acc(m, "inferred", g)),
            "fixed": cell(lambda b, m, g=group: acc(m, "fixed", g)),
            "delta_inferred": cell(lambda b, m, g=group: diff(acc(m, "inferred", g), acc(b, "plain", g))),
            "delta_fixed": cell(lambda b, m, g=group: diff(acc(m, "fixed", g), acc(b, "plain", g))),
        }
    if head and tail:
        rows["tail_minus_head"] = {
            "delta_inferred": cell(lambda b, m: diff(
                diff(acc(m, "inferred", "tail"), acc(b, "plain", "tail")),
                diff(acc(m, "inferred", "head"), acc(b, "plain", "head")))),
        }  # fmt: skip
    if "baseline_tokens" in runs:
        seeds = sorted(set(runs["baseline_tokens"]) & set(runs["markers"]), key=int)
        rows["equal_tokens"] = {}
        for group in ("overall", "head", "tail"):
            if groups[group]:
                rows["equal_tokens"][group] = {
                    "baseline": _mean_sd([acc(runs["baseline_tokens"][s_], "plain", group) for s_ in seeds]),
                    "delta_inferred": _mean_sd([diff(acc(runs["markers"][s_], "inferred", group),
                                                     acc(runs["baseline_tokens"][s_], "plain", group)) for s_ in seeds]),
                }  # fmt: skip
        rows["equal_tokens"]["steps"] = [runs["baseline_tokens"][s_]["train"].get("steps") for s_ in seeds]
    if "repair" in rows:
        base = rows["repair"]["baseline"]["mean"]
        for mode in ("inferred", "fixed"):
            m = rows["repair"][mode]["mean"]
            rows["repair"][f"relative_{mode}"] = (m / base - 1) if base and m is not None else None

    def viol(scores, mode):
        m = _mode(scores, mode)
        return m["violations"]["rate"] if m and m["violations"]["n"] else None

    rows["length"] = {
        "baseline": cell(lambda b, m: viol(b, "plain")),
        "inferred": cell(lambda b, m: viol(m, "inferred")),
        "fixed": cell(lambda b, m: viol(m, "length")),
        "n": _mode(any_scores, "inferred")["violations"]["n"],
    }
    sloppy = any_scores.get("sloppy_tasks", [])
    groups["sloppy"] = sloppy
    rows["quality"] = {
        "baseline": cell(lambda b, m: acc(b, "plain", "sloppy")),
        "inferred": cell(lambda b, m: acc(m, "inferred", "sloppy")),
        "quality_1": cell(lambda b, m: acc(m, "quality_1", "sloppy")),
        "quality_4": cell(lambda b, m: acc(m, "quality_4", "sloppy")),
        "delta_q1_vs_inferred": cell(
            lambda b, m: diff(acc(m, "quality_1", "sloppy"), acc(m, "inferred", "sloppy"))
        ),
        "tasks": sloppy,
    }
    cats = sorted({c for s in runs["markers"].values() for c in s.get("marker_accuracy", {})})
    markers = {}
    for cat in cats:
        key = (
            "accuracy"
            if "accuracy" in any_scores.get("marker_accuracy", {}).get(cat, {"accuracy": 0})
            else "relative_error"
        )
        markers[cat] = {
            "metric": key,
            **_mean_sd([s["marker_accuracy"].get(cat, {}).get(key) for s in runs["markers"].values()]),
            "gold_values": any_scores["marker_accuracy"].get(cat, {}).get("gold_values"),
        }
    per_task = {}
    for t in tasks:
        per_task[t] = {"share": shares[t], "tail": shares[t] < TAIL_SHARE}
        for arm, mode in (("baseline", "plain"), ("markers", "inferred"), ("markers", "fixed"),
                          ("markers", "quality_1")):  # fmt: skip
            vals = [s["modes"][mode]["accuracy"].get(t) for s in runs[arm].values() if mode in s["modes"]]
            per_task[t][f"{arm}:{mode}"] = _mean_sd(vals)
    compute = {}
    for arm in runs:
        tr = [s["train"] for s in runs[arm].values()]
        compute[arm] = {
            "train_seconds": _mean_sd([t.get("seconds") for t in tr]),
            "train_tokens": _mean_sd([t.get("num_tokens") for t in tr]),
            "steps": tr[0].get("steps") if tr else None,
        }
    return {"rows": rows, "markers": markers, "per_task": per_task, "head": head, "tail": tail,
            "compute": compute, "seeds": sorted(runs["markers"], key=int), "paper": PAPER}  # fmt: skip


# ------------------------------------------------------------------------------------------------ rendering


def fmt(c: dict[str, Any] | None, pct: bool = True, signed: bool = False) -> str:
    if not c or c.get("mean") is None:
        return "-"
    scale, unit = (100, "") if pct else (1, "")
    sign = "+" if signed and c["mean"] > 0 else ""
    text = f"{sign}{c['mean'] * scale:.1f}{unit}"
    if c.get("sd") is not None:
        text += f" ± {c['sd'] * scale:.1f}"
    return text


def summary_table(s: dict[str, Any]) -> list[str]:
    """The paper's comparisons as one Markdown table (accuracies and rates in %, mean ± sd over seeds)."""
    r, p = s["rows"], s["paper"]
    lines = [
        "| comparison | baseline | markers, inferred | markers, fixed | difference (paired by seed) | paper |",
        "|---|---|---|---|---|---|",
    ]
    names = {"overall": "accuracy, all tasks", "head": f"accuracy, head tasks ({len(s['head'])})",
             "tail": f"accuracy, tail tasks ({len(s['tail'])}, <5% of data each)",
             "repair": "accuracy, repair task (1% of data)"}  # fmt: skip
    for key in ("overall", "head", "tail", "repair"):
        if key not in r:
            continue
        row = r[key]
        d = f"inferred {fmt(row['delta_inferred'], signed=True)}, fixed {fmt(row['delta_fixed'], signed=True)}"
        if key == "repair":
            rel = [f"{m} {row[f'relative_{m}'] * 100:+.0f}% rel." for m in ("inferred", "fixed")
                   if row.get(f"relative_{m}") is not None]  # fmt: skip
            d += ("; " + ", ".join(rel)) if rel else ""
        lines.append(f"| {names[key]} | {fmt(row['baseline'])} | {fmt(row['inferred'])} | {fmt(row['fixed'])} "
                     f"| {d} | {p.get(key, '')} |")  # fmt: skip
    if "tail_minus_head" in r:
        lines.append(f"| tail Δ minus head Δ (inferred; read with the tail's level: a task near 0% cannot lose much) "
                     f"| | | | {fmt(r['tail_minus_head']['delta_inferred'], signed=True)} "
                     f"| {p['tail_minus_head']} |")  # fmt: skip
    if "equal_tokens" in r:
        e = r["equal_tokens"]
        lines.append(f"| accuracy, all / tail, baseline at equal tokens ({', '.join(map(str, e['steps']))} steps) "
                     f"| {fmt(e['overall']['baseline'])} / {fmt(e.get('tail', {}).get('baseline'))} | | "
                     f"| inferred {fmt(e['overall']['delta_inferred'], signed=True)} / "
                     f"{fmt(e.get('tail', {}).get('delta_inferred'), signed=True)} | |")  # fmt: skip
    L = r["length"]
    lines.append(f"| word-limit violations ({L['n']} prompts; fixed = length_tokens) | {fmt(L['baseline'])} "
                 f"| {fmt(L['inferred'])} | {fmt(L['fixed'])} | | {p['length']} |")  # fmt: skip
    Q = r["quality"]
    lines.append(f"| accuracy on sloppy-heavy tasks ({', '.join(Q['tasks'])}); fixed = quality_bucket 1 / 4 "
                 f"| {fmt(Q['baseline'])} | {fmt(Q['inferred'])} | {fmt(Q['quality_1'])} / {fmt(Q['quality_4'])} "
                 f"| q1 vs inferred {fmt(Q['delta_q1_vs_inferred'], signed=True)} | {p['quality']} |")  # fmt: skip
    acc = [f"{c} {fmt(m)}" for c, m in s["markers"].items() if m["metric"] == "accuracy"]
    lines.append(
        f"| marker inference accuracy (inferred block vs annotate) | | {'; '.join(acc)} | | | {p['markers']} |"
    )
    return lines


def to_markdown(result: dict[str, Any], s: dict[str, Any], title: str = "treasure demo") -> str:
    cfg = result["config"]
    out = [f"# {title}", ""]
    start = {"bundled-robust": "the bundled layout-robust base model (src/treasure/assets/demo-base-robust)",
             "bundled": "the bundled layout-tied base model (src/treasure/assets/demo-base)",
             "train": f"a base trained here ({cfg['base_steps']} steps on {cfg['n_base']} other suite records)",
             "none": "scratch (untrained)"}[cfg.get("base", "bundled-robust")]  # fmt: skip
    arch = (
        ""
        if cfg.get("base", "").startswith("bundled")
        else f" (Llama {cfg['num_hidden_layers']} x {cfg['hidden_size']} over bytes)"
    )
    out += [f"Seeds {', '.join(map(str, s['seeds']))}; {cfg['n_train']} training records; "
            f"{cfg['n_test_per_task']} test items per task; both arms start from {start}{arch} and train "
            f"{cfg['steps']} steps (baseline {cfg.get('baseline_steps') or cfg['steps']}) of batch "
            f"{cfg['batch_size']}; markers: {cfg['format']} format, placement {cfg['placement']}, dropout "
            f"{cfg['dataset_dropout']} / {cfg['sample_dropout']}, categories {', '.join(cfg['categories'])}.", ""]  # fmt: skip
    out += ["## Summary (%, mean ± sd over seeds)", "", *summary_table(s), ""]
    out += ["## Per task (accuracy %, mean ± sd)", "",
            "| task | share of training | slice | baseline | markers inferred | markers fixed task | markers quality 1 |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t, row in s["per_task"].items():
        out.append(f"| {t} | {row['share'] * 100:.1f}% | {'tail' if row['tail'] else 'head'} "
                   f"| {fmt(row['baseline:plain'])} | {fmt(row['markers:inferred'])} | {fmt(row['markers:fixed'])} "
                   f"| {fmt(row['markers:quality_1'])} |")  # fmt: skip
    out += ["", "## Marker inference (markers arm, mode inferred, against the annotate pipeline's markers)", "",
            "| category | accuracy % (or median relative error) | gold values in test |", "|---|---|---|"]  # fmt: skip
    for c, m in s["markers"].items():
        val = fmt(m) if m["metric"] == "accuracy" else f"{fmt(m)} (rel. error)"
        out.append(f"| {c} | {val} | {m.get('gold_values') or ''} |")
    out += ["", "## Compute per arm (mean over seeds)", "", "| arm | steps | train seconds | train tokens |",
            "|---|---|---|---|"]  # fmt: skip
    for arm, c in s["compute"].items():
        tok = c["train_tokens"]["mean"]
        out.append(f"| {arm} | {c['steps'] or ''} | {fmt(c['train_seconds'], pct=False)} "
                   f"| {f'{tok:,.0f}' if tok else '-'} |")  # fmt: skip
    if result.get("timings"):
        out += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in result["timings"].items())]
    return "\n".join(out) + "\n"


def plot(s: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(s["per_task"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [3, 1, 1.4]})
    ax = axes[0]
    series = (
        ("baseline:plain", "baseline"),
        ("markers:inferred", "markers inferred"),
        ("markers:fixed", "markers fixed task"),
    )
    w = 0.27
    for i, (key, label) in enumerate(series):
        means = [(s["per_task"][t][key]["mean"] or 0) * 100 for t in tasks]
        sds = [(s["per_task"][t][key]["sd"] or 0) * 100 for t in tasks]
        ax.bar([x + (i - 1) * w for x in range(len(tasks))], means, w, yerr=sds, label=label, capsize=2)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t} {s['per_task'][t]['share'] * 100:.0f}%" for t in tasks], fontsize=7, rotation=30,
                       ha="right")  # fmt: skip
    ax.set_ylabel("accuracy %")
    ax.set_title("per task (share of training data below; tail: <5%)")
    ax.legend(fontsize=7)
    L = s["rows"]["length"]
    ax = axes[1]
    vals = [(L[k]["mean"] or 0) * 100 for k in ("baseline", "inferred", "fixed")]
    errs = [(L[k]["sd"] or 0) * 100 for k in ("baseline", "inferred", "fixed")]
    ax.bar(["baseline", "inferred", "fixed\nlength"], vals, yerr=errs, color=["C0", "C1", "C2"], capsize=3)
    ax.set_title("word-limit violations %")
    ax = axes[2]
    cats = [c for c, m in s["markers"].items() if m["metric"] == "accuracy"]
    ax.bar(cats, [(s["markers"][c]["mean"] or 0) * 100 for c in cats],
           yerr=[(s["markers"][c]["sd"] or 0) * 100 for c in cats], color="C1", capsize=3)  # fmt: skip
    ax.set_title("marker inference accuracy %")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], out: str | Path, title: str = "treasure demo") -> dict[str, Path]:
    out = Path(out)
    s = summarize(result)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(json.dumps({"result": result, "summary": s}, indent=2, default=str) + "\n",
                             encoding="utf-8")  # fmt: skip
    paths["md"].write_text(
        to_markdown(result, s, title) + f"\n![summary]({paths['png'].name})\n", encoding="utf-8"
    )
    plot(s, paths["png"])
    return paths
