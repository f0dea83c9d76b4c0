"""`treasure generate` (one prompt, or a file of them) and `treasure serve` (an OpenAI-compatible server).

treasure generate --model runs/tiny --marker length_bucket=concise "Reverse 'apple'."
treasure generate --model runs/tiny --input prompts.jsonl --output out.jsonl
treasure serve --model runs/tiny --port 8000 --api-key KEY
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from treasure.errors import RecordError, TaxonomyError, TreasureError

MODES = ("inferred", "fixed", "onthefly")


def register(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="generate with a trained bundle: markers inferred, fixed or predicted on the fly",
        description="Generate a response for PROMPT, or for every record of --input into --output (JSONL).",
    )
    g.add_argument("prompt", nargs="?", help="the user message (omit with --input)")
    g.add_argument("--model", required=True, metavar="MODEL",
                   help="a bundle saved by `treasure train`, or an untuned model without markers: "
                        "smollm2-135m-instruct, a .gguf file, a Hugging Face folder or hub id")  # fmt: skip
    g.add_argument("--marker", action="append", default=[], metavar="CATEGORY=VALUE",
                   help="a marker to fix (repeatable)")  # fmt: skip
    g.add_argument("--mode", choices=MODES, default=None,
                   help="default: fixed when markers are given (or the input has them), else inferred")  # fmt: skip
    g.add_argument(
        "--show-markers", action="store_true", help="print the block's markers before the response"
    )
    g.add_argument(
        "--max-tokens", type=int, default=256, metavar="N", help="new tokens at most (default 256)"
    )
    g.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (default) decodes greedily")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--system", default=None, help="a system message before the prompt")
    g.add_argument("--no-constrain", action="store_true", help="let the model write its block unconstrained")
    g.add_argument("--input", default=None, metavar="FILE",
                   help="records or prompts: JSONL/JSON/Parquet of {messages, markers} or {prompt}")  # fmt: skip
    g.add_argument("--output", default=None, metavar="FILE", help="JSONL output for --input")
    g.add_argument("--batch-size", type=int, default=8)
    g.set_defaults(func=run_generate)

    s = sub.add_parser("serve", help="serve a bundle over an OpenAI-compatible HTTP API (chat completions)")
    s.add_argument("--model", required=True, metavar="MODEL",
                   help="a bundle saved by `treasure train`, or a plain model (no markers): a hub id, a folder, "
                   "a .gguf file or smollm2-135m-instruct")  # fmt: skip
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=os.environ.get("TREASURE_API_KEY"),
                   help="require `Authorization: Bearer KEY` (default: $TREASURE_API_KEY, else none)")  # fmt: skip
    s.add_argument(
        "--model-name", default=None, help="the model id clients ask for (default: the folder name)"
    )
    s.add_argument(
        "--max-tokens-limit", type=int, default=1024, help="the largest max_tokens a request may ask"
    )
    s.add_argument("--max-batch-size", type=int, default=16, metavar="N",
                   help="requests that arrive together run as one batch of up to N (default 16; 1: one at a time)")  # fmt: skip
    s.add_argument("--batch-wait-ms", type=float, default=10.0, metavar="MS",
                   help="a batch starts when no request joined it for MS (default 10), at most 5 x MS after its first")  # fmt: skip
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    s.set_defaults(func=run_serve)


def parse_markers(items: list[str]) -> dict[str, str]:
    """`["domain=Code", ...]` -> `{"domain": "Code"}`; a malformed item raises a TreasureError naming it."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise TreasureError(f"--marker {item!r}: expected CATEGORY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _prompt_messages(raw: dict, source: str, line: int) -> tuple[list[dict], Any]:
    """The conversation to answer and the reference reply (a trailing assistant turn), from one input record."""
    from treasure.messages import check_content, normalize_messages
    from treasure.records import DEFAULT_MAX_CHARS, last_assistant, normalize_record, prompt_messages

    where = {"source": source, "line": line, "max_chars": DEFAULT_MAX_CHARS}  # checked as records are
    if isinstance(raw.get("prompt"), str) and "completion" not in raw:
        prompt = check_content(raw["prompt"], "prompt", **where)
        return [{"role": "user", "content": prompt}], None
    msgs = raw.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") != "assistant":
        # a conversation to answer, with no reference reply
        return normalize_messages(msgs, **where), None
    record = normalize_record({**raw, "markers": {}}, source=source, line=line)
    return prompt_messages(record), last_assistant(record)


def read_prompts(path: str, cli_markers: dict[str, Any], generator: Any) -> list[dict]:
    """Every input record as {line, messages, markers, reference, id}; a bad one raises naming file, line, field."""
    from treasure.records import iter_raw

    items = []
    for line, raw in iter_raw(path):
        if isinstance(raw, RecordError):
            raise raw
        if not isinstance(raw, dict):
            raise RecordError(f"expected a JSON object, got {type(raw).__name__}", source=path, line=line)
        messages, reference = _prompt_messages(raw, path, line)
        markers = raw.get("markers") or {}
        if not isinstance(markers, dict):
            raise RecordError(
                "expected a mapping of category to value", source=path, line=line, field="markers"
            )
        try:
            markers = generator.validate_markers({**markers, **cli_markers})
        except TaxonomyError as e:
            raise RecordError(str(e), source=path, line=line, field="markers") from None
        items.append({"line": line, "id": raw.get("id"), "messages": messages, "markers": markers,
                      "reference": reference})  # fmt: skip
    return items


def _output_record(item: dict, gen: Any) -> dict[str, Any]:
    out = {"line": item["line"]}
    if item["id"] is not None:
        out["id"] = item["id"]
    out.update(
        messages=item["messages"],
        response=gen.text,
        markers=gen.markers,
        fixed=gen.fixed,
        inferred=gen.inferred,
        mode=gen.mode,
        flags={
            "block_closed": gen.block_closed,
            "block_forced": gen.block_forced,
            "cut": gen.cut,
            "finish_reason": gen.finish_reason,
            "problems": gen.problems,
        },
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
    )
    if item["reference"] is not None:
        out["reference"] = item["reference"]
    return out


def run_generate(args: argparse.Namespace) -> int:
    from treasure.bundle import load_any
    from treasure.generate.engine import Generator

    if (args.prompt is None) == (args.input is None):
        raise TreasureError("give either a PROMPT or --input FILE (with --output FILE)")
    if args.input and not args.output:
        raise TreasureError("--input needs --output FILE")
    if args.max_tokens < 1:
        raise TreasureError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    cli_markers = parse_markers(args.marker)
    generator = Generator(load_any(args.model), constrained=not args.no_constrain)
    try:
        cli_markers = generator.validate_markers(cli_markers)
    except TaxonomyError as e:
        raise TreasureError(f"--marker: {e}") from None
    kw = {"max_new_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
          "seed": args.seed}  # fmt: skip
    if args.prompt is not None:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        mode = args.mode or ("fixed" if cli_markers else "inferred")
        gen = generator.generate(messages, cli_markers, mode=mode, **kw)
        if args.show_markers:
            print("markers: " + json.dumps({"markers": gen.markers, "fixed": gen.fixed, "inferred": gen.inferred},
                                           ensure_ascii=False))  # fmt: skip
        print(gen.text)
        if not gen.block_closed:
            print("warning: the model left its marker block open (raise --max-tokens)", file=sys.stderr)
        if gen.cut:
            print("warning: the model wrote marker syntax after its block; the response was cut there",
                  file=sys.stderr)  # fmt: skip
        return 0
    return _run_batch(args, generator, cli_markers, kw)


def _run_batch(args: argparse.Namespace, generator: Any, cli_markers: dict, kw: dict) -> int:
    from tqdm.auto import tqdm

    items = read_prompts(args.input, cli_markers, generator)
    if args.system:
        for item in items:
            if item["messages"][0]["role"] != "system":
                item["messages"].insert(0, {"role": "system", "content": args.system})
    mode = args.mode or ("fixed" if any(i["markers"] for i in items) else "inferred")
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = max(1, args.batch_size)
    open_blocks = cut = 0
    with (
        out_path.open("w", encoding="utf-8") as fh,
        tqdm(total=len(items), desc="generate", unit="prompt") as bar,
    ):
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            gens = generator.generate_batch([i["messages"] for i in chunk], [i["markers"] for i in chunk],
                                            mode=mode, batch_size=size, **kw)  # fmt: skip
            for item, gen in zip(chunk, gens, strict=True):
                open_blocks += not gen.block_closed
                cut += gen.cut
                fh.write(json.dumps(_output_record(item, gen), ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(len(chunk))
    note = f"; {open_blocks} left their marker block open (raise --max-tokens)" if open_blocks else ""
    if cut:
        note += f"; {cut} responses cut where marker syntax began (unconstrained)"
    print(f"generate: {len(items)} prompts ({mode}) -> {out_path}{note}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from treasure.serve import Limits, serve

    if args.max_tokens_limit < 1:
        raise TreasureError(f"--max-tokens-limit must be at least 1, got {args.max_tokens_limit}")
    if args.max_batch_size < 1:
        raise TreasureError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    if args.batch_wait_ms < 0:
        raise TreasureError(f"--batch-wait-ms must be 0 or more, got {args.batch_wait_ms}")
    limits = Limits(max_tokens=args.max_tokens_limit, default_max_tokens=min(256, args.max_tokens_limit))
    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or None, model_name=args.model_name,
          limits=limits, log_level=args.log_level, max_batch_size=args.max_batch_size,
          batch_wait_ms=args.batch_wait_ms)  # fmt: skip
    return 0
