"""`treasure demo`: the method end to end on a real pretrained model, on a laptop CPU.

Annotates the packaged OpenAssistant conversations with the normal pipeline, fine-tunes a baseline and a marker
arm of SmolLM2-135M-Instruct with LoRA per seed on identical records, order and steps, measures both on held-out
message trees and writes report.{md,json} with a summary table printed at the end. An interrupted demo continues
where it stopped when run again with the same --out. `--suite` runs the synthetic long-tail suite of
docs/findings.md instead (its own options: --base, --build-base, --quick).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from treasure.arms import quiet

# --quick: the plumbing in about a minute. The default run is ExperimentConfig's defaults: ~14 minutes on a 2-core
# laptop CPU; docs/findings.md says why those values.
QUICK = dict(n_train=600, n_test_per_task=6, steps=30, seeds=(0,))


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="fine-tune and compare a baseline and a marker arm of SmolLM2 on OpenAssistant data (CPU, ~20 min)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: demo_out, reused to resume; with --compare: demo_curves)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        default=None,
        help="tabulate finished demo runs that differ in one setting (their --out folders) instead of running one",
    )
    p.add_argument(
        "--suite",
        action="store_true",
        help="the synthetic long-tail suite on a 0.6M byte model (docs/findings.md)",
    )
    p.add_argument(
        "--model", default=None, help="the base model (default smollm2-135m-instruct; any model source)"
    )
    p.add_argument("--seeds", type=int, default=None, help="number of training seeds (default: 1; suite: 3)")
    p.add_argument(
        "--quick", action="store_true", help="a tiny run of a minute or two (checks the plumbing only)"
    )
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per arm")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one demo setting (repeatable), e.g. --set learning_rate=3e-4 --set format=paper; "
        "the fields are DemoConfig's (treasure/demo/run.py)",
    )
    p.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more `treasure train` key for both arms (repeatable), e.g. --train lr_scheduler_type=constant",
    )
    p.add_argument(
        "--base",
        choices=("bundled-robust", "bundled", "train", "none"),
        default=None,
        help="where both arms start: the packaged layout-robust base (default), the packaged layout-tied one, "
        "a base trained here (22 min), or from scratch (docs/findings.md)",
    )
    p.add_argument(
        "--build-base",
        metavar="DEST",
        default=None,
        help="train the packaged base model (about 20 minutes on 2 cores) into DEST, then stop",
    )
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train (default auto)"
    )
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    from treasure.suite.experiment import ROBUST_INSERTIONS, ExperimentConfig

    kw: dict = dict(QUICK) if args.quick else {}
    if args.seeds is not None:
        kw["seeds"] = tuple(range(args.seeds))
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.base is not None:
        kw["base"] = args.base
        if args.base == "train":
            kw["base_insertions"] = ROBUST_INSERTIONS  # as the default packaged base was made
    kw["device"] = args.device
    return ExperimentConfig(**kw)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return run_compare(args)
    args.out = args.out or "demo_out"
    if not args.suite:
        return run_real(args)
    return run_suite(args)


def run_real(args: argparse.Namespace) -> int:
    from treasure.demo.report import summary_table, write_report
    from treasure.demo.run import DemoConfig, run_demo
    from treasure.errors import TreasureError

    if args.base or args.build_base:
        raise TreasureError("--base and --build-base belong to --suite")
    quiet()
    kw: dict = {"device": args.device}
    if args.quick:
        kw.update(
            steps=2,
            n_length_prompts=2,
            limits=(20,),
            n_infer=4,
            n_quality_pairs=2,
            n_format_prompts=1,
            format_tokens=16,
            n_code_repair=2,
            code_tokens=16,
        )
    if args.seeds is not None:
        kw["seeds"] = tuple(range(args.seeds))
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.model:
        kw["model"] = args.model
    kw.update(_assignments(args.set, "--set", allowed=DemoConfig.__dataclass_fields__))
    kw["extra"] = _assignments(args.train, "--train")
    cfg = DemoConfig(**kw)
    out = Path(args.out)
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    results = run_demo(cfg, out, on_stage=say)
    paths = write_report(results, out)
    minutes = (time.perf_counter() - start) / 60
    print()
    print("\n".join(summary_table(results)))
    print(f"\nreport: {paths['md']}  {paths['json']}  ({minutes:.1f} min this run)")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from treasure.demo.curves import curve_rows, load_runs, write_curves

    folders = [Path(d) for d in args.compare]
    paths = write_curves(folders, Path(args.out or "demo_curves"))
    print("\n".join(curve_rows(load_runs(folders))[0]))
    print(f"\ncurves: {paths['md']}  {paths['png']}")
    return 0


def _assignments(items: list[str], flag: str, allowed=None) -> dict:
    """`KEY=VALUE` strings as a dict, each value read as YAML (numbers, booleans, lists); a clear error otherwise."""
    import yaml

    from treasure.errors import TreasureError

    out: dict = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise TreasureError(f"{flag} {item!r}: expected KEY=VALUE")
        if allowed is not None and (key not in allowed or key == "extra"):
            valid = ", ".join(k for k in allowed if k != "extra")
            raise TreasureError(f"{flag} {item!r}: unknown setting {key!r} (valid: {valid})")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if value is None and allowed is not None and "None" in str(allowed[key].type):
            out[key] = None  # `null` where the setting takes None (every category, the run's own rate)
            continue
        # a DemoConfig setting takes its default's kind; train keys go to YAML as they are, for TRL to check
        out[key] = (
            value if allowed is None else _setting_value(value, allowed[key].default, f"{flag} {item!r}")
        )
    return out


def _setting_value(value, default, where: str):
    """A YAML value as the DemoConfig setting whose default is `default` holds it (a list as a tuple, 3e-4 as a
    float), or a TreasureError when it is of another kind (an int for an int, a number for a float)."""
    import contextlib

    from treasure.errors import TreasureError

    if isinstance(value, list):
        value = tuple(value)
    if isinstance(default, float) and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 3e-4 (no dot) as a string
            value = float(value)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
    else:
        ok = not isinstance(default, int | str | tuple) or isinstance(value, type(default))
    if not ok:
        kind = "a list" if isinstance(default, tuple) else type(default).__name__
        raise TreasureError(f"{where}: expected {kind}, got {value!r}")
    return value


def run_suite(args: argparse.Namespace) -> int:
    from treasure.errors import TreasureError
    from treasure.suite.experiment import ExperimentConfig, run_experiment
    from treasure.suite.summary import summary_table, write_report

    if args.set or args.train:
        raise TreasureError("--set and --train belong to the real-model demo, not --suite")

    quiet()
    cfg = build_config(args)
    out = Path(args.out)
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    if args.build_base:
        from treasure.suite.experiment import ROBUST_INSERTIONS, build_bundled_base

        settings = {
            **cfg.to_dict(),
            "base": "train",
            "base_insertions": cfg.base_insertions or ROBUST_INSERTIONS,
        }
        dest = build_bundled_base(ExperimentConfig(**settings), out, args.build_base,
                                  on_stage=say)  # fmt: skip
        print(f"base model: {dest} (copy it to src/treasure/assets/demo-base to ship it)")
        return 0
    result = run_experiment(cfg, out, on_stage=say)
    paths = write_report(result, out)
    minutes = (time.perf_counter() - start) / 60
    from treasure.suite.summary import summarize

    print()
    print("\n".join(summary_table(summarize(result))))
    print(f"\nreport: {paths['md']}  {paths['json']}  {paths['png']}  ({minutes:.1f} min this run)")
    return 0
