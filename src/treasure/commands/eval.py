"""`treasure eval {report,marker-accuracy,control,slices,code-repair,judge} --run NAME=DIR[:MODE] ... --out DIR`.

`report` runs every evaluation (or those named by --evals); the other subcommands run one. All write the same
report files (report.json, report.md, plots/) into --out. The work lives in treasure.evaluate.run.
"""

from __future__ import annotations

import argparse

# subcommand -> (evaluations it runs, help)
SUBCOMMANDS = {
    "report": (None, "run the evaluations (all, or --evals) and write one report comparing the runs"),
    "marker-accuracy": (("markers",), "how often inferred markers match held-out annotations"),
    "control": (("control",), "length, format and language control by instruction or marker"),
    "slices": (("slices",), "per-example metrics on held-out records, split head vs long tail"),
    "code-repair": (("code",), "HumanEvalFix pass@1"),
    "judge": (("judge",), "pairwise win rates with an OpenAI-compatible judge"),
}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


# Flags that parse comma-separated lists; --evals and --fix are None until given (run() decides the default).
_TYPES = {"evals": _csv, "fix": _csv, "slice_categories": _csv}
_DEFAULTS = {"evals": None, "fix": None}


def _options(p: argparse.ArgumentParser, evals: tuple[str, ...] | None) -> None:
    from treasure.evaluate.run import EvalOptions
    from treasure.options import add_dataclass_arguments

    p.add_argument("--run", action="append", default=[], metavar="NAME=DIR[:MODE]", required=True,
                   help="a bundle in a mode (inferred, fixed, onthefly); repeat to compare; the first is the "
                        "reference for tail lifts and judge pairs")  # fmt: skip
    p.add_argument("--data", default=None, help="held-out annotated records (for markers, slices, judge)")
    p.add_argument("--out", required=True, help="report folder")
    add_dataclass_arguments(p, EvalOptions, names=_flag_names(evals), types=_TYPES, defaults=_DEFAULTS)
    p.set_defaults(func=run, fixed_evals=evals, eval_parser=p)


def _flag_names(evals: tuple[str, ...] | None) -> list[str]:
    """EvalOptions' fields with a flag; --evals only where the subcommand does not fix the evaluations."""
    from dataclasses import fields

    from treasure.evaluate.run import EvalOptions

    names = [f.name for f in fields(EvalOptions) if f.metadata.get("cli", True)]
    return names if evals is None else [n for n in names if n != "evals"]


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate bundles: marker accuracy, control, long tail, code, judge; a report",
                       description=__doc__.split("\n", 1)[0])  # fmt: skip
    evsub = p.add_subparsers(dest="eval_command", metavar="EVALUATION", required=True)
    for name, (evals, help_text) in SUBCOMMANDS.items():
        _options(evsub.add_parser(name, help=help_text, description=help_text), evals)


def command_line(args: argparse.Namespace) -> list[str]:
    """The effective command: `treasure eval SUB` and every option that is set, in the parser's order."""
    words = ["treasure", "eval", args.eval_command]
    for action in args.eval_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value in (None, False, [], ()) or action.dest == "help":
            continue
        for v in value if isinstance(value, list) else [value]:
            words += [action.option_strings[0], ",".join(v) if isinstance(v, tuple) else str(v)]
    return words


def run(args: argparse.Namespace) -> int:
    from treasure.errors import TreasureError
    from treasure.evaluate.report import write_report
    from treasure.evaluate.run import EVALS, EvalOptions, RunSpec, evaluate
    from treasure.options import dataclass_values

    evals = args.fixed_evals or getattr(args, "evals", None) or EVALS
    pairs = []
    for pair in args.judge_pair:
        a, colon, b = pair.partition(":")
        if not colon:
            raise TreasureError(f"--judge-pair {pair}: expected A:B")
        pairs.append((a, b))
    if "judge" in evals and args.fixed_evals and not args.judge_url:
        raise TreasureError("treasure eval judge needs --judge-url")
    values = dataclass_values(EvalOptions, args, names=_flag_names(args.fixed_evals))
    values.update(evals=tuple(evals), judge_pairs=tuple(pairs))
    if not values.get("fix"):  # an empty --fix: the default categories, as for none
        values.pop("fix", None)
    options = EvalOptions(**values)
    report = evaluate([RunSpec.parse(r) for r in args.run], args.data, options, argv=command_line(args))
    paths = write_report(report, args.out)
    print(
        f"eval: wrote {paths['markdown']}, {paths['json']} and {len(report['plots'])} plots in {paths['plots']}"
    )
    return 0
