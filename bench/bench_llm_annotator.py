"""Benchmark: the LLM annotator's throughput against an endpoint of known latency, the cache, and Ray vs --num-proc.

1. A local OpenAI-compatible server (tests/openai_stub.py, its own process) answers every request after
   `--latency` seconds, so at concurrency C it allows at most C / latency requests per second. The full pipeline
   (`run_annotate`, one LLM category, so records/s = requests/s) runs at C = 1, 4, 16, 64 with a fresh cache;
   its ratio to C / latency is the annotator's efficiency (target: >= 0.80). Chunks are the CLI's default for an
   LLM run (64 x C records, at least 512); one more row repeats C = 64 with the plain default of 512, since the
   pipeline waits for a chunk's slowest request before the next chunk starts. A bare asyncio + httpx2 loop sending
   the same requests, measured in the same run, is the baseline: what this machine can get from the endpoint at
   all (on a busy 2-core machine the client, the server and everything else share the cores). The same loop
   through the official `openai` client shows what the SDK would have cost.
2. The same input again with the warm cache: no requests, and the records/s of a re-run.
3. The heuristic length annotators on N records: --num-proc 1 (the baseline), --num-proc 2, and the Ray engine
   with 2 workers, cold (the run starts its own local Ray instance, as the CLI does) and warm (Ray already up).

    .venv/bin/python bench/bench_llm_annotator.py            # all three; prints a markdown report
    .venv/bin/python bench/bench_llm_annotator.py --quick    # a smoke run with small sizes
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the stub endpoint lives with the tests

from treasure.annotate.llm import llm_chunk_size  # noqa: E402
from treasure.annotate.options import AnnotateOptions, LLMSettings  # noqa: E402
from treasure.annotate.pipeline import run_annotate  # noqa: E402

LENGTH = ["length_tokens", "length_sentences", "length_paragraphs", "length_bucket"]


def write_input(path: Path, n: int, tag: str = "") -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            rec = {"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {tag}{i}: how do I sort a list?"},
                                               {"role": "assistant", "content": "Use sorted(). " * (1 + i % 40)}]}  # fmt: skip
            fh.write(json.dumps(rec) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_stub.py"), "--port", str(port),
                             "--latency", str(latency)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the stub endpoint did not start")


def requests_served(url: str) -> int:
    import httpx2

    return httpx2.get(url.removesuffix("/v1") + "/stats").json().get("requests", 0)


def bare_client(url: str, bodies: list[dict], concurrency: int) -> float:
    """Requests/s of a bare asyncio + httpx2 loop sending the same requests: what this machine can get out of
    the endpoint with no annotator around it (the ceiling the annotator is compared with)."""
    import asyncio

    import httpx2

    async def run() -> float:
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx2.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            sem = asyncio.Semaphore(concurrency)

            async def one(body: dict) -> None:
                async with sem:
                    r = await client.post("/chat/completions", json=body)
                    assert isinstance(r.json()["choices"][0]["message"]["content"], str)

            t = time.perf_counter()
            await asyncio.gather(*(one(b) for b in bodies))
            return len(bodies) / (time.perf_counter() - t)

    return asyncio.run(run())


def sdk_client(url: str, bodies: list[dict], concurrency: int) -> float:
    """Requests/s of the same loop through the official `openai` client (retries off, as the annotator does its
    own): the alternative to plain httpx2 that the annotator did not take."""
    import asyncio

    from openai import AsyncOpenAI

    async def run() -> float:
        client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=60)
        sem = asyncio.Semaphore(concurrency)

        async def one(body: dict) -> None:
            async with sem:
                r = await client.chat.completions.create(**body)
                assert isinstance(r.choices[0].message.content, str)

        t = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        rps = len(bodies) / (time.perf_counter() - t)
        await client.close()
        return rps

    return asyncio.run(run())


def bench_llm(tmp: Path, latency: float, levels: list[tuple[int, int]], waves: int, repeat: int) -> list[str]:
    """One row per (concurrency, chunk size); each measured `repeat` times, the bare loop and the annotator in
    turn, so that each pair sees about the same load from whatever else the machine runs."""
    import statistics

    from treasure.annotate.llm import LLMAnnotator, response_format
    from treasure.records import load_records
    from treasure.taxonomy import paper_taxonomy

    tax = paper_taxonomy()
    fmt = response_format(tax["domain"], "json_schema")
    proc, url = start_server(latency)
    rows = ["| concurrency | --chunk-size | records | endpoint allows (rec/s) | bare httpx2 loop (rec/s) | "
            "openai SDK loop (rec/s) | annotator (rec/s) | annotator / allowed (median, best) | annotator / bare loop | "
            "re-run, warm cache (rec/s) | requests on re-run |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    try:
        for c, chunk in levels:
            n, allowed = c * waves, c / latency
            bare, sdk, annotator = [], [], []
            for r in range(repeat):
                src = tmp / f"llm-{c}-{chunk}-{r}.jsonl"
                llm = LLMSettings(model="bench", base_url=url, categories=["domain"], concurrency=c,
                                  cache=str(tmp / f"cache-{c}-{chunk}-{r}.sqlite"))  # fmt: skip
                opts = AnnotateOptions(categories=["domain"], llm=llm, chunk_size=chunk)
                # The baseline sends the requests the annotator sends, for other records (no cache hits).
                write_input(src, n, tag=f"bare{c}-{chunk}-{r}-")
                builder = LLMAnnotator(tax, llm, ["domain"])
                bodies = [{"model": "bench", "messages": builder._job(i, rec, tax["domain"]).messages,
                           "temperature": 0.0, "max_tokens": llm.max_tokens, "response_format": fmt}
                          for i, rec in enumerate(load_records(src))]  # fmt: skip
                builder.close()
                bare.append(bare_client(url, bodies, c))
                sdk.append(sdk_client(url, bodies, c))
                write_input(src, n, tag=f"c{c}-{chunk}-{r}-")
                t = time.perf_counter()
                assert (
                    run_annotate(src, tmp / f"out-{c}-{chunk}-{r}.jsonl", opts, progress=False).written == n
                )
                annotator.append(n / (time.perf_counter() - t))
            # Re-run the last input into another file: every answer comes from the cache, no request is sent.
            before = requests_served(url)
            t = time.perf_counter()
            run_annotate(src, tmp / f"again-{c}-{chunk}.jsonl", opts, progress=False)
            warm = n / (time.perf_counter() - t)
            requests = requests_served(url) - before
            med = statistics.median
            pairs = med(a / b for a, b in zip(annotator, bare, strict=True))
            rows.append(f"| {c} | {chunk} | {n} | {allowed:.0f} | {med(bare):.1f} | {med(sdk):.1f} | {med(annotator):.1f} | "
                        f"{med(annotator) / allowed:.2f}, {max(annotator) / allowed:.2f} | {pairs:.2f} | "
                        f"{warm:,.0f} | {requests} |")  # fmt: skip
            print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait()
    return rows


def bench_engines(tmp: Path, n: int) -> list[str]:
    src = tmp / "length.jsonl"
    write_input(src, n)
    opts = AnnotateOptions(categories=LENGTH, chunk_size=500)
    results = []

    def timed(name: str, **kw) -> None:
        out = tmp / f"length-{len(results)}.jsonl"
        t = time.perf_counter()
        s = run_annotate(src, out, opts, progress=False, **kw)
        dt = time.perf_counter() - t
        assert s.written == n
        results.append((name, dt, out.read_bytes()))
        print(f"  {name}: {dt:.1f}s", flush=True)

    timed("local --num-proc 1 (baseline)", num_proc=1)
    timed("local --num-proc 2", num_proc=2)
    timed("ray, 2 workers, cold (starts Ray)", engine="ray", num_proc=2, shard_size=5000)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    timed("ray, 2 workers, warm (Ray already up)", engine="ray", num_proc=2, shard_size=5000)
    ray.shutdown()
    base = results[0][1]
    rows = ["| engine | seconds | records/s | speed vs baseline | output identical to baseline |",
            "|---|---:|---:|---:|:---:|"]  # fmt: skip
    for name, dt, data in results:
        rows.append(f"| {name} | {dt:.1f} | {n / dt:,.0f} | {base / dt:.2f}x | {data == results[0][2]} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,4,16,64,64@512",
                    help="concurrency levels; C@N sets --chunk-size N (default: the CLI's, llm_chunk_size(C))")  # fmt: skip
    ap.add_argument(
        "--waves", type=int, default=20, help="records per concurrency slot (run length ~ waves x latency)"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="measurements per LLM row (median and best reported)"
    )
    ap.add_argument("--records", type=int, default=40000, help="records for the engine comparison")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--skip-engines", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.waves, args.records, args.repeat = 4, 4000, 1
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}", flush=True)
        report = ["### LLM annotator vs concurrency (endpoint latency "
                  f"{args.latency * 1000:.0f} ms per request, one category)", ""]  # fmt: skip
        levels = [(int(c), int(n) if n else llm_chunk_size(int(c)))
                  for c, _, n in (x.partition("@") for x in args.levels.split(","))]  # fmt: skip
        report += bench_llm(tmp, args.latency, levels, args.waves, args.repeat)
        if not args.skip_engines:
            report += ["", f"### Length annotators on {args.records:,} records: Ray vs --num-proc", ""]
            report += bench_engines(tmp, args.records)
        report += ["", f"load average after: {os.getloadavg()[0]:.1f}"]
    print("\n" + "\n".join(report))


if __name__ == "__main__":
    main()
