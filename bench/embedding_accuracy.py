"""Accuracy and speed of the embedding annotator (`treasure.annotate.embedding`) for `domain` and `task`.

Accuracy is measured on MT-Bench (80 questions, first turn), a held-out test set: no seed example was written from
it and no setting was chosen on it. MT-Bench has 8 categories, not our labels, so each category is mapped to the
set of our values that count as correct (MAPPING below, fixed before looking at predictions). Categories whose
subject varies question by question (writing, reasoning, extraction) are not scored for `domain`. Also reported:
MT-Bench second turns (domain only), and the tuning set DEV (80 hand-labelled OpenAssistant / Arena-Hard prompts)
on which the settings were chosen.

`--compare` also scores other classifiers on the same embeddings, by 10-fold cross-validation on the seed examples
(3 shuffles) and on MT-Bench (argmax, without the Unspecified threshold): the method was chosen on the
cross-validation numbers.

Throughput: 10,000 records built by cycling the OpenAssistant and Arena-Hard prompts (mixed lengths: one-line
questions to pasted code), annotated in chunks of 512 as the pipeline does, after the model and seeds are loaded.
A chunk of 512 consecutive records holds no repeated prompt, so the de-duplication of identical prompts does not
flatter the number. `--procs N` runs N worker processes of one torch thread each (the pipeline's num_proc).

    .venv/bin/python bench/embedding_accuracy.py [--compare] [--skip-throughput] [--threads 0] [--procs 1]
        [--max-length 48] [--batch-size 32] [--dtype auto] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from treasure.annotate import embedding as emb  # noqa: E402
from treasure.taxonomy import paper_taxonomy  # noqa: E402

# MT-Bench category -> (allowed domain values or None: not scored, allowed task values)
MAPPING: dict[str, tuple[set[str] | None, set[str]]] = {
    "writing": (None, {"CreativeWriting", "Rewrite"}),
    "roleplay": ({"Conversation"}, {"OpenEnded", "CreativeWriting"}),
    "reasoning": (None, {"Reasoning"}),
    "math": ({"Math"}, {"Reasoning"}),
    "coding": ({"Code"}, {"CodeGeneration", "CodeFix", "CodeExplanation", "CodeTranslation"}),
    "extraction": (None, {"InformationExtraction", "Classification"}),
    "stem": ({"Sciences", "Technology", "Medical"}, {"Explanation", "QuestionAnswering"}),
    "humanities": ({"SocialSciences", "Culture", "Legal", "Finance"}, {"Explanation", "OpenEnded", "QuestionAnswering"}),
}  # fmt: skip
CATS = ("domain", "task")

# The tuning set: 40 OpenAssistant and 40 Arena-Hard prompts (a random sample, seed 7) labelled by the author of the
# seeds with every value that fits: (source, index in its file, allowed domains, allowed tasks). Settings (scoring,
# max_length, the Unspecified threshold) were chosen on it and on cross-validation of the seeds, never on MT-Bench.
DEV: list[tuple[str, int, str, str]] = [
    ("oasst", 41, "Culture,Unspecified", "CreativeWriting,OpenEnded"),
    ("oasst", 19, "Culture", "OpenEnded"),
    ("oasst", 50, "Technology,Code", "QuestionAnswering,Explanation,CodeGeneration"),
    ("oasst", 83, "Code", "CodeGeneration"),
    ("oasst", 6, "SocialSciences,Sciences", "QuestionAnswering"),
    ("oasst", 9, "SocialSciences", "QuestionAnswering,Explanation,OpenEnded"),
    ("oasst", 68, "Technology", "Explanation"),
    ("oasst", 12, "Culture", "OpenEnded,QuestionAnswering"),
    ("oasst", 46, "Culture", "CreativeWriting"),
    ("oasst", 74, "Medical", "OpenEnded,Explanation,QuestionAnswering"),
    ("oasst", 7, "Technology,Finance", "OpenEnded"),
    ("oasst", 64, "Code", "CodeGeneration,Explanation,QuestionAnswering"),
    ("oasst", 27, "Unspecified,Culture,Conversation", "QuestionAnswering,Reasoning"),
    ("oasst", 4, "Code,Technology", "OpenEnded,QuestionAnswering"),
    ("oasst", 11, "Technology", "OpenEnded,QuestionAnswering"),
    ("oasst", 55, "Finance,Medical,SocialSciences,Unspecified", "CreativeWriting,OpenEnded"),
    ("oasst", 53, "Code", "CodeGeneration,Explanation,QuestionAnswering"),
    ("oasst", 8, "Code", "Explanation,CodeExplanation,CodeGeneration"),
    ("oasst", 30, "Culture", "CreativeWriting"),
    ("oasst", 85, "Technology,SocialSciences", "OpenEnded"),
    ("oasst", 70, "Finance", "Explanation,OpenEnded"),
    ("oasst", 54, "Sciences,Unspecified", "Rewrite"),
    ("oasst", 89, "Code", "CodeGeneration"),
    ("oasst", 72, "Code", "Explanation"),
    ("oasst", 15, "Culture", "OpenEnded"),
    ("oasst", 28, "SocialSciences,Medical", "OpenEnded,Explanation"),
    ("oasst", 77, "Culture", "Explanation,OpenEnded,QuestionAnswering"),
    ("oasst", 97, "Conversation", "OpenEnded"),
    ("oasst", 95, "Technology", "CreativeWriting"),
    ("oasst", 90, "Code", "OpenEnded"),
    ("oasst", 5, "Culture", "CreativeWriting,Explanation"),
    ("oasst", 17, "Technology,Code,SocialSciences", "Explanation,OpenEnded"),
    ("oasst", 37, "Conversation,SocialSciences", "OpenEnded"),
    ("oasst", 96, "Technology,Conversation,Unspecified", "CreativeWriting"),
    ("oasst", 18, "Culture,SocialSciences", "Explanation"),
    ("oasst", 75, "SocialSciences", "Explanation,CreativeWriting"),
    ("oasst", 39, "Technology", "Explanation"),
    ("oasst", 35, "Culture", "OpenEnded"),
    ("oasst", 52, "Code", "CodeGeneration"),
    ("oasst", 43, "Culture,Sciences", "QuestionAnswering"),
    ("arena", 92, "Sciences,SocialSciences", "OpenEnded"),
    ("arena", 52, "Code", "CodeGeneration"),
    ("arena", 297, "Code", "CodeGeneration,QuestionAnswering,Explanation"),
    ("arena", 292, "Technology,Code", "Explanation,QuestionAnswering,CodeGeneration"),
    ("arena", 327, "Finance", "CreativeWriting,OpenEnded"),
    ("arena", 96, "Code", "CodeGeneration"),
    ("arena", 190, "Code", "CodeGeneration,CodeExplanation,CodeFix"),
    ("arena", 49, "Code", "CodeGeneration"),
    ("arena", 280, "Code", "Explanation,CodeExplanation"),
    ("arena", 364, "Code", "CodeGeneration"),
    ("arena", 32, "Technology", "OpenEnded,Explanation"),
    ("arena", 288, "Technology,Code", "CodeGeneration"),
    ("arena", 30, "Code", "CodeFix"),
    ("arena", 316, "Technology,Code", "Explanation,CodeGeneration,QuestionAnswering"),
    ("arena", 105, "Code", "CodeGeneration"),
    ("arena", 254, "Technology,Sciences", "Explanation"),
    ("arena", 348, "Code", "CodeGeneration"),
    ("arena", 272, "SocialSciences", "OpenEnded"),
    ("arena", 218, "Medical,Math", "OpenEnded,Explanation,Reasoning"),
    ("arena", 397, "Code,Technology", "Explanation,CodeGeneration"),
    ("arena", 160, "Code", "CodeGeneration"),
    ("arena", 238, "Technology", "Explanation,OpenEnded"),
    ("arena", 299, "Code", "CodeGeneration"),
    ("arena", 472, "Math", "Reasoning,Explanation,QuestionAnswering"),
    ("arena", 232, "Code,Technology", "CodeGeneration,QuestionAnswering"),
    ("arena", 185, "Technology,Finance", "CreativeWriting,OpenEnded"),
    ("arena", 153, "Code", "CodeGeneration"),
    ("arena", 127, "Code", "CodeFix,CodeGeneration,Rewrite"),
    ("arena", 406, "Code", "CodeGeneration"),
    ("arena", 357, "Code", "CodeGeneration,Explanation,QuestionAnswering"),
    ("arena", 399, "SocialSciences,Technology,Unspecified,Finance", "OpenEnded,CreativeWriting"),
    ("arena", 124, "Code", "CodeGeneration"),
    ("arena", 41, "Finance,SocialSciences,Technology", "OpenEnded,Explanation"),
    ("arena", 294, "Technology,Code", "Explanation,QuestionAnswering,CodeGeneration"),
    ("arena", 268, "Code", "CodeGeneration"),
    ("arena", 253, "Code", "CodeGeneration"),
    ("arena", 448, "Code", "CodeGeneration"),
    ("arena", 175, "Code,Math", "CodeGeneration"),
    ("arena", 373, "Technology,Medical", "Explanation,OpenEnded"),
    ("arena", 229, "Technology", "Explanation,QuestionAnswering"),
]  # fmt: skip


def load_mt_bench(data: Path) -> list[dict]:
    with open(data / "prompts" / "mt_bench_question.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def mt_bench_accuracy(preds: list[str], questions: list[dict], cat: str) -> tuple[float, int, dict[str, str]]:
    """(accuracy over scored questions, number scored, per MT-Bench category "right/scored")."""
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p, q in zip(preds, questions, strict=True):
        allowed = MAPPING[q["category"]][CATS.index(cat)]
        if allowed is None:
            continue
        per[q["category"]][1] += 1
        per[q["category"]][0] += p in allowed
    right, n = sum(a for a, _ in per.values()), sum(b for _, b in per.values())
    return right / n, n, {k: f"{a}/{b}" for k, (a, b) in per.items()}


def dev_set(data: Path) -> list[tuple[str, set[str], set[str]]]:
    """(prompt, allowed domains, allowed tasks) of the tuning set."""
    with open(data / "conversations" / "oasst_en_100_tree.jsonl", encoding="utf-8") as fh:
        src = {"oasst": [json.loads(x)["prompt"]["text"] for x in fh]}
    with open(data / "prompts" / "arena_hard_v0.1_question.jsonl", encoding="utf-8") as fh:
        src["arena"] = [json.loads(x)["prompt"] for x in fh]
    return [(src[s][i], set(d.split(",")), set(t.split(","))) for s, i, d, t in DEV]


def throughput_texts(data: Path, n: int) -> list[str]:
    """`n` prompts cycling the 600 distinct OpenAssistant (100) and Arena-Hard (500) prompts, one OpenAssistant
    prompt after every five Arena-Hard ones. The cycle is longer than a chunk, so no chunk repeats a prompt."""
    with open(data / "conversations" / "oasst_en_100_tree.jsonl", encoding="utf-8") as fh:
        oasst = [json.loads(x)["prompt"]["text"] for x in fh]
    with open(data / "prompts" / "arena_hard_v0.1_question.jsonl", encoding="utf-8") as fh:
        arena = [json.loads(x)["prompt"] for x in fh]
    per = len(arena) // len(oasst)
    pool = [t for k in range(len(oasst)) for t in (oasst[k], *arena[k * per : (k + 1) * per])]
    pool += arena[len(oasst) * per :]
    assert len(set(pool)) == len(pool)
    return [pool[i % len(pool)] for i in range(n)]


# ----------------------------------------------------------------------------------- method comparison


class Examples:
    """A category's example vectors (seeds then descriptions) from the annotator, for re-fitting on subsets."""

    def __init__(self, ann: emb.EmbeddingAnnotator, cat: str):
        texts, values, weights, _ = ann._examples(cat)  # the bench may look inside; users need not
        is_desc = [w == emb.DESCRIPTION_WEIGHT and t in ann.taxonomy[cat].value_descriptions.values()
                   for t, w in zip(texts, weights, strict=True)]  # fmt: skip
        full, head = ann._seed_vectors(sorted(set(texts)))
        row = {t: i for i, t in enumerate(sorted(set(texts)))}
        rows = [row[t] for t in texts]
        self.values = ann.taxonomy[cat].values
        self.full, self.head = full[rows], head[rows]
        self.labels = np.array([self.values.index(v) for v in values])
        self.is_desc = np.array(is_desc)
        self.cat = cat


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


# The annotator's scorer before the logistic head (issue 14), kept here for `--compare`: per value, the mean of
# the top-m cosines to its centred examples mixed with the cosine to its centroid; for task also on the head view.
PROTO_TOP_M, PROTO_CENTROID_WEIGHT, PROTO_DESCRIPTION_WEIGHT = 3, 0.5, 2.0
PROTO_HEAD_WEIGHT = {"task": 0.5}


@dataclass
class _View:
    """One embedding view of one category: centred examples and centroids."""

    center: np.ndarray  # (d,)
    examples: np.ndarray  # (n, d) unit rows
    centroids: np.ndarray  # (k, d) unit rows; zero rows for values without examples

    @classmethod
    def build(cls, vecs: np.ndarray, labels: np.ndarray, is_desc: np.ndarray, k: int) -> _View:
        center = vecs.mean(0)
        examples = _unit(vecs - center)
        centroids = np.zeros((k, vecs.shape[1]), dtype=np.float32)
        for j in range(k):
            sel = labels == j
            if sel.any():
                weights = np.where(is_desc[sel], PROTO_DESCRIPTION_WEIGHT, 1.0)[:, None]
                centroids[j] = _unit((examples[sel] * weights).sum(0))
        return cls(center, examples, centroids)

    def scores(self, queries: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
        q = _unit(queries - self.center)
        sims = q @ self.examples.T
        out = np.full((len(q), k), -np.inf, dtype=np.float32)
        for j in range(k):
            s = sims[:, labels == j]
            if s.shape[1] == 0:
                continue
            m = min(PROTO_TOP_M, s.shape[1])
            top = np.partition(s, s.shape[1] - m, axis=1)[:, -m:].mean(1)
            out[:, j] = (1 - PROTO_CENTROID_WEIGHT) * top + PROTO_CENTROID_WEIGHT * (q @ self.centroids[j])
        return out


def score_ours(ex: Examples, tr: np.ndarray, qf: np.ndarray, qh: np.ndarray) -> np.ndarray:
    k, lab, desc = len(ex.values), ex.labels[tr], ex.is_desc[tr]
    s = _View.build(ex.full[tr], lab, desc, k).scores(qf, lab, k)
    hw = PROTO_HEAD_WEIGHT.get(ex.cat, 0.0)
    if hw:
        s = (1 - hw) * s + hw * _View.build(ex.head[tr], lab, desc, k).scores(qh, lab, k)
    return s


def score_centroid(ex: Examples, tr: np.ndarray, qf: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """Plain nearest centroid (no centring, descriptions weighted like seeds)."""
    c = np.stack([_unit(ex.full[tr][ex.labels[tr] == j].sum(0)) for j in range(len(ex.values))])
    return qf @ c.T


def score_knn(ex: Examples, tr: np.ndarray, qf: np.ndarray, qh: np.ndarray, k: int = 7) -> np.ndarray:
    sims = qf @ ex.full[tr].T
    out = np.zeros((len(qf), len(ex.values)))
    for i in range(len(qf)):
        for t in np.argsort(-sims[i])[:k]:
            out[i, ex.labels[tr][t]] += sims[i, t]
    return out


def score_logreg(ex: Examples, tr: np.ndarray, qf: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """Softmax regression in numpy (L2, gradient descent)."""
    x, y, k = ex.full[tr] * 10, ex.labels[tr], len(ex.values)
    w, b, onehot = np.zeros((x.shape[1], k)), np.zeros(k), np.eye(k)[y]
    for _ in range(500):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= 0.5 * (x.T @ g + w / len(x))
        b -= 0.5 * g.sum(0)
    return (qf * 10) @ w + b


def score_sklearn(ex: Examples, tr: np.ndarray, qf: np.ndarray, qh: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=10.0, max_iter=3000).fit(ex.full[tr], ex.labels[tr])
    out = np.full((len(qf), len(ex.values)), -np.inf)
    out[:, m.classes_] = m.predict_proba(qf)
    return out


METHODS = {
    "ours (top-3 + centroid, centred; head view for task)": score_ours,
    "nearest centroid": score_centroid,
    "kNN (k=7, similarity-weighted)": score_knn,
    "logistic regression (numpy)": score_logreg,
    "logistic regression (scikit-learn, C=10)": score_sklearn,
}


def compare(ann: emb.EmbeddingAnnotator, questions: list[dict]) -> None:
    qf, qh = ann.encoder.encode([q["turns"][0] for q in questions])
    print("\n## Method comparison (same embeddings)\n")
    print("| method | domain CV | task CV | domain MT-Bench | task MT-Bench |")
    print("|---|---|---|---|---|")
    exs = {cat: Examples(ann, cat) for cat in CATS}
    for name, fn in METHODS.items():
        cells = []
        for cat in CATS:
            ex = exs[cat]
            seed_rows = np.flatnonzero(~ex.is_desc)
            accs = []
            for rep in range(3):
                perm = np.random.default_rng(rep).permutation(seed_rows)
                right = 0
                for fold in np.array_split(perm, 10):
                    tr = np.setdiff1d(np.arange(len(ex.labels)), fold)  # descriptions always train
                    s = fn(ex, tr, ex.full[fold], ex.head[fold])
                    right += int((s.argmax(1) == ex.labels[fold]).sum())
                accs.append(right / len(seed_rows))
            cells.append(f"{np.mean(accs):.3f}")
        for cat in CATS:
            ex = exs[cat]
            s = fn(ex, np.arange(len(ex.labels)), qf, qh)
            acc, _, _ = mt_bench_accuracy([ex.values[j] for j in s.argmax(1)], questions, cat)
            cells.append(f"{acc:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


# ----------------------------------------------------------------------------------- throughput

_WORKER: dict[str, emb.EmbeddingAnnotator] = {}


def _init_worker(kwargs: dict, barrier: Any) -> None:
    _WORKER["ann"] = emb.EmbeddingAnnotator(paper_taxonomy(), **kwargs)
    _WORKER["ann"].annotate(_records(["warm-up"]))
    barrier.wait()  # the clock starts when every worker has loaded


def _work(chunk: list[dict]) -> int:
    return len(_WORKER["ann"].annotate(chunk))


def _records(texts: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}], "markers": {}}
            for t in texts]  # fmt: skip


def throughput(ann: emb.EmbeddingAnnotator, kwargs: dict, texts: list[str], chunk: int, procs: int) -> str:
    records = _records(texts)
    chunks = [records[i : i + chunk] for i in range(0, len(records), chunk)]
    if any(len({r["messages"][0]["content"] for r in c}) < len(c) for c in chunks):
        raise SystemExit("a chunk repeats a prompt: de-duplication would flatter the throughput")
    load_before = os.getloadavg()[0]
    if procs <= 1:
        ann.annotate(records[:64])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for c in chunks:
            ann.annotate(c)
        wall, cpu = time.perf_counter() - t0, f"{time.process_time() - c0:.1f} s"
    else:  # the pipeline's num_proc: worker processes with one torch thread each
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(procs + 1)
        with ctx.Pool(procs, _init_worker, ({**kwargs, "num_threads": 1}, barrier)) as pool:
            barrier.wait()
            t0 = time.perf_counter()
            assert sum(pool.map(_work, chunks, chunksize=1)) == len(records)
            wall, cpu = time.perf_counter() - t0, "n/a"
    return (
        f"{len(records):,} records in {wall:.1f} s: **{len(records) / wall:.0f} records/s** "
        f"(process CPU time {cpu}; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)"
    )


# ----------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument(
        "--chunk", type=int, default=512, help="records per annotate() call (the pipeline's chunk)"
    )
    ap.add_argument("--batch-size", type=int, default=emb.DEFAULT_BATCH_SIZE)
    ap.add_argument("--max-length", type=int, default=emb.DEFAULT_MAX_LENGTH)
    ap.add_argument("--threads", type=int, default=emb.DEFAULT_NUM_THREADS or 0,
                    help="torch threads while encoding (default 0: torch's choice)")  # fmt: skip
    ap.add_argument("--procs", type=int, default=1, help="throughput with N worker processes of 1 thread")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--compare", action="store_true", help="also compare classification methods")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--show-errors", action="store_true", help="list the MT-Bench questions scored wrong")
    args = ap.parse_args()

    import torch

    kwargs = {"batch_size": args.batch_size, "max_length": args.max_length, "dtype": args.dtype}
    threads = args.threads or None
    t0 = time.perf_counter()
    ann = emb.EmbeddingAnnotator(paper_taxonomy(), num_threads=threads, cache_dir="none", **kwargs)
    load_s = time.perf_counter() - t0
    print("# Embedding annotator benchmark\n")
    print(f"- command: `{' '.join(['.venv/bin/python', *sys.argv])}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{threads or torch.get_num_threads()} torch threads while encoding, {args.procs} process(es)")  # fmt: skip
    print(f"- settings: max_length={args.max_length}, batch_size={args.batch_size}, "
          f"dtype={ann.encoder.dtype}, seeds={len(ann.seeds)}, min_score={ann.min_score}")  # fmt: skip
    print(f"- load (model + seed vectors, no disk cache): {load_s:.1f} s")

    if not args.skip_accuracy:
        accuracy(ann, args)
    if args.compare:
        compare(ann, load_mt_bench(args.data))
    if not args.skip_throughput:
        print("\n## Throughput\n")
        texts = throughput_texts(args.data, args.records)
        print(throughput(ann, kwargs, texts, args.chunk, args.procs))


def accuracy(ann: emb.EmbeddingAnnotator, args: argparse.Namespace) -> None:
    questions = load_mt_bench(args.data)
    preds = ann.classify([q["turns"][0] for q in questions])
    print("\n## MT-Bench, first turn (test set)\n")
    print("| category | n | domain | task | predicted domain | predicted task |")
    print("|---|---|---|---|---|---|")
    per_cat = {cat: mt_bench_accuracy([p[cat].value for p in preds], questions, cat) for cat in CATS}
    for c in MAPPING:
        idx = [i for i, q in enumerate(questions) if q["category"] == c]
        dom = per_cat["domain"][2].get(c, "not scored")
        dist = {cat: Counter(preds[i][cat].value for i in idx).most_common() for cat in CATS}
        fmt = {cat: ", ".join(f"{v} {n}" for v, n in dist[cat]) for cat in CATS}
        print(f"| {c} | {len(idx)} | {dom} | {per_cat['task'][2][c]} | {fmt['domain']} | {fmt['task']} |")
    print()
    for cat in CATS:
        acc, n, _ = per_cat[cat]
        print(f"**{cat}: {acc:.3f}** ({round(acc * n)}/{n} scored questions)  ")
    low = sum(p["domain"].value != p["domain"].best for p in preds)
    print(f"Domain answered Unspecified for low confidence: {low} of {len(preds)}.")

    # Second turns: the domain of a follow-up comes from the conversation (context_text), not the last turn alone.
    convs = [{"messages": [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": "..."},
                           {"role": "user", "content": q["turns"][1]}, {"role": "assistant", "content": "..."}]}
             for q in questions]  # fmt: skip
    second = ann.classify_records(convs)
    last_only = ann.classify([q["turns"][1] for q in questions])
    a2, n2, _ = mt_bench_accuracy([p["domain"].value for p in second], questions, "domain")
    a1, _, _ = mt_bench_accuracy([p["domain"].value for p in last_only], questions, "domain")
    print(f"\nMT-Bench second turns, domain ({n2} scored): {a2:.3f} reading the first and last user turns "
          f"(the annotator), {a1:.3f} reading the last turn alone.")  # fmt: skip

    dev = dev_set(args.data)
    dp = ann.classify([t for t, _, _ in dev])
    dd = np.mean([p["domain"].value in d for p, (_, d, _) in zip(dp, dev, strict=True)])
    dt = np.mean([p["task"].value in t for p, (_, _, t) in zip(dp, dev, strict=True)])
    print(
        f"\nTuning set (80 hand-labelled OpenAssistant / Arena-Hard prompts): domain {dd:.3f}, task {dt:.3f}."
    )
    if args.show_errors:
        print("\n## MT-Bench errors\n")
        for q, p in zip(questions, preds, strict=True):
            for cat in CATS:
                allowed = MAPPING[q["category"]][CATS.index(cat)]
                if allowed is not None and p[cat].value not in allowed:
                    print(f"- {q['question_id']} {q['category']} {cat}={p[cat].value} ({p[cat].score:.2f}, "
                          f"runner-up {p[cat].runner_up}): {q['turns'][0][:100]!r}")  # fmt: skip


if __name__ == "__main__":
    main()
