"""How the embedding annotator's `domain` and `task` generalise to a source of prompts it was not trained on.

Data: the labelled development set `src/treasure/annotate/seeds/labelled.jsonl` (real prompts from six public
sources in `../shared/data`, a domain and a task each, labelled by reading them; seeds/DEV_SET.md). Leave one
source out: for each source S, the head is trained on the packaged seeds, the value descriptions and the labelled
prompts of every other source, and scored on S. A prediction is right when it is the label or one of the
alternatives the labeller wrote (`domain_also`, `task_also`).

Unspecified (domain only; the paper's task has no such value): the probability threshold is chosen without S, by
an inner leave-one-source-out over the other sources (the threshold with the best accuracy on their out-of-fold
predictions, where Unspecified is right only for prompts labelled Unspecified: the taxonomy's "no clear domain" is
a label like the others, not a free pass). The Unspecified rate is reported beside accuracy; an Unspecified answer to a prompt whose
label is not Unspecified counts as wrong.

The source reported last is MT-Bench (TRAIN_EXCLUDED_SOURCES): the packaged classifier never trains on it, so its
row is also the packaged classifier's accuracy on unseen prompts. Also printed: the threshold chosen on all
training sources (the packaged DEFAULT_MIN_SCORE) and the packaged annotator's records/s next to the encoder alone
(the named baseline: what the head, the lexical features and the Translation rule cost on top of MiniLM).

    .venv/bin/python bench/annotator_generalisation.py [--out bench/results/annotator_generalisation]
        [--threads 1] [--throughput-records 2000] [--skip-throughput] [--max-length 48]

Writes OUT.json (all numbers), OUT.md (the table) and OUT_confusion.png (held-out predictions, all folds).

`--max-length` sets the encoder's token budget (the packaged DEFAULT_MAX_LENGTH otherwise). Several values
(`--max-length 48 96 128`) run the whole measurement once per value and write OUT.json with one entry per value
and OUT.md with one table per value plus a summary (mean of sources, MT-Bench, records/s); no confusion plot:

    .venv/bin/python bench/annotator_generalisation.py --max-length 48 96 128 --throughput-records 1000 \
        --out bench/results/annotator_maxlen
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from treasure.annotate import embedding as emb  # noqa: E402
from treasure.taxonomy import paper_taxonomy  # noqa: E402

CATS = ("domain", "task")
LAST = "mt_bench"  # reported last; never in the packaged training data


def correct(pred: str, row: dict, cat: str) -> bool:
    return pred in (row[cat], *row.get(f"{cat}_also", ()))


def order_sources(rows: list[dict]) -> list[str]:
    sources = list(dict.fromkeys(r["source"] for r in rows))
    return [s for s in sources if s != LAST] + ([LAST] if LAST in sources else [])


MAX_LENGTH = emb.DEFAULT_MAX_LENGTH  # the encoder's token budget; main() sets it from --max-length


def annotator(train: list[dict], cats: tuple[str, ...], threads: int | None, min_score: float = 0.0):
    return emb.EmbeddingAnnotator(
        paper_taxonomy(), categories=cats, labelled=train, num_threads=threads, min_score=min_score,
        cache_dir="none", max_length=MAX_LENGTH,
    )  # fmt: skip


def predict(ann: emb.EmbeddingAnnotator, rows: list[dict]) -> list[dict[str, emb.Prediction]]:
    return ann.classify([r["prompt"] for r in rows], responses=[r.get("response") for r in rows])


def best_threshold(preds: list[emb.Prediction], rows: list[dict]) -> float:
    """The domain threshold with the highest accuracy on these predictions, Unspecified (below it) counted right
    only where the labeller accepted Unspecified; the lowest such threshold on ties."""
    best_t, best_right = 0.0, -1
    for t in np.round(np.arange(0.0, 0.91, 0.02), 2):
        right = sum(
            correct(emb.UNSPECIFIED if p.score < t else p.best, r, "domain")
            for p, r in zip(preds, rows, strict=True)
        )
        if right > best_right:
            best_t, best_right = float(t), right
    return best_t


def inner_threshold(train: list[dict], threads: int | None) -> float:
    """Leave-one-source-out over `train` alone: out-of-fold domain predictions, then best_threshold."""
    preds, rows = [], []
    for s in order_sources(train):
        fit = [r for r in train if r["source"] != s]
        test = [r for r in train if r["source"] == s]
        preds += [p["domain"] for p in predict(annotator(fit, ("domain",), threads), test)]
        rows += test
    return best_threshold(preds, rows)


def leave_one_source_out(rows: list[dict], threads: int | None) -> dict:
    results: dict = {"folds": {}, "pairs": {c: [] for c in CATS}}
    for s in order_sources(rows):
        t0 = time.perf_counter()
        train = [r for r in rows if r["source"] != s]
        test = [r for r in rows if r["source"] == s]
        threshold = inner_threshold(train, threads)
        ann = annotator(train, CATS, threads, min_score=threshold)
        preds = predict(ann, test)
        fold = {"n": len(test), "threshold": threshold, "train_prompts": len(train)}
        for cat in CATS:
            values = [p[cat].value for p in preds]
            fold[cat] = float(np.mean([correct(v, r, cat) for v, r in zip(values, test, strict=True)]))
            fold[f"{cat}_unspecified"] = float(np.mean([v == emb.UNSPECIFIED for v in values]))
            fold[f"{cat}_no_threshold"] = float(
                np.mean([correct(p[cat].best, r, cat) for p, r in zip(preds, test, strict=True)])
            )
            answered = [(v, r) for v, r in zip(values, test, strict=True) if v != emb.UNSPECIFIED]
            fold[f"{cat}_answered"] = (
                float(np.mean([correct(v, r, cat) for v, r in answered])) if answered else 0
            )
            results["pairs"][cat] += [
                (r[cat] if not correct(v, r, cat) else v, v) for v, r in zip(values, test, strict=True)
            ]
            fold[f"{cat}_errors"] = Counter(
                f"{r[cat]} -> {v}" for v, r in zip(values, test, strict=True) if not correct(v, r, cat)
            ).most_common(4)
        fold["seconds"] = round(time.perf_counter() - t0, 1)
        results["folds"][s] = fold
        print(f"  held out {s:20s} n={fold['n']:3d} domain {fold['domain']:.3f} (Unspecified "
              f"{fold['domain_unspecified']:.3f}, threshold {threshold:.2f}) task {fold['task']:.3f} "
              f"[{fold['seconds']}s]", flush=True)  # fmt: skip
    return results


def confusion_png(pairs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tax = paper_taxonomy()
    fig, axes = plt.subplots(1, 2, figsize=(17, 7.5))
    for ax, cat in zip(axes, CATS, strict=True):
        vals = list(tax[cat].values)
        m = np.zeros((len(vals), len(vals)), dtype=int)
        for gold, pred in pairs[cat]:
            m[vals.index(gold), vals.index(pred)] += 1
        ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for i in range(len(vals)):
            for j in range(len(vals)):
                if m[i, j]:
                    ax.text(j, i, m[i, j], ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.5 * max(m[i].sum(), 1) else "black")  # fmt: skip
        ax.set_xticks(range(len(vals)), vals, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(vals)), vals, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label (the prediction when it was an accepted alternative)")
        ax.set_title(f"{cat}: held-out predictions, all leave-one-source-out folds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(rows: list[dict], n: int, threads: int | None) -> dict:
    """records/s of the packaged annotator (classify_records on distinct prompts, in chunks of 512 like the
    pipeline) and of the encoder alone on the same texts."""
    base = [r for r in rows if r["source"] in ("oasst", "arena_hard", "ifeval", "language_confusion")]
    records = [{"messages": [{"role": "user", "content": f"{base[i % len(base)]['prompt']} ({i // len(base)})"}]}
               for i in range(n)]  # fmt: skip
    ann = emb.EmbeddingAnnotator(paper_taxonomy(), num_threads=threads, max_length=MAX_LENGTH)
    ann.classify(["warm up"])
    t0 = time.perf_counter()
    for b in range(0, n, 512):
        ann.classify_records(records[b : b + 512])
    full = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in range(0, n, 512):
        ann.encoder.encode([emb.request_text(r["messages"][0]["content"]) for r in records[b : b + 512]])
    enc = n / (time.perf_counter() - t0)
    return {"records": n, "annotator_records_per_s": round(full, 1), "encoder_only_records_per_s": round(enc, 1),
            "ratio": round(full / enc, 3), "threads": threads, "max_length": MAX_LENGTH}  # fmt: skip


def markdown(res: dict) -> str:
    lines = [
        "| held-out source | n | domain | Unspecified rate | domain on answered | domain, no threshold | task "
        "| threshold (chosen without it) | most frequent errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, f in res["folds"].items():
        errs = "; ".join(f"{e} ({k})" for e, k in (f["domain_errors"][:2] + f["task_errors"][:2]))
        lines.append(
            f"| {s} | {f['n']} | {f['domain']:.3f} | {f['domain_unspecified']:.3f} | {f['domain_answered']:.3f} | "
            f"{f['domain_no_threshold']:.3f} | {f['task']:.3f} | {f['threshold']:.2f} | {errs} |"
        )
    m = res["macro"]
    lines.append(
        f"| **mean of sources** | {res['n']} | {m['domain']:.3f} | {m['domain_unspecified']:.3f} | "
        f"{m['domain_answered']:.3f} | {m['domain_no_threshold']:.3f} | {m['task']:.3f} | | |"
    )
    return "\n".join(lines)


def measure(rows: list[dict], args: argparse.Namespace, threads: int | None) -> dict:
    """The leave-one-source-out folds, their means, the packaged threshold and the throughput at MAX_LENGTH."""
    res = leave_one_source_out(rows, threads)
    res["n"] = len(rows)
    res["max_length"] = MAX_LENGTH
    res["macro"] = {k: float(np.mean([f[k] for f in res["folds"].values()]))
                    for k in ("domain", "task", "domain_unspecified", "domain_answered", "domain_no_threshold")}  # fmt: skip
    shipped = [r for r in rows if r["source"] not in emb.TRAIN_EXCLUDED_SOURCES]
    res["packaged_threshold"] = inner_threshold(shipped, threads)
    print(f"threshold on all training sources (packaged DEFAULT_MIN_SCORE is {emb.DEFAULT_MIN_SCORE}): "
          f"{res['packaged_threshold']:.2f}")  # fmt: skip
    if not args.skip_throughput:
        res["throughput"] = throughput(rows, args.throughput_records, threads)
        t = res["throughput"]
        print(f"throughput: {t['annotator_records_per_s']} records/s (encoder alone {t['encoder_only_records_per_s']},"
              f" ratio {t['ratio']}), {t['records']} records, {threads} thread(s), max_length {MAX_LENGTH}")  # fmt: skip
    return res


def summary(runs: dict[int, dict]) -> str:
    """One line per max_length: mean of sources, MT-Bench (held out last) and records/s."""
    lines = [
        "| max_length | domain (mean of sources) | task (mean of sources) | domain, no threshold | "
        f"{LAST} domain / task | annotator records/s | encoder alone records/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for length, res in runs.items():
        m, last, t = res["macro"], res["folds"].get(LAST, {}), res.get("throughput", {})
        lines.append(
            f"| {length} | {m['domain']:.3f} | {m['task']:.3f} | {m['domain_no_threshold']:.3f} | "
            f"{last.get('domain', float('nan')):.3f} / {last.get('task', float('nan')):.3f} | "
            f"{t.get('annotator_records_per_s', '')} | {t.get('encoder_only_records_per_s', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global MAX_LENGTH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "annotator_generalisation")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's setting)")
    ap.add_argument("--throughput-records", type=int, default=2000)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--max-length", type=int, nargs="+", default=[emb.DEFAULT_MAX_LENGTH],
                    help="encoder tokens; several values: one run each, compared")  # fmt: skip
    args = ap.parse_args(argv)
    threads = args.threads or None
    rows = emb.read_labelled()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict] = {}
    pairs = None
    for length in args.max_length:
        MAX_LENGTH = length
        print(f"{len(rows)} labelled prompts from {len(order_sources(rows))} sources; leave one source out "
              f"(threads={threads}, max_length={length})", flush=True)  # fmt: skip
        res = measure(rows, args, threads)
        pairs = res.pop("pairs")
        runs[length] = res
        print(markdown(res))
        last = res["folds"].get(LAST)
        if last:
            print(f"\nheld out last: {LAST}, domain {last['domain']:.3f} (Unspecified "
                  f"{last['domain_unspecified']:.3f}), task {last['task']:.3f}", flush=True)  # fmt: skip
    if len(runs) == 1:
        (res,) = runs.values()
        confusion_png(pairs, args.out.with_name(args.out.name + "_confusion.png"))
        text = markdown(res)
    else:
        res = {"max_length": {str(k): v for k, v in runs.items()}}
        text = "\n\n".join([summary(runs)] + [f"max_length {k}:\n\n{markdown(v)}" for k, v in runs.items()])
        print("\n" + summary(runs))
    write_results(args.out, text, res)
    return 0


def write_results(out: Path, table: str, res: dict) -> None:
    """OUT.md (the table) and OUT.json (all numbers): what every leave-one-source-out bench writes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
