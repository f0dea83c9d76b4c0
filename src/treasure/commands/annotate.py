"""`treasure annotate IN -o OUT`: fill markers (offline annotators, an LLM endpoint, a reward model), on one machine
or a Ray cluster; `treasure annotate FILE --explain ID` shows why a record's markers have their values."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
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
    p.add_argument("--taxonomy", default=None, help="taxonomy YAML (default: the paper's)")
    p.add_argument("--categories", default=None, help="comma-separated subset of categories to annotate")
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer.json or local HF tokenizer folder for length_tokens"
    )
    p.add_argument("--map", action="append", default=[], metavar="CATEGORY=FIELD",
                   help="fill a category from an input field, e.g. source=meta.origin (repeatable)")  # fmt: skip
    p.add_argument(
        "--seeds", default=None, help="extra labelled examples (JSONL) for the domain/task classifier"
    )
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    p.add_argument("--rejects", default=None, help="where skipped records go (default: OUTPUT.rejects.jsonl)")
    p.add_argument("--num-proc", type=int, default=None,
                   help="worker processes (default 1); with --engine ray: Ray workers (default: the cluster's CPUs)")  # fmt: skip
    p.add_argument("--split", default=None, help="split of a saved DatasetDict")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="records per batch and per progress step (default 512; with an LLM, 64 x --llm-concurrency)")  # fmt: skip

    llm = p.add_argument_group("LLM annotator (any OpenAI-compatible endpoint: vLLM, Ollama, a hosted API)")
    llm.add_argument(
        "--llm-model", default=None, help="model name at the endpoint; enables the LLM annotator"
    )
    llm.add_argument("--llm-base-url", default=None,
                     help="endpoint URL up to /v1 (default: $OPENAI_BASE_URL, else http://127.0.0.1:8000/v1)")  # fmt: skip
    llm.add_argument("--llm-categories", default=None,
                     help="categories the LLM fills (default: those with `annotator: llm`, else domain,task,format)")  # fmt: skip
    llm.add_argument(
        "--llm-concurrency", type=int, default=16, help="requests in flight (per --num-proc worker)"
    )
    llm.add_argument("--llm-cache", default=None, help="answer cache (SQLite) path, or 'none' "
                     "(default: ~/.cache/treasure/llm-cache.sqlite)")  # fmt: skip
    llm.add_argument(
        "--llm-fewshot", default=None, help="few-shot examples JSONL {category, value, messages}"
    )
    llm.add_argument("--llm-num-fewshot", type=int, default=6, help="few-shot examples per category")
    llm.add_argument("--llm-structured", choices=["json_schema", "json_object", "none"], default="json_schema",
                     help="how the answer format is enforced (json_schema needs vLLM, Ollama or OpenAI)")  # fmt: skip
    llm.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
    llm.add_argument(
        "--llm-max-retries", type=int, default=6, help="retries of a request on 429/5xx/timeouts"
    )
    llm.add_argument("--llm-max-attempts", type=int, default=3, help="answers asked for before Unspecified")
    llm.add_argument(
        "--llm-api-key-env", default="OPENAI_API_KEY", help="environment variable with the API key"
    )

    rm = p.add_argument_group("reward model (quality, quality_bucket)")
    rm.add_argument(
        "--reward-model", default=None, help="HF sequence-classification reward model (name or folder)"
    )
    rm.add_argument("--reward-batch-size", type=int, default=8)
    rm.add_argument(
        "--reward-max-length", type=int, default=None, help="tokens scored (default: the model's)"
    )

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


def _options(args: argparse.Namespace):
    import os

    from treasure.annotate.fields import parse_field_map
    from treasure.annotate.pipeline import AnnotateOptions
    from treasure.errors import TreasureError

    if args.num_proc is not None and args.num_proc < 1:
        raise TreasureError("--num-proc must be at least 1")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise TreasureError("--chunk-size must be at least 1")
    llm = None
    chunk_size = args.chunk_size or 512
    if args.llm_model:
        from treasure.annotate.llm import LLMSettings, llm_chunk_size

        chunk_size = args.chunk_size or llm_chunk_size(args.llm_concurrency)

        llm = LLMSettings(
            model=args.llm_model,
            base_url=args.llm_base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1",
            categories=[c.strip() for c in args.llm_categories.split(",")] if args.llm_categories else None,
            fewshot=args.llm_fewshot,
            num_fewshot=args.llm_num_fewshot,
            structured=args.llm_structured,
            max_attempts=args.llm_max_attempts,
            concurrency=args.llm_concurrency,
            cache=args.llm_cache,
            api_key_env=args.llm_api_key_env,
            timeout=args.llm_timeout,
            max_retries=args.llm_max_retries,
        )
    elif args.llm_categories:
        raise TreasureError("--llm-categories needs --llm-model")
    return AnnotateOptions(
        taxonomy=args.taxonomy,
        categories=[c.strip() for c in args.categories.split(",")] if args.categories else None,
        tokenizer=args.tokenizer,
        field_map=parse_field_map(args.map),
        seeds=args.seeds,
        on_error=args.on_error,
        split=args.split,
        chunk_size=chunk_size,
        llm=llm,
        reward_model=args.reward_model,
        reward_batch_size=args.reward_batch_size,
        reward_max_length=args.reward_max_length,
    )


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
