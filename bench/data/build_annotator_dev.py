"""Build the labelled development set of the embedding annotator from `../shared/data` (see DEV_SET.md).

Selection is by a fixed seed (SEED) per source; labels come from `annotator_dev_labels.tsv` (source, id, domain,
task, written by a person reading each prompt). Prints a line per source and writes
`src/treasure/annotate/seeds/labelled.jsonl`, the file the annotator trains on and the benchmarks read.

    .venv/bin/python bench/data/build_annotator_dev.py [--data ../shared/data] [--unlabelled OUT.jsonl]

`--unlabelled` writes the selected prompts without labels (for labelling a new selection).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LABELS = Path(__file__).with_name("annotator_dev_labels.tsv")
OUT = REPO / "src" / "treasure" / "annotate" / "seeds" / "labelled.jsonl"
SEED = 14
MAX_CHARS = 2000
N = {"arena_hard": 60, "ifeval": 50, "mt_bench": 80, "oasst": 60, "humanevalpack": 20}
# Okapi is left out: its instruction data is CC-BY-NC-4.0 upstream, which an Apache-2.0 package cannot ship.
LC_PER_FILE = {"native": 3, "aya": 2, "dolly": 2, "okapi": 0}
# A second draw (its own seed, from the rows the first left), labelled later: the first selection is unchanged.
N_EXTRA = {"arena_hard": 60, "ifeval": 40, "oasst": 60}
LC_EXTRA_PER_FILE = {"native": 3, "aya": 3, "dolly": 3, "okapi": 0}
LC_LANG = {"ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
           "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "pt": "Portuguese",
           "ru": "Russian", "tr": "Turkish", "vi": "Vietnamese", "zh": "Chinese"}  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pick(rows: list, n: int, name: str, extra: int = 0) -> list:
    """n rows drawn by the seed of `name`, then `extra` more drawn by a second seed from the rows left."""
    first = random.Random(f"{SEED}:{name}").sample(range(len(rows)), min(n, len(rows)))
    rest = sorted(set(range(len(rows))) - set(first))
    second = random.Random(f"{SEED}:{name}:2").sample(rest, min(extra, len(rest)))
    return [rows[i] for i in first + second]


def select(data: Path) -> list[dict]:
    """The selected prompts, without labels: {source, id, prompt, [context], [response], [language]}."""
    out: list[dict] = []
    for r in _pick(
        _jsonl(data / "prompts" / "arena_hard_v0.1_question.jsonl"),
        N["arena_hard"],
        "arena_hard",
        N_EXTRA["arena_hard"],
    ):
        out.append({"source": "arena_hard", "id": r["uid"], "prompt": r["prompt"]})
    for r in _pick(
        _jsonl(data / "prompts" / "ifeval_input_data.jsonl"), N["ifeval"], "ifeval", N_EXTRA["ifeval"]
    ):
        out.append({"source": "ifeval", "id": str(r["key"]), "prompt": r["prompt"]})
    for r in _pick(_jsonl(data / "prompts" / "mt_bench_question.jsonl"), N["mt_bench"], "mt_bench"):
        out.append({"source": "mt_bench", "id": str(r["question_id"]), "prompt": r["turns"][0]})
    msgs = _jsonl(data / "conversations" / "oasst1_en_validation.jsonl")
    best = {}  # root message id -> its best-ranked assistant reply
    for m in msgs:
        if m["role"] == "assistant" and m.get("rank") == 0:
            best[m["parent_id"]] = m["text"]
    roots = [m for m in msgs if m["role"] == "prompter" and m["parent_id"] is None]
    for m in _pick(roots, N["oasst"], "oasst", N_EXTRA["oasst"]):
        row = {"source": "oasst", "id": m["message_id"], "prompt": m["text"]}
        if m["message_id"] in best:
            row["response"] = best[m["message_id"]]
        out.append(row)
    # HumanEvalPack's three task formats (octopack's HumanEvalSynthesize / Fix / Explain prompts) per task.
    for r in _pick(_jsonl(data / "code" / "humanevalpack_python.jsonl"), N["humanevalpack"], "humanevalpack"):
        tid = r["task_id"]
        out.append(
            {
                "source": "humanevalpack",
                "id": f"{tid}/synthesize",
                "prompt": r["instruction"],
                "response": r["declaration"] + r["canonical_solution"],
            }
        )
        out.append(
            {
                "source": "humanevalpack",
                "id": f"{tid}/fix",
                "prompt": f"{r['declaration']}{r['buggy_solution']}\n{r['test']}\n"
                f"Fix bugs in {r['entry_point']}.",
            }
        )
        out.append({"source": "humanevalpack", "id": f"{tid}/explain",
                    "prompt": f"{r['declaration']}{r['canonical_solution']}\n"
                              "Provide a concise natural language description of the code using at most "
                              f"{len(r['docstring'])} characters."})  # fmt: skip
    lc = data / "multilingual" / "language_confusion" / "monolingual"
    for path in sorted(lc.glob("*/*.csv")):
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(enumerate(csv.DictReader(fh)))
        name = f"{path.parent.name}/{path.stem}"
        for i, r in _pick(
            rows,
            LC_PER_FILE[path.parent.name],
            f"language_confusion:{name}",
            LC_EXTRA_PER_FILE[path.parent.name],
        ):
            out.append(
                {
                    "source": "language_confusion",
                    "id": f"{name}/{i}",
                    "prompt": r["prompt"],
                    "language": LC_LANG[path.stem],
                }
            )
    for row in out:
        for key in ("prompt", "response"):
            if key in row:
                row[key] = row[key][:MAX_CHARS]
    return out


def read_labels(path: Path = LABELS) -> dict[tuple[str, str], tuple[str, str]]:
    """(source, id) -> (domain, task), each "Label" or "Label|also acceptable|..."."""
    labels = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip() or line.startswith("#"):
                continue
            source, rid, domain, task = line.rstrip("\n").split("\t")
            labels[(source, rid)] = (domain, task)
    return labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--unlabelled", type=Path)
    args = ap.parse_args(argv)
    rows = select(args.data)
    if args.unlabelled:
        args.unlabelled.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        print(f"{len(rows)} prompts -> {args.unlabelled}")
        return 0
    sys.path.insert(0, str(REPO / "src"))
    from treasure.taxonomy import paper_taxonomy

    tax = paper_taxonomy()
    labels = read_labels()
    missing = [(r["source"], r["id"]) for r in rows if (r["source"], r["id"]) not in labels]
    if missing:
        print(f"{len(missing)} selected prompts have no label, e.g. {missing[:3]}", file=sys.stderr)
        return 1
    lines = []
    for r in rows:
        rec = {"source": r["source"], "id": r["id"]}
        for cat, field in zip(("domain", "task"), labels[(r["source"], r["id"])], strict=True):
            first, *also = field.split("|")
            bad = [v for v in (first, *also) if v not in tax[cat].values]
            if bad:
                print(f"{r['source']} {r['id']}: {cat}: unknown value {bad[0]!r}", file=sys.stderr)
                return 1
            rec[cat] = first
            if also:
                rec[f"{cat}_also"] = also
        rec.update({k: r[k] for k in ("language", "prompt", "response") if k in r})
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    OUT.write_text("".join(lines), encoding="utf-8")
    for s in dict.fromkeys(r["source"] for r in rows):
        print(f"{s}: {sum(r['source'] == s for r in rows)}")
    print(f"{len(rows)} labelled prompts -> {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
