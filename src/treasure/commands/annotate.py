"""`treasure annotate IN -o OUT`: fill markers (offline annotators, an LLM endpoint, a reward model), on one machine
or a Ray cluster; `treasure annotate FILE --explain ID` shows why a record's markers have their values."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The option fields with a flag, in the order --help lists them (the other flags are the run's, not options').
BEFORE_REJECTS = ("taxonomy", "categories", "tokenizer", "field_map", "seeds", "embedding_fine_tune",
                  "on_error")  # fmt: skip
LLM_FLAGS = ("model", "base_url", "categories", "concurrency", "cache", "fewshot", "num_fewshot", "structured",
             "timeout", "max_retries", "max_attempts", "api_key_env")  # fmt: skip
REWARD_FLAGS = ("reward_model", "reward_batch_size", "reward_max_length")
AS_GIVEN = {"categories": None}  # comma-separated: split by _options


def register(sub) -> None:
    from treasure.annotate.options import AnnotateOptions, LLMSettings
    from treasure.options import add_dataclass_arguments

    p = sub.add_parser(
        "annotate", help="fill markers: length, format, language, code, domain, task, quality, ..."
    )
    p.add_argument("input", help="JSONL, JSON, Parquet or a saved HF dataset folder")
    p.add_argument("--from", dest="input_format", choices=["records", "oasst"], default="records",
                   help="records: the formats above; oasst: OpenAssistant messages or trees, one record per "
                   "assistant reply with the human quality label as `quality` (see treasure/oasst.py)")  # fmt: skip
    p.add_argument(
        "-o", "--output", default=None, help="output .jsonl or .parquet (required unless --explain)"
    )
    add_dataclass_arguments(p, AnnotateOptions, names=BEFORE_REJECTS, types=AS_GIVEN)
    p.add_argument("--rejects", default=None, help="where skipped records go (default: OUTPUT.rejects.jsonl)")
    p.add_argument("--num-proc", type=int, default=None,
                   help="worker processes (default 1); with --engine ray: Ray workers (default: the cluster's CPUs)")  # fmt: skip
    # --chunk-size None: 512, or more with an LLM (_options decides)
    add_dataclass_arguments(p, AnnotateOptions, names=("split", "chunk_size"), defaults={"chunk_size": None})

    llm = p.add_argument_group("LLM annotator (any OpenAI-compatible endpoint: vLLM, Ollama, a hosted API)")
    # --llm-base-url None: $OPENAI_BASE_URL, else the field's default (_options decides)
    add_dataclass_arguments(llm, LLMSettings, prefix="llm-", names=LLM_FLAGS, types=AS_GIVEN,
                            defaults={"base_url": None})  # fmt: skip

    rm = p.add_argument_group("reward model (quality, quality_bucket)")
    add_dataclass_arguments(rm, AnnotateOptions, names=REWARD_FLAGS)

    scale = p.add_argument_group("scale")
    scale.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this machine (--num-proc processes); ray: a Ray cluster, with Ray Data")  # fmt: skip
    scale.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: start a local instance)"
    )
    scale.add_argument("--shard-size", type=int, default=None,
                       help="records per Ray shard, a multiple of --chunk-size (default: 8 chunks)")  # fmt: skip

    ex = p.add_argument_group("explain")
    ex.add_argument("--explain", default=None, metavar="ID",
                    help="show why the record with this id (or line:N) has its markers; the other options "
                    "should be those of the run that wrote INPUT")  # fmt: skip
    ex.add_argument("--id-field", default="id", help="the field --explain matches (default: id)")
    ex.add_argument("--json", action="store_true", help="with --explain: print the evidence as JSON")
    p.set_defaults(func=run)


def _csv_list(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",")] if text else None


def _options(args: argparse.Namespace):
    import os

    from treasure.annotate.fields import parse_field_map
    from treasure.annotate.options import AnnotateOptions, LLMSettings
    from treasure.errors import TreasureError
    from treasure.options import dataclass_values

    if args.num_proc is not None and args.num_proc < 1:
        raise TreasureError("--num-proc must be at least 1")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise TreasureError("--chunk-size must be at least 1")
    if args.embedding_fine_tune < 0:
        raise TreasureError(
            f"--embedding-fine-tune must be 0 (frozen encoder) or a number of epochs, got {args.embedding_fine_tune}"
        )
    values = dataclass_values(
        AnnotateOptions, args, names=BEFORE_REJECTS + ("split", "chunk_size") + REWARD_FLAGS
    )
    values.update(categories=_csv_list(args.categories), field_map=parse_field_map(args.map))
    if args.llm_model:
        from treasure.annotate.llm import llm_chunk_size

        llm = dataclass_values(LLMSettings, args, prefix="llm-", names=LLM_FLAGS)
        llm["categories"] = _csv_list(args.llm_categories)
        base_url = args.llm_base_url or os.environ.get("OPENAI_BASE_URL")
        if base_url:
            llm["base_url"] = base_url
        else:  # an empty --llm-base-url: the default, as for none
            llm.pop("base_url", None)
        values["llm"] = LLMSettings(**llm)
        values.setdefault("chunk_size", llm_chunk_size(args.llm_concurrency))
    elif args.llm_categories:
        raise TreasureError("--llm-categories needs --llm-model")
    return AnnotateOptions(**values)


def run(args: argparse.Namespace) -> int:
    from treasure.errors import TreasureError

    opts = _options(args)
    if args.explain is not None and args.input_format != "records":
        raise TreasureError("--explain reads an annotated file; drop --from")
    if args.explain is not None:
        from treasure.annotate.explain import explain, format_explanation

        report = explain(args.input, args.explain, opts, id_field=args.id_field)
        print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_explanation(report))
        return 0
    if not args.output:
        raise TreasureError("-o/--output is required (unless --explain)")
    from treasure.annotate.pipeline import run_annotate

    in_path, given = args.input, set()
    if args.input_format == "oasst":
        in_path, given = _convert_oasst(args.input, args.output)
    num_proc = args.num_proc if args.num_proc is not None else (None if args.engine == "ray" else 1)
    summary = run_annotate(in_path, args.output, opts, rejects_path=args.rejects, num_proc=num_proc,
                           engine=args.engine, ray_address=args.ray_address, shard_size=args.shard_size)  # fmt: skip
    if in_path != args.input:
        Path(in_path).unlink()
    for cat, why in summary.not_annotated.items():
        if cat in given:  # every record brought it: nothing was left out
            continue
        print(f"note: {cat} not annotated: {why}", file=sys.stderr)
    if summary.noted:
        print(f"note: {summary.noted} records have markers left Unspecified or out, with the reason in "
              f"marker_notes (see --explain ID)", file=sys.stderr)  # fmt: skip
    rejects = f" (rejects: {args.rejects or args.output + '.rejects.jsonl'})" if summary.rejected else ""
    print(f"annotate: {summary.line()}{rejects} -> {args.output}")
    return 0


def _convert_oasst(path: str, output: str) -> tuple[str, set[str]]:
    """Write the oasst file's records next to the output, where a resumed run finds the same bytes again.
    Returns that file and the markers every record carries (no annotator is needed for them)."""
    from treasure.oasst import convert_oasst
    from treasure.records import write_records

    conv = convert_oasst(path)
    print(f"oasst: {conv.summary()}", file=sys.stderr)
    converted = Path(output).with_name(Path(output).name + ".oasst.jsonl")
    write_records(converted, conv.records)
    given = set.intersection(*(set(r["markers"]) for r in conv.records)) if conv.records else set()
    return str(converted), given
