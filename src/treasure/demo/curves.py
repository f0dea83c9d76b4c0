"""What makes the levers move: several demo runs that differ in one setting, side by side.

    treasure demo --compare runs/steps8 runs/steps32 --out docs/findings/demo_steps

Each folder is one `treasure demo --out` (its results.json); the settings that differ between the runs are found
from their configs and name the rows. One row per run: the fixed length marker's violations and whether the length
follows the limit (next to the baseline's), marker inference, format compliance, the quality lever and the compute;
a PNG draws the length lever against the run order. Means over each run's seeds, with the spread where there are
several.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

from treasure.errors import TreasureError


def load_runs(folders: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise TreasureError(f"{folder}: no results.json (run `treasure demo --out {folder}` first)")
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    return runs


def differing(runs: list[dict[str, Any]]) -> list[str]:
    """The config fields (and `extra` keys) whose values are not the same in every run."""

    def flat(cfg: dict[str, Any]) -> dict[str, str]:
        out = {k: json.dumps(v) for k, v in cfg.items() if k != "extra"}
        out.update({f"train.{k}": json.dumps(v) for k, v in (cfg.get("extra") or {}).items()})
        return out

    flats = [flat(r["config"]) for r in runs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]


def _seed_mean(run: dict[str, Any], get) -> float | None:
    vals = []
    for s in run["seeds"].values():
        try:
            v = get(s)
        except (KeyError, TypeError):
            continue
        if v is not None:
            vals.append(v)
    return mean(vals) if vals else None


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def curve_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    keys = differing(runs) or ["model"]
    points = []
    for run in runs:
        cfg = {**run["config"], **{f"train.{k}": v for k, v in (run["config"].get("extra") or {}).items()}}
        length = lambda cond, key: lambda s: s["eval"]["length"]["conditions"][cond][key]  # noqa: E731
        points.append(
            {
                "setting": ", ".join(f"{k}={cfg.get(k)}" for k in keys),
                "seeds": len(run["seeds"]),
                "violations": {
                    c: _seed_mean(run, length(c, "violation_rate")) for c in ("baseline", "inferred", "fixed")
                },
                "follows": {
                    c: _seed_mean(run, length(c, "follows_limit")) for c in ("baseline", "inferred", "fixed")
                },
                "ratio_fixed": _seed_mean(run, length("fixed", "median_ratio")),
                "inference": {
                    c: _seed_mean(run, lambda s, c=c: s["eval"]["inference"][c]["accuracy"])
                    for c in ("task", "domain", "format", "length_bucket")
                },
                "format_fixed": _seed_mean(
                    run, lambda s: s["eval"]["format"]["conditions"]["fixed"]["compliance_rate"]
                ),
                "format_words": _seed_mean(
                    run, lambda s: s["eval"]["format"]["conditions"]["inferred"]["compliance_rate"]
                ),
                "quality": [
                    _seed_mean(run, lambda s, k=k: s["eval"]["quality"][k])
                    for k in ("quality_bucket 1", "quality_bucket 4")
                ],
                "seconds": _seed_mean(run, lambda s: s["train"]["markers"]["seconds"]),
            }
        )
    rows = [
        "| setting | seeds | violations: baseline / inferred / fixed (%) | length follows limit (Spearman): "
        "baseline / fixed | fixed: median words/limit | inference task / domain / format / length_bucket (%) | "
        "format compliance: words / fixed marker (%) | quality pref. bucket 1 / 4 (%) | marker arm train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        rows.append(
            f"| {p['setting']} | {p['seeds']} | "
            + " / ".join(_fmt(p["violations"][c]) for c in ("baseline", "inferred", "fixed"))
            + f" | {_fmt(p['follows']['baseline'], False)} / {_fmt(p['follows']['fixed'], False)} | "
            f"{_fmt(p['ratio_fixed'], False)} | "
            + " / ".join(_fmt(v) for v in p["inference"].values())
            + f" | {_fmt(p['format_words'])} / {_fmt(p['format_fixed'])} | "
            + " / ".join(_fmt(v) for v in p["quality"])
            + f" | {_fmt(p['seconds'], False)} |"
        )
    return rows, points


def write_curves(folders: list[Path], out: Path) -> dict[str, Path]:
    """curves.md (the table, with the folders it was read from) and curves.png in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(folders)
    rows, points = curve_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "curves.md", "png": out / "curves.png"}
    md = [
        "# The levers against one setting",
        "",
        "Read from: " + ", ".join(f"`{f}`" for f in folders),
        "",
        *rows,
        "",
        f"![curves]({paths['png'].name})",
    ]
    paths["md"].write_text("\n".join(md) + "\n", encoding="utf-8")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = list(range(len(points)))
    labels = [p["setting"] for p in points]
    for cond in ("baseline", "inferred", "fixed"):
        a.plot(x, [100 * (p["violations"][cond] or 0) for p in points], marker="o", label=cond)
        b.plot(x, [p["follows"][cond] or 0 for p in points], marker="o", label=cond)
    a.set_ylabel("word-limit violations (%)")
    b.set_ylabel("Spearman(words, limit)")
    for ax in (a, b):
        ax.set_xticks(x, labels, rotation=15, fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths
