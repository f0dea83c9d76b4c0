"""Annotation throughput on this machine: the heuristic annotators together, and the embedding classifier.

Input: >= 10,000 real conversations: every prompt -> reply path of the OpenAssistant trees in
../shared/data/conversations (plus the bundled sample), cycled to the requested count. Each configuration runs the
real pipeline (read, normalise, annotate, write JSONL) in one process and with --num-proc 2.

    .venv/bin/python bench/bench_annotate.py [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources
from pathlib import Path

from treasure.annotate.options import AnnotateOptions
from treasure.annotate.pipeline import run_annotate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HEURISTIC = ["length_tokens", "length_sentences", "length_paragraphs", "length_bucket", "format", "code_type",
             "language", "source"]  # fmt: skip
EMBEDDING = ["domain", "task"]


def conversations() -> list[dict]:
    out = []
    path = SHARED / "conversations" / "oasst_en_100_tree.jsonl"
    if path.is_file():
        for line in path.open(encoding="utf-8"):
            tree = json.loads(line)

            def walk(node, history):
                role = "user" if node["role"] == "prompter" else "assistant"
                msgs = [*history, {"role": role, "content": node["text"]}]
                if role == "assistant":
                    out.append({"messages": msgs, "meta": {"origin": "human"}})
                for child in node.get("replies", []):
                    walk(child, msgs)

            walk(tree["prompt"], [])
    sample = resources.files("treasure.data").joinpath("sample.jsonl").read_text(encoding="utf-8")
    out += [json.loads(line) for line in sample.splitlines() if line.strip()]
    return out


def bench(records: list[dict], categories: list[str], num_proc: int, tmp: Path) -> float:
    src = tmp / "in.jsonl"
    out = tmp / f"out-{len(categories)}-{num_proc}.jsonl"
    opts = AnnotateOptions(categories=categories, field_map={"source": "meta.origin"})
    start = time.perf_counter()
    s = run_annotate(src, out, opts, num_proc=num_proc, progress=False)
    took = time.perf_counter() - start
    assert s.written == len(records), s
    return len(records) / took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--skip-embedding", action="store_true")
    args = ap.parse_args()
    base = conversations()
    records = [base[i % len(base)] for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "in.jsonl", "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        chars = sum(len(r["messages"][-1]["content"]) for r in records) / len(records)
        print(f"{len(records)} records ({len(base)} distinct conversations, mean reply {chars:.0f} chars)")
        print("| annotators | processes | records/s |")
        print("|---|---|---|")
        configs = [("heuristic: length, format, code_type, language, source", HEURISTIC)]
        if not args.skip_embedding:
            configs.append(("embedding classifier: domain, task", EMBEDDING))
        for name, cats in configs:
            for procs in (1, 2):
                print(f"| {name} | {procs} | {bench(records, cats, procs, tmp):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
