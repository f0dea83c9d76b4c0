"""`treasure sweep`: a grid of suite experiments (baseline vs markers per point), resumable, with one report of curves.

    treasure sweep configs/sweeps/budget.yaml --out sweeps/budget
    treasure sweep configs/sweeps/budget.yaml --grid steps=100,300 --grid format=paper,compact --workers 2

The YAML holds `ExperimentConfig` fields (see treasure/suite/experiment.py) and an optional `grid:` section;
`--grid KEY=V1,V2` adds or replaces an axis (a tuple value is written with +: categories=task+domain).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from treasure.arms import quiet


def register(sub) -> None:
    p = sub.add_parser("sweep", help="train and evaluate a grid of demo-suite experiments; one report of curves",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("config", help="sweep YAML: experiment settings and an optional grid: section")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="an axis of the grid")
    p.add_argument(
        "--out", default=None, help="output folder (default: sweeps/<config name>; reused to resume)"
    )
    p.add_argument(
        "--shared",
        default=None,
        help="folder for data, base and baseline runs that sweeps can share (default: OUT/shared)",
    )
    p.add_argument("--seeds", type=int, default=None, help="number of seeds per point (overrides the YAML)")
    p.add_argument("--workers", type=int, default=1, help="points run in parallel processes (default 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="where to train")
    p.add_argument("--dry-run", action="store_true", help="list the points and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from treasure.suite.sweep import expand, load_sweep, run_sweep, write_sweep_report

    overrides: dict = {}
    if args.seeds is not None:
        overrides["seeds"] = tuple(range(args.seeds))
    if args.device is not None:
        overrides["device"] = args.device
    base, grid = load_sweep(args.config, args.grid, overrides)
    points = expand(base, grid)
    out = Path(args.out or Path("sweeps") / Path(args.config).stem)
    command = "treasure sweep " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["sweep"] \
        else f"treasure sweep {args.config}"  # fmt: skip
    print(f"{len(points)} points x {len(points[0].config.seeds)} seeds -> {out}")
    for p in points:
        print(f"  {p.name}")
    if args.dry_run:
        return 0
    start = time.perf_counter()

    def done(name: str, result: dict) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] done: {name}", flush=True)

    quiet()
    results = run_sweep(points, out, workers=args.workers, on_done=done, shared=args.shared)
    paths = write_sweep_report(points, results, out, command)
    print(paths["md"].read_text(encoding="utf-8").split("\n![")[0])
    print(
        f"report: {paths['md']}  {paths['json']}  {paths['png']}  ({(time.perf_counter() - start) / 60:.1f} min)"
    )
    return 0
