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


def _options(p: argparse.ArgumentParser, evals: tuple[str, ...] | None) -> None:
    p.add_argument("--run", action="append", default=[], metavar="NAME=DIR[:MODE]", required=True,
                   help="a bundle in a mode (inferred, fixed, onthefly); repeat to compare; the first is the "
                        "reference for tail lifts and judge pairs")  # fmt: skip
    p.add_argument("--data", default=None, help="held-out annotated records (for markers, slices, judge)")
    p.add_argument("--out", required=True, help="report folder")
    if evals is None:
        p.add_argument("--evals", type=_csv, default=None,
                       help="comma-separated subset of markers,control,slices,code,judge (default: all)")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help="use the first N held-out records")
    p.add_argument("--control-n", type=int, default=10, help="control prompts per kind (default: 10)")
    p.add_argument(
        "--code-limit", type=int, default=10, help="HumanEvalFix problems (default: 10; 164 = all)"
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--fix", type=_csv, default=None,
                   help="categories given from the annotation in mode fixed (default: domain,task,language,"
                        "format,length_bucket)")  # fmt: skip
    p.add_argument(
        "--slice-categories",
        type=_csv,
        default=None,
        help="categories whose rare values make an example tail (default: all categorical)",
    )
    p.add_argument(
        "--judge-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"
    )
    p.add_argument("--judge-model", default="judge", help="model name sent to the judge endpoint")
    p.add_argument("--judge-pair", action="append", default=[], metavar="A:B",
                   help="judge run A against run B (default: every run against the first)")  # fmt: skip
    p.add_argument(
        "--judge-slice",
        default=None,
        help="judge only examples in a slice: tail, head, domain=tail, domain=Legal|Medical, ...",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run, fixed_evals=evals, eval_parser=p)


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
    from treasure.evaluate.run import DEFAULT_FIX, EVALS, EvalOptions, RunSpec, evaluate

    evals = args.fixed_evals or getattr(args, "evals", None) or EVALS
    pairs = []
    for pair in args.judge_pair:
        a, colon, b = pair.partition(":")
        if not colon:
            raise TreasureError(f"--judge-pair {pair}: expected A:B")
        pairs.append((a, b))
    if "judge" in evals and args.fixed_evals and not args.judge_url:
        raise TreasureError("treasure eval judge needs --judge-url")
    options = EvalOptions(
        evals=tuple(evals), limit=args.limit, control_n=args.control_n, code_limit=args.code_limit,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, fix=args.fix or DEFAULT_FIX,
        slice_categories=args.slice_categories, judge_url=args.judge_url, judge_model=args.judge_model,
        judge_pairs=tuple(pairs), judge_slice=args.judge_slice, seed=args.seed,
    )  # fmt: skip
    report = evaluate([RunSpec.parse(r) for r in args.run], args.data, options, argv=command_line(args))
    paths = write_report(report, args.out)
    print(
        f"eval: wrote {paths['markdown']}, {paths['json']} and {len(report['plots'])} plots in {paths['plots']}"
    )
    return 0
