"""Marker statistics of a dataset: value counts and shares per category, the long tail, a chart.

The long tail is the paper's: marker values held by under 5% of the records. Numeric categories get a summary
(min, median, mean, max) instead of value counts. The same counts are saved in a trained bundle
(marker_stats.json) for long-tail slicing at evaluation time.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from treasure.taxonomy import Taxonomy

# The paper's cut, and the one every long-tail split of this project uses (evaluation slices, the suite's tasks).
TAIL_SHARE = 0.05


def marker_stats(records: Iterable[dict], taxonomy: Taxonomy) -> dict[str, Any]:
    """{"n": N, "categories": {cat: {"kind", "count", "values": {v: {"count", "share", "tail"}}} | numeric summary}}"""
    counts: dict[str, Counter] = {c.name: Counter() for c in taxonomy}
    numbers: dict[str, list[float]] = {c.name: [] for c in taxonomy if c.numeric}
    n = 0
    for rec in records:
        n += 1
        for cat, value in (rec.get("markers") or {}).items():
            if cat not in taxonomy:
                continue
            if taxonomy[cat].numeric:
                numbers[cat].append(float(value))
            else:
                counts[cat][str(value)] += 1
    out: dict[str, Any] = {"n": n, "tail_share": TAIL_SHARE, "categories": {}}
    for cat in taxonomy:
        if cat.numeric:
            xs = numbers[cat.name]
            out["categories"][cat.name] = {
                "kind": cat.kind,
                "count": len(xs),
                **(
                    {
                        "min": min(xs),
                        "median": statistics.median(xs),
                        "mean": statistics.fmean(xs),
                        "max": max(xs),
                    }
                    if xs
                    else {}
                ),
            }
            continue
        c = counts[cat.name]
        values = {
            v: {"count": k, "share": k / n if n else 0.0, "tail": (k / n if n else 0.0) < TAIL_SHARE}
            for v, k in c.most_common()
        }
        out["categories"][cat.name] = {"kind": cat.kind, "count": sum(c.values()), "values": values}
    return out


def tail_values(stats: dict[str, Any], category: str) -> set[str]:
    """The values of `category` under the tail share (values never seen are tail too, by definition)."""
    cat = stats["categories"].get(category, {})
    return {v for v, s in cat.get("values", {}).items() if s["tail"]}


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text table for the terminal."""
    lines = [
        f"{stats['n']} records; long tail = values under {stats['tail_share']:.0%} of records (marked *)"
    ]
    for name, cat in stats["categories"].items():
        if cat["kind"] != "categorical":
            if cat["count"]:
                lines.append(
                    f"\n{name} ({cat['count']} records): min {cat['min']:g}, median {cat['median']:g}, "
                    f"mean {cat['mean']:.1f}, max {cat['max']:g}"
                )
            else:
                lines.append(f"\n{name}: no markers")
            continue
        lines.append(f"\n{name} ({cat['count']} of {stats['n']} records)")
        if not cat["values"]:
            lines.append("  (no markers)")
        for value, s in cat["values"].items():
            bar = "#" * max(1, round(s["share"] * 40)) if s["count"] else ""
            lines.append(
                f"  {'*' if s['tail'] else ' '} {value:<22} {s['count']:>7} {s['share']:>7.1%}  {bar}"
            )
    return "\n".join(lines)


def plot_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """One horizontal bar chart per categorical category; tail values in a second colour, the 5% cut dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [(k, v) for k, v in stats["categories"].items() if v["kind"] == "categorical" and v["values"]]
    if not cats:
        cats = [("(no categorical markers)", {"values": {}})]
    cols = 3
    rows = (len(cats) + cols - 1) // cols
    heights = [max(len(v["values"]) for _, v in cats[r * cols : (r + 1) * cols]) for r in range(rows)]
    fig, axes = plt.subplots(
        rows, cols, figsize=(15, sum(0.28 * h + 1.2 for h in heights)), squeeze=False,
        gridspec_kw={"height_ratios": [h + 2 for h in heights]},
    )  # fmt: skip
    for ax in axes.flat[len(cats) :]:
        ax.axis("off")
    for ax, (name, cat) in zip(axes.flat, cats, strict=False):
        items = list(cat["values"].items())[::-1]
        labels = [v for v, _ in items]
        shares = [s["share"] * 100 for _, s in items]
        colors = ["#d95f02" if s["tail"] else "#1b9e77" for _, s in items]
        ax.barh(labels, shares, color=colors)
        ax.axvline(stats["tail_share"] * 100, color="grey", linestyle="--", linewidth=1)
        ax.set_title(name, fontsize=11, loc="left")
        ax.set_xlabel("% of records")
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(
        f"Marker values in {stats['n']} records (orange: long tail, under {stats['tail_share']:.0%})",
        fontsize=13,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
