"""The evaluation report: report.json for machines, report.md for people, PNG plots, and how it was made.

`write_report(report, out_dir)` takes the dict built by `treasure.evaluate.run.evaluate` (sections
`marker_accuracy`, `control`, `slices`, `code_repair`, `judge`, each optional) and writes:

    out_dir/report.json                     everything, including the command line and package versions
    out_dir/report.md                       tables side by side, one column per run
    out_dir/plots/confusion_RUN_CAT.png     marker-accuracy confusion matrices
    out_dir/plots/slices_METRIC.png         head vs tail bars per run
    out_dir/plots/length_scatter.png        requested word limit vs words written, per run
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("treasure", "torch", "transformers", "trl", "peft", "openai", "matplotlib")


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The exact command line, package versions, Python and time of a report."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("treasure", "__main__.py", "cli.py")):
        argv[0] = "treasure"
    return {
        "command": shlex.join(argv),
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _fmt(x: Any, pct: bool = True) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.1%}" if pct else f"{x:.2f}"
    return str(x)


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f} pts"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


# ------------------------------------------------------------------------------------------------ markdown


def _md_runs(report: dict) -> list[str]:
    rows = [
        [r["name"], f"`{r['path']}`", r["mode"], r.get("bundle_mode", ""), str(r.get("train_examples", "–"))]
        for r in report["runs"]
    ]
    return ["## Runs", "", *_table(["run", "bundle", "mode", "trained with", "train examples"], rows), ""]


def _md_marker_accuracy(section: dict) -> list[str]:
    lines = ["## Marker accuracy (mode inferred, held-out annotations)", ""]
    cats = sorted({c for scores in section.values() for c in scores})
    if not cats:
        return [*lines, "No run in mode inferred writes markers.", ""]
    rows = []
    for cat in cats:
        row = [cat]
        for scores in section.values():
            s = scores.get(cat)
            row.append(f"{s['accuracy']:.1%} / {s['macro_f1']:.2f} (n={s['n']})" if s else "–")
        rows.append(row)
    lines += _table(["category", *(f"{r}: accuracy / macro-F1" for r in section)], rows)
    return [*lines, "", "Confusion matrices: `plots/confusion_*.png`.", ""]


def _md_control(section: dict) -> list[str]:
    runs = list(section)
    lines = ["## Control (length, format, language)", ""]
    metrics = [
        ("length: violation rate (lower is better)", "length", "violation_rate"),
        ("length: bucket hit rate", "length", "bucket_hit_rate"),
        ("length: mean words / mean limit", "length", None),
        ("format compliance", "format", "compliance_rate"),
        ("language compliance", "language", "compliance_rate"),
    ]
    rows = []
    for label, kind, key in metrics:
        row = [label]
        for run in runs:
            s = section[run]["summary"].get(kind)
            if s is None:
                row.append("–")
            elif key is None:
                row.append(f"{s['mean_words']:.1f} / {s['mean_limit']:.1f}")
            else:
                row.append(_fmt(s.get(key)))
        rows.append(row)
    targets = sorted({t for r in runs for k in ("format", "language")
                      for t in section[r]["summary"].get(k, {}).get("by_target", {})})  # fmt: skip
    for t in targets:
        row = [f"  {t}"]
        for run in runs:
            s = section[run]["summary"]
            by = {**s.get("format", {}).get("by_target", {}), **s.get("language", {}).get("by_target", {})}
            row.append(_fmt(by.get(t, {}).get("compliance_rate")))
        rows.append(row)
    lines += _table(["metric", *runs], rows)
    how = ", ".join(f"{r}: {section[r]['asked_by']}" for r in runs)
    return [*lines, "", f"Requests asked by: {how}. Scatter: `plots/length_scatter.png`.", ""]


def _md_slices(section: dict) -> list[str]:
    lines = [
        "## Long-tail slices",
        "",
        f"Examples are `tail` when a value of {', '.join(section['categories']) or 'any category'} was held by "
        f"under {section['tail_share']:.0%} of the training records ({section['stats_from']}'s marker_stats.json): "
        f"{section['counts']['head']} head, {section['counts']['tail']} tail examples.",
        "",
    ]
    runs = list(section["metrics"])
    metrics = sorted({m for r in runs for m in section["metrics"][r]})
    rows = []
    for metric in metrics:
        for part in ("all", "head", "tail"):
            row = [metric if part == "all" else "", part]
            for run in runs:
                s = section["metrics"][run].get(metric, {}).get(part)
                row.append(f"{_fmt(s['mean'])} (n={s['n']})" if s and s["mean"] is not None else "–")
            rows.append(row)
    lines += _table(["metric", "slice", *runs], rows)
    if section.get("tail_lift"):
        lines += ["", f"Tail lift (tail metric of the run minus that of `{section['reference']}`):", ""]
        lift_rows = [
            [run, *(_signed(lifts.get(m)) for m in metrics)] for run, lifts in section["tail_lift"].items()
        ]
        lines += _table(["run", *metrics], lift_rows)
    return [*lines, "", "Bars: `plots/slices_*.png`.", ""]


def _md_code(section: dict) -> list[str]:
    lines = ["## Code repair (HumanEvalFix, Python)", ""]
    rows = []
    for run, s in section.items():
        if "skipped" in s:
            rows.append([run, "–", s["skipped"]])
        else:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(s["status_counts"].items()))
            rows.append([run, f"{s['pass@1']:.1%} ({s['passed']}/{s['total']})", counts])
    return [*lines, *_table(["run", "pass@1", "outcomes"], rows), ""]


def _md_judge(section: list[dict]) -> list[str]:
    lines = ["## Pairwise judge (both orders, 95% bootstrap CI)", ""]
    rows = []
    for j in section:
        s = j.get("summary")
        if s is None:
            rows.append(
                [f"{j['a']} vs {j['b']}", j.get("slice") or "all", "–", "–", "–", j.get("skipped", "")]
            )
            continue
        ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]" if s["win_rate"] is not None else "–"
        rows.append([
            f"{j['a']} vs {j['b']}", j.get("slice") or "all", _fmt(s["win_rate"]), ci,
            f"{s['wins']}/{s['ties']}/{s['losses']} of {s['n']}",
            f"{s['unparsed']} unparsed, {s['errors']} errors",
        ])  # fmt: skip
    lines += _table(["pair (A vs B)", "slice", "A win rate", "95% CI", "W/T/L", "judge problems"], rows)
    return [*lines, ""]


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# treasure evaluation report",
        "",
        f"Data: `{meta.get('data')}`, created {meta['created']}.",
        "",
    ]
    lines += _md_runs(report)
    if "marker_accuracy" in report:
        lines += _md_marker_accuracy(report["marker_accuracy"])
    if "control" in report:
        lines += _md_control(report["control"])
    if "slices" in report:
        lines += _md_slices(report["slices"])
    if "code_repair" in report:
        lines += _md_code(report["code_repair"])
    if "judge" in report:
        lines += _md_judge(report["judge"])
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    lines += [
        "## How this report was made",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Python {meta['python']} on {meta['platform']}; {versions}.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_slices(section: dict, out_dir: Path) -> list[Path]:
    """One grouped bar chart per metric: all / head / tail means, one bar per run."""
    plt = _plt()
    runs = list(section["metrics"])
    metrics = sorted({m for r in runs for m in section["metrics"][r]})
    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.8 / max(1, len(runs))
        for k, run in enumerate(runs):
            parts = section["metrics"][run].get(metric, {})
            ys = [(parts.get(p) or {}).get("mean") or 0.0 for p in ("all", "head", "tail")]
            ax.bar([i + k * width for i in range(3)], ys, width, label=run)
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(3)], ["all", "head", "tail"])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric} by long-tail slice")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"slices_{_safe(metric)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_length_scatter(section: dict, out_dir: Path) -> Path | None:
    """Requested word limit against words written, one colour per run, the limit as a diagonal."""
    points = {
        run: [(e["limit"], e["words"]) for e in s["examples"] if "limit" in e] for run, s in section.items()
    }
    if not any(points.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = 1
    for run, xy in points.items():
        if xy:
            ax.scatter([x for x, _ in xy], [y for _, y in xy], s=14, alpha=0.7, label=run)
            top = max(top, *(max(x, y) for x, y in xy))
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="limit")
    ax.set_xlabel("word limit asked for")
    ax.set_ylabel("words in the response")
    ax.set_title("Length control")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "length_scatter.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and the plots; returns {"json", "markdown", "plots"...} paths."""
    from treasure.evaluate.marker_accuracy import plot_confusion

    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for run, scores in report.get("marker_accuracy", {}).items():
        for cat, s in scores.items():
            written.append(
                plot_confusion(s, f"{run}: {cat}", plots / f"confusion_{_safe(run)}_{_safe(cat)}.png")
            )
    if "slices" in report:
        written += plot_slices(report["slices"], plots)
    if "control" in report:
        p = plot_length_scatter(report["control"], plots)
        if p:
            written.append(p)
    report["plots"] = [str(p.relative_to(out)) for p in written]
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    md = to_markdown(report)
    if written:
        md += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(out)})" for p in written) + "\n"
    (out / "report.md").write_text(md, encoding="utf-8")
    return {"json": out / "report.json", "markdown": out / "report.md", "plots": plots}
