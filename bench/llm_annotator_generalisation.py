"""The LLM annotator route on the embedding annotator's development set, leave one source out, beside the classifier.

For each held-out source S of `src/treasure/annotate/seeds/labelled.jsonl` (the set and the scoring of
bench/annotator_generalisation.py: right when the answer is the label or an alternative the labeller accepted), the
LLM annotator (`treasure.annotate.llm.LLMAnnotator`, the CLI's `--llm-*` route, one request per record and category)
asks a local `treasure serve` of a plain model (default: the real SmolLM2-135M-Instruct) for `domain` and `task`.
Its few-shot examples come from the development set without S: per category, --shots of them (default 6, the
CLI's number), one per value for the values most frequent without S (0: every value), each a prompt of at most 300
characters whose label has no accepted alternative, drawn by a fixed seed, in a seeded order. The model is shown
the prompt only (no response: shorter requests on a CPU), clipped to --max-chars. The endpoint does not constrain
decoding, so `--llm-structured none`: the answer is parsed from the text and an invalid one is corrected and asked
once more (then Unspecified for domain, no value for task; both count as wrong unless the label is Unspecified).

Beside it, on the same rows, the packaged embedding classifier trained without S (threshold 0.0, as packaged).
records/s is the LLM fold's records over its wall time (two requests per record, --concurrency in flight, the
server batching them); the classifier's records/s is its classify() call on the same rows (the head's training
not counted), both on this machine at once with whatever else runs on it.

    .venv/bin/python bench/llm_annotator_generalisation.py [--per-source 50] [--sources mt_bench,oasst] [--shots 6]
        [--base-url URL --model NAME]   # another OpenAI-compatible endpoint instead of starting `treasure serve`

Writes bench/results/llm_annotator_generalisation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from annotator_generalisation import CATS, correct, order_sources, write_results  # noqa: E402

from treasure.annotate import embedding as emb  # noqa: E402
from treasure.annotate.llm import LLMAnnotator  # noqa: E402
from treasure.annotate.options import LLMSettings  # noqa: E402
from treasure.taxonomy import paper_taxonomy  # noqa: E402

SEED = 14
SHOT_MAX_CHARS = 300


def fewshot_rows(train: list[dict], cat: str, values: list[str], held_out: str, shots: int) -> list[dict]:
    """One short, unambiguous labelled prompt per value of `cat`, for the `shots` values most frequent in `train`
    (0: every value; none for a value without such a prompt), in a seeded order."""
    freq = {v: sum(r[cat] == v for r in train) for v in values}
    chosen = sorted(values, key=lambda v: -freq[v])[: shots or len(values)]
    out = []
    for v in chosen:
        cands = sorted(
            (
                r
                for r in train
                if r[cat] == v and not r.get(f"{cat}_also") and len(r["prompt"]) <= SHOT_MAX_CHARS
            ),
            key=lambda r: (r["source"], r["id"]),
        )
        if cands:
            out.append(random.Random(f"{SEED}:{held_out}:{cat}:{v}").choice(cands))
    random.Random(f"{SEED}:{held_out}:{cat}").shuffle(out)
    return out


def messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": ""}]


def write_fewshot(path: Path, train: list[dict], held_out: str, shots: int) -> dict[str, int]:
    tax = paper_taxonomy()
    lines, counts = [], {}
    for cat in CATS:
        rows = fewshot_rows(train, cat, list(tax[cat].values), held_out, shots)
        counts[cat] = len(rows)
        lines += [json.dumps({"category": cat, "value": r[cat], "messages": messages(r)}, ensure_ascii=False)
                  for r in rows]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, threads: int, max_batch: int) -> tuple[subprocess.Popen, str, str]:
    """`treasure serve --model MODEL` on a free port; (process, base_url, the model name it serves)."""
    import httpx2

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    exe = Path(sys.executable).with_name("treasure")
    proc = subprocess.Popen([str(exe), "serve", "--model", model, "--port", str(port), "--log-level", "warning",
                             "--max-batch-size", str(max_batch)], env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"treasure serve exited with {proc.returncode}")
        try:
            name = httpx2.get(f"{url}/models", timeout=2).json()["data"][0]["id"]
            return proc, url, name
        except Exception:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("treasure serve did not start within 600 s")


def classifier_fold(train: list[dict], test: list[dict], threads: int) -> tuple[list[dict], float]:
    ann = emb.EmbeddingAnnotator(paper_taxonomy(), categories=CATS, labelled=train, num_threads=threads,
                                 cache_dir="none")  # fmt: skip
    t0 = time.perf_counter()
    preds = ann.classify([r["prompt"] for r in test], responses=[r.get("response") for r in test])
    return [{c: p[c].value for c in CATS} for p in preds], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="what `treasure serve --model` loads")
    ap.add_argument(
        "--base-url", help="an OpenAI-compatible endpoint already running (then --model is its name)"
    )
    ap.add_argument(
        "--per-source", type=int, default=0, help="rows per held-out source, seeded sample (0: all)"
    )
    ap.add_argument("--sources", help="comma-separated held-out sources (default: all, MT-Bench last)")
    ap.add_argument(
        "--shots",
        type=int,
        default=6,
        help="few-shot examples per category: the most frequent values (default 6, the CLI's; 0: all)",
    )
    ap.add_argument(
        "--max-chars", type=int, default=600, help="characters of the shown prompt (head and tail)"
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and the classifier")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "llm_annotator_generalisation")
    args = ap.parse_args(argv)

    rows = emb.read_labelled()
    sources = order_sources(rows)
    if args.sources:
        sources = [s for s in sources if s in args.sources.split(",")]
    proc = None
    if args.base_url:
        url, name = args.base_url, args.model
    else:
        t0 = time.perf_counter()
        proc, url, name = start_server(args.model, args.threads, args.concurrency)
        print(
            f"treasure serve --model {args.model}: {name!r} at {url} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    tax = paper_taxonomy()
    res: dict = {"model": name, "endpoint": "treasure serve" if proc else url, "max_chars": args.max_chars,
                 "shots": args.shots,
                 "concurrency": args.concurrency, "threads": args.threads, "per_source": args.per_source,
                 "folds": {}}  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for s in sources:
                train = [r for r in rows if r["source"] != s]
                test = [r for r in rows if r["source"] == s]
                if args.per_source and len(test) > args.per_source:
                    test = random.Random(f"{SEED}:{s}:sample").sample(test, args.per_source)
                shots_path = Path(tmp) / f"fewshot_{s}.jsonl"
                counts = write_fewshot(shots_path, train, s, args.shots)
                settings = LLMSettings(model=name, base_url=url, categories=list(CATS), fewshot=str(shots_path),
                                       num_fewshot=max(counts.values()), structured="none", max_tokens=16,
                                       max_attempts=2, max_chars=args.max_chars, concurrency=args.concurrency,
                                       cache="none", timeout=600.0, max_retries=1)  # fmt: skip
                ann = LLMAnnotator(tax, settings)
                t0 = time.perf_counter()
                outs = ann.outcomes([{"messages": messages(r), "markers": {}} for r in test])
                llm_s = time.perf_counter() - t0
                ann.close()
                cls, cls_s = classifier_fold(train, test, args.threads)
                fold = {"n": len(test), "of": sum(r["source"] == s for r in rows), "fewshot": counts,
                        "llm_seconds": round(llm_s, 1), "llm_records_per_s": round(len(test) / llm_s, 3),
                        "classifier_records_per_s": round(len(test) / cls_s, 1)}  # fmt: skip
                for cat in CATS:
                    vals = [o[cat].value for o in outs]
                    fold[f"llm_{cat}"] = sum(
                        correct(v, r, cat) for v, r in zip(vals, test, strict=True)
                    ) / len(test)
                    fold[f"llm_{cat}_invalid"] = sum(o[cat].note is not None for o in outs) / len(test)
                    fold[f"llm_{cat}_answers"] = dict(Counter(str(v) for v in vals).most_common())
                    fold[f"classifier_{cat}"] = sum(
                        correct(c[cat], r, cat) for c, r in zip(cls, test, strict=True)
                    ) / len(test)
                fold["rows"] = [{"id": r["id"], **{f"{c}_label": r[c] for c in CATS},
                                 **{f"llm_{c}": o[c].value for c in CATS}, **{f"classifier_{c}": k[c] for c in CATS},
                                 "llm_answers": {c: o[c].answers for c in CATS}}
                                for r, o, k in zip(test, outs, cls, strict=True)]  # fmt: skip
                res["folds"][s] = fold
                print(f"  held out {s:20s} n={fold['n']:3d}/{fold['of']} LLM domain {fold['llm_domain']:.3f} task "
                      f"{fold['llm_task']:.3f} (invalid {fold['llm_domain_invalid']:.2f}/{fold['llm_task_invalid']:.2f}"
                      f", {fold['llm_records_per_s']} rec/s) | classifier domain {fold['classifier_domain']:.3f} "
                      f"task {fold['classifier_task']:.3f} ({fold['classifier_records_per_s']} rec/s)", flush=True)  # fmt: skip
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    folds = res["folds"].values()
    res["mean"] = {k: sum(f[k] for f in folds) / len(folds)
                   for k in ("llm_domain", "llm_task", "classifier_domain", "classifier_task")}  # fmt: skip
    total_s = sum(f["llm_seconds"] for f in folds)
    res["llm_records_per_s"] = round(sum(f["n"] for f in folds) / total_s, 3)
    lines = ["| held-out source | n (of) | LLM domain | LLM task | LLM invalid answers (domain / task) | LLM records/s "
             "| classifier domain | classifier task | classifier records/s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s, f in res["folds"].items():
        lines.append(f"| {s} | {f['n']} ({f['of']}) | {f['llm_domain']:.3f} | {f['llm_task']:.3f} | "
                     f"{f['llm_domain_invalid']:.2f} / {f['llm_task_invalid']:.2f} | {f['llm_records_per_s']} | "
                     f"{f['classifier_domain']:.3f} | {f['classifier_task']:.3f} | {f['classifier_records_per_s']} |")  # fmt: skip
    m = res["mean"]
    lines.append(f"| **mean of sources** | {sum(f['n'] for f in folds)} | {m['llm_domain']:.3f} | {m['llm_task']:.3f} | "
                 f"| {res['llm_records_per_s']} | {m['classifier_domain']:.3f} | {m['classifier_task']:.3f} | |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    write_results(args.out, table, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
