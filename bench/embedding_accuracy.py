"""Accuracy and speed of the embedding annotator (`treasure.annotate.embedding`) for `domain` and `task`.

Accuracy is measured on MT-Bench (80 questions, first turn), a held-out test: no seed example was written from
it. MT-Bench has 8 categories, not our labels, so each category is mapped to the set of our values that count as
correct (MAPPING below, decided before looking at predictions). Categories whose subject varies question by
question (writing, reasoning, extraction) are not scored for `domain`.

`--compare` also scores other classifiers on the same embeddings, by 10-fold cross-validation on the seed examples
(3 shuffles) and on MT-Bench: the choice of method was made on the cross-validation numbers.

Throughput: 10,000 records built by cycling the OpenAssistant and Arena-Hard prompts (mixed lengths: chat
questions to pasted code), annotated in chunks of 512 as the pipeline does. A chunk of 512 consecutive records
holds no repeated prompt, so the de-duplication of identical prompts does not flatter the number.

    .venv/bin/python bench/embedding_accuracy.py [--compare] [--threads 2] [--max-length 128] [--dtype auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

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


def throughput_texts(data: Path, n: int) -> list[str]:
    with open(data / "conversations" / "oasst_en_100_tree.jsonl", encoding="utf-8") as fh:
        oasst = [json.loads(x)["prompt"]["text"] for x in fh]
    with open(data / "prompts" / "arena_hard_v0.1_question.jsonl", encoding="utf-8") as fh:
        arena = [json.loads(x)["prompt"] for x in fh]
    pool = [t for pair in zip(arena, oasst * 5, strict=False) for t in pair] + arena[len(oasst) * 5 :]
    return [pool[i % len(pool)] for i in range(n)]


# ----------------------------------------------------------------------------------- method comparison


class Examples:
    """A category's example vectors (seeds then descriptions) from the annotator, for re-fitting on subsets."""

    def __init__(self, ann: emb.EmbeddingAnnotator, cat: str):
        texts, values, is_desc = ann._example_texts(cat)  # the bench may look inside; users need not
        full, head = ann._seed_vectors(sorted(set(texts)))
        row = {t: i for i, t in enumerate(sorted(set(texts)))}
        rows = [row[t] for t in texts]
        self.values = ann.taxonomy[cat].values
        self.full, self.head = full[rows], head[rows]
        self.labels = np.array([self.values.index(v) for v in values])
        self.is_desc = np.array(is_desc)
        self.cat = cat


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def score_ours(ex: Examples, tr: np.ndarray, qf: np.ndarray, qh: np.ndarray) -> np.ndarray:
    k, lab, desc = len(ex.values), ex.labels[tr], ex.is_desc[tr]
    s = emb._View.build(ex.full[tr], lab, desc, k).scores(qf, lab, k)
    hw = emb.HEAD_WEIGHT.get(ex.cat, 0.0)
    if hw:
        s = (1 - hw) * s + hw * emb._View.build(ex.head[tr], lab, desc, k).scores(qh, lab, k)
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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--compare", action="store_true", help="also compare classification methods")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--show-errors", action="store_true", help="list the MT-Bench questions scored wrong")
    args = ap.parse_args()

    import torch

    t0 = time.perf_counter()
    ann = emb.EmbeddingAnnotator(
        paper_taxonomy(), batch_size=args.batch_size, max_length=args.max_length,
        dtype=args.dtype, num_threads=args.threads, cache_dir="none",
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    print("# Embedding annotator benchmark\n")
    print(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")  # fmt: skip
    print(f"- settings: max_length={args.max_length}, batch_size={args.batch_size}, "
          f"dtype={ann.encoder.dtype}, seeds={len(ann.seeds)}")  # fmt: skip
    print(f"- load (model + seed vectors, no disk cache): {load_s:.1f} s")

    questions = load_mt_bench(args.data)
    preds = ann.classify([q["turns"][0] for q in questions])
    print("\n## MT-Bench, first turn\n")
    print("| category | n | domain | task | predicted domain | predicted task |")
    print("|---|---|---|---|---|---|")
    per_cat = {}
    for cat in CATS:
        per_cat[cat] = mt_bench_accuracy([p[cat].value for p in preds], questions, cat)
    for c in MAPPING:
        idx = [i for i, q in enumerate(questions) if q["category"] == c]
        dom = per_cat["domain"][2].get(c, "not scored")
        dist = {cat: Counter(preds[i][cat].value for i in idx).most_common() for cat in CATS}
        fmt = {cat: ", ".join(f"{v} {n}" for v, n in dist[cat]) for cat in CATS}
        print(f"| {c} | {len(idx)} | {dom} | {per_cat['task'][2][c]} | {fmt['domain']} | {fmt['task']} |")
    for cat in CATS:
        acc, n, _ = per_cat[cat]
        print(f"\n**{cat}: {acc:.3f}** ({round(acc * n)}/{n} scored questions)", end="")
    low = sum(p["domain"].value != p["domain"].best for p in preds)
    print(f"\n\nDomain answered Unspecified for low confidence: {low} of {len(preds)}.")
    if args.show_errors:
        print("\n## Errors\n")
        for q, p in zip(questions, preds, strict=True):
            for cat in CATS:
                allowed = MAPPING[q["category"]][CATS.index(cat)]
                if allowed is not None and p[cat].value not in allowed:
                    print(f"- {q['question_id']} {q['category']} {cat}={p[cat].value} ({p[cat].score:.2f}, "
                          f"runner-up {p[cat].runner_up}): {q['turns'][0][:100]!r}")  # fmt: skip

    if args.compare:
        compare(ann, questions)

    if not args.skip_throughput:
        texts = throughput_texts(args.data, args.records)
        records = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}],
                    "markers": {}} for t in texts]  # fmt: skip
        ann.annotate(records[:64])  # warm-up
        load_before = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(records), args.chunk):
            ann.annotate(records[i : i + args.chunk])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print("\n## Throughput\n")
        print(f"{len(records):,} records in {wall:.1f} s: **{len(records) / wall:.0f} records/s** "
              f"(process CPU time {cpu:.1f} s; 1-minute load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after)")  # fmt: skip


if __name__ == "__main__":
    main()
