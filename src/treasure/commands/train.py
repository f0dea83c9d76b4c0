"""`treasure train CONFIG.yaml [--resume] [--key value ...]`, `treasure inspect CONFIG.yaml --n 3`,
`treasure export RUN_DIR OUT_DIR`. The work lives in treasure.train; these only parse and print.

Options of the command itself may come before or after CONFIG; everything else after CONFIG overrides the YAML
(`--learning_rate 1e-4`, `--markers.format compact`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")


def _inspect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=3, help="how many examples to show (default: 3)")
    p.add_argument("--epoch", type=int, default=0, help="which epoch's order and dropout (default: 0)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="color the roles")


def _split(args: argparse.Namespace, add_options: Callable[[argparse.ArgumentParser], None]) -> list[str]:
    """Parse the command's own options out of the words after CONFIG (defaults: what came before CONFIG); the
    remaining words are config overrides."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_options(parser)
    parser.set_defaults(**{a.dest: getattr(args, a.dest) for a in parser._actions})
    opts, overrides = parser.parse_known_args(args.rest)
    vars(args).update(vars(opts))
    return overrides


def register(sub) -> None:
    epilog = (
        "Any field of TRL's SFTConfig or ModelConfig can follow CONFIG as --key value and overrides the YAML; "
        "--markers.KEY VALUE overrides one key of its markers: section. See docs/training.md."
    )
    p = sub.add_parser(
        "train",
        usage="treasure train CONFIG.yaml [--resume] [--key value ...] [--markers.KEY value ...]",
        help="fine-tune a model with training-time markers (TRL SFTTrainer)",
        description="Fine-tune a causal LM on annotated records with training-time markers and save a bundle.",
        epilog=epilog,
    )
    p.add_argument("config", help="training YAML (see configs/)")
    _train_options(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "inspect",
        usage="treasure inspect CONFIG.yaml [--n N] [--epoch E] [--color auto|always|never] [--key value ...]",
        help="print rendered training examples with the trained tokens marked",
        description="Render the first examples of a training run exactly as the trainer will see them.",
        epilog=epilog,
    )
    p.add_argument("config", help="training YAML")
    _inspect_options(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run_inspect)

    p = sub.add_parser("export", help="merge a LoRA run into a plain Hugging Face checkpoint bundle")
    p.add_argument("run_dir", help="a bundle saved by treasure train")
    p.add_argument("out_dir", help="where to write the merged bundle")
    p.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    from treasure.train.config import load_config
    from treasure.train.trainer import train

    overrides = _split(args, _train_options)
    run = load_config(args.config, overrides)
    m = run.markers
    main = run.args.process_index == 0  # under accelerate launch, only the main process prints
    if main:
        cats = ", ".join(m.categories) if m.categories else f"all {len(run.taxonomy.categories)}"
        print(
            f"train: {run.model.model_name_or_path} on {run.args.train_file}; markers: mode {m.mode}, format {m.format}, "
            f"placement {m.placement}, categories {cats}, dropout {m.dataset_dropout}/{m.sample_dropout}",
            flush=True,
        )
    result = train(run, resume=args.resume)
    if main:
        c = result.counts
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if isinstance(v, int | float))
        resumed = f" (resumed from {result.resumed_from})" if result.resumed_from else ""
        print(
            f"train: {c.get('records')} records x {c.get('epochs')} epoch copies = {c.get('examples')} examples"
            f"{resumed}; {metrics}\ntrain: saved bundle to {result.output_dir}",
            flush=True,
        )
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from treasure.errors import ConfigError
    from treasure.train.config import load_config
    from treasure.train.render import epoch_order
    from treasure.train.token_view import describe, legend
    from treasure.train.trainer import prepare

    overrides = _split(args, _inspect_options)
    if args.n < 1 or args.epoch < 0:
        raise ConfigError("--n must be at least 1 and --epoch at least 0")
    run = load_config(args.config, overrides)
    prep = prepare(run, load_model=False, build_datasets=False)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    order = epoch_order(len(prep.records), prep.spec.seed, args.epoch)
    print(legend(color))
    for k, index in enumerate(order[: args.n], 1):
        ex = prep.spec.example(prep.tokenizer, prep.records[index], epoch=args.epoch, index=index)
        title = f"example {k} of epoch {args.epoch}: {run.args.train_file}:{prep.lines[index]}"
        print()
        print(describe(ex, prep.tokenizer, title=title, max_length=run.args.max_length, color=color))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from treasure.train.bundle import export_bundle

    out = export_bundle(args.run_dir, args.out_dir)
    print(f"export: wrote {out}")
    return 0
