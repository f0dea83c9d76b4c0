"""A grid of suite experiments: expand, run point by point (resumable, optionally in parallel), report curves.

A sweep file is an experiment config (the fields of `ExperimentConfig`) with an optional `grid:` mapping of field ->
list of values; `--grid key=v1,v2` on the command line adds or replaces one axis. Every combination is a point,
run as one experiment in `out/points/<name>/`; data, the untrained model, the shared base and the runs live in
`out/shared/` (or `--shared`), keyed by what they depend on: points that differ only in the marker recipe reuse one
baseline, and sweeps that share the folder reuse each other's identical runs.
Each point and each run inside it is skipped when done: an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treasure.arms import quiet
from treasure.errors import ConfigError
from treasure.suite.experiment import ExperimentConfig, run_experiment


@dataclass(frozen=True)
class Point:
    name: str
    values: dict[str, Any]  # the grid's values at this point
    config: ExperimentConfig


def _parse_value(text: str) -> Any:
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str) and "+" in value:
        return tuple(v.strip() for v in value.split("+"))  # a tuple field: categories=task+domain
    return value


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`["steps=100,300", "format=paper,compact"]` -> {"steps": [100, 300], "format": ["paper", "compact"]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not key.strip() or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        grid[key.strip()] = [_parse_value(v.strip()) for v in values.split(",")]
    return grid


def load_sweep(path: str | Path, grid_args: Sequence[str] = (), overrides: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], dict[str, list[Any]]]:  # fmt: skip
    """(base experiment fields, grid) from a sweep YAML plus command-line axes."""
    from treasure.train.config import yaml_mapping

    path = Path(path)
    data, _ = yaml_mapping(path)
    grid = data.pop("grid", None) or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid: expected a mapping of setting -> non-empty list of values")
    grid = {k: [tuple(x) if isinstance(x, list) else x for x in v] for k, v in grid.items()}
    grid.update(parse_grid(grid_args))
    base = {**data, **(overrides or {})}
    ExperimentConfig.from_dict(base, where=str(path))  # validates the keys now, not after an hour
    for key in grid:
        if key not in ExperimentConfig.__dataclass_fields__:
            raise ConfigError(f"{path}: grid.{key}: unknown setting")
    return base, grid


def _label(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "+".join(map(str, value))
    return str(value)


def expand(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[Point]:
    keys = list(grid)
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        values = dict(zip(keys, combo, strict=True))
        name = ",".join(f"{k}={_label(v)}" for k, v in values.items()) or "base"
        cfg = ExperimentConfig.from_dict({**base, **values}, where=f"grid point {name}")
        points.append(Point(name.replace("/", "_"), values, cfg))
    return points


def _run_point(point: Point, out: str, threads: int | None, shared: str) -> tuple[str, dict[str, Any]]:
    if threads:
        import torch

        torch.set_num_threads(threads)
    quiet()
    from treasure.suite.summary import write_report

    folder = Path(out) / "points" / point.name
    result = run_experiment(point.config, folder, shared=Path(shared))
    write_report(result, folder, title=f"sweep point {point.name}")
    return point.name, result


def run_sweep(points: list[Point], out: str | Path, *, workers: int = 1, on_done=None,
              shared: str | Path | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Run every point (skipping finished work); `workers` > 1 runs points in parallel processes. `shared` (default
    out/shared) holds the data, bases and baseline runs that points, and other sweeps given the same folder, reuse."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared = str(shared or out / "shared")
    results: dict[str, dict[str, Any]] = {}
    if workers <= 1:
        for p in points:
            name, res = _run_point(p, str(out), None, shared)
            results[name] = res
            if on_done:
                on_done(name, res)
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_point, p, str(out), threads, shared) for p in points]
        for fut in as_completed(futures):
            name, res = fut.result()
            results[name] = res
            if on_done:
                on_done(name, res)
    return {p.name: results[p.name] for p in points}


# ------------------------------------------------------------------------------------------------ report

METRICS = (
    ("overall", "accuracy, all tasks %"),
    ("head", "accuracy, head tasks %"),
    ("tail", "accuracy, tail tasks %"),
    ("repair", "accuracy, repair task %"),
)


def point_rows(points: list[Point], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from treasure.suite.summary import summarize

    rows = []
    for p in points:
        s = summarize(results[p.name])
        rows.append({"name": p.name, "values": {k: _label(v) for k, v in p.values.items()}, "summary": s})
    return rows


def to_markdown(rows: list[dict[str, Any]], command: str) -> str:
    from treasure.suite.summary import fmt

    out = ["# treasure sweep", "", f"Command: `{command}`", "",
           "Accuracy and rates in %, mean ± sd over seeds; differences are markers (inferred) minus baseline, "
           "paired by seed.", "",
           "| point | baseline all | markers all | Δ all | Δ head | Δ tail | Δ repair | violations base / inf / fixed "
           "| quality 1 vs inferred | task acc | compute markers / baseline |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        s = row["summary"]
        r = s["rows"]
        L, Q = r["length"], r["quality"]
        task = s["markers"].get("task")
        comp = s["compute"]
        tm, tb = comp["markers"]["train_tokens"]["mean"], comp["baseline"]["train_tokens"]["mean"]
        ratio = f"{tm / tb:.2f}x tokens" if tm and tb else "-"
        if "equal_tokens" in r:
            e = r["equal_tokens"]
            ratio += (f"; vs a baseline at equal tokens: Δ all {fmt(e['overall']['delta_inferred'], signed=True)}, "
                      f"Δ tail {fmt(e.get('tail', {}).get('delta_inferred'), signed=True)}")  # fmt: skip
        d = {
            k: fmt(r[k]["delta_inferred"], signed=True) if k in r else "-"
            for k in ("overall", "head", "tail", "repair")
        }
        out.append(
            f"| {row['name']} | {fmt(r['overall']['baseline'])} | {fmt(r['overall']['inferred'])} | {d['overall']} "
            f"| {d['head']} | {d['tail']} | {d['repair']} | {fmt(L['baseline'])} / {fmt(L['inferred'])} / "
            f"{fmt(L['fixed'])} | {fmt(Q['delta_q1_vs_inferred'], signed=True)} | {fmt(task) if task else '-'} "
            f"| {ratio} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One panel per metric: baseline and markers (inferred, fixed) across the points, with sd error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [", ".join(f"{v}" for v in r["values"].values()) or r["name"] for r in rows]
    xs = list(range(len(rows)))
    fig, axes = plt.subplots(1, len(METRICS) + 1, figsize=(4 * (len(METRICS) + 1), 3.8), sharex=True)
    for ax, (key, label) in zip(axes, METRICS, strict=False):
        for col, name, style in (("baseline", "baseline", "o-"), ("inferred", "markers inferred", "s-"),
                                 ("fixed", "markers fixed task", "^--")):  # fmt: skip
            ys = [(r["summary"]["rows"].get(key, {}).get(col) or {}).get("mean") for r in rows]
            es = [(r["summary"]["rows"].get(key, {}).get(col) or {}).get("sd") or 0 for r in rows]
            pts = [(x, y * 100, e * 100) for x, y, e in zip(xs, ys, es, strict=True) if y is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style,
                            capsize=3, label=name, markersize=4)  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.set_ylim(-2, 102)
    ax = axes[-1]
    for col, name, style in (("baseline", "baseline", "o-"), ("inferred", "markers inferred", "s-"),
                             ("fixed", "markers fixed length", "^--")):  # fmt: skip
        ys = [r["summary"]["rows"]["length"][col]["mean"] for r in rows]
        es = [r["summary"]["rows"]["length"][col]["sd"] or 0 for r in rows]
        pts = [(x, y * 100, e * 100) for x, y, e in zip(xs, ys, es, strict=True) if y is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style, capsize=3,
                        label=name, markersize=4)  # fmt: skip
    ax.set_title("word-limit violations %", fontsize=9)
    for ax in axes:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep_report(points: list[Point], results: dict[str, dict[str, Any]], out: str | Path,
                       command: str) -> dict[str, Path]:  # fmt: skip
    out = Path(out)
    rows = point_rows(points, results)
    paths = {"md": out / "sweep.md", "json": out / "sweep.json", "png": out / "sweep.png"}
    paths["json"].write_text(json.dumps({"command": command, "points": rows}, indent=2, default=str) + "\n",
                             encoding="utf-8")  # fmt: skip
    paths["md"].write_text(
        to_markdown(rows, command) + f"\n![sweep]({paths['png'].name})\n", encoding="utf-8"
    )
    plot(rows, paths["png"], title=command)
    return paths
