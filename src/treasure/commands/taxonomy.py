"""`treasure taxonomy show|validate FILE`."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("taxonomy", help="show or validate a taxonomy file")
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("file", nargs="?", default="paper", help="taxonomy YAML (default: the paper's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from treasure.taxonomy import load_taxonomy

    tax = load_taxonomy(args.file)
    if args.action == "validate":
        n_values = sum(len(c.values) for c in tax)
        print(
            f"{args.file}: ok ({len(tax.categories)} categories, {n_values} categorical values, "
            f"fingerprint {tax.fingerprint()})"
        )
        return 0
    print(f"taxonomy {tax.name} v{tax.version}: {tax.description}")
    for cat in tax:
        extra = f" from field {cat.from_field}" if cat.from_field else ""
        print(f"\n{cat.name} ({cat.kind}{extra}): {cat.description}")
        for v in cat.values:
            print(f"  {v:<24} {cat.value_descriptions.get(v, '')}")
    return 0
