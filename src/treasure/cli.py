"""The `treasure` command: one thin subcommand per stage, each defined next to the API it calls.

Every command module exposes `register(subparsers)`; heavy imports (torch, transformers) stay inside the
command functions so `treasure --help` is instant. A TreasureError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from treasure.errors import TreasureError

# (module, what it adds). Modules register their own subcommands.
COMMAND_MODULES = [
    "treasure.commands.taxonomy",
    "treasure.commands.annotate",
    "treasure.commands.stats",
    "treasure.commands.train",
    "treasure.commands.demo",
    "treasure.commands.sweep",
    "treasure.commands.eval",
    "treasure.commands.generate",
]


def build_parser() -> argparse.ArgumentParser:
    from treasure import __version__

    parser = argparse.ArgumentParser(
        prog="treasure", description="Training-time markers for LLM post-training."
    )
    parser.add_argument("--version", action="version", version=f"treasure {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command still being built: skip it, keep the others
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except TreasureError as e:
        print(f"treasure {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"treasure {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
