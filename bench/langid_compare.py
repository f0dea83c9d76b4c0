"""Compare language-identification libraries on the Language Confusion prompts, to pick the one `treasure` uses.

Reads every ``prompt,source,language`` row of
``<data>/multilingual/language_confusion/monolingual/*/*.csv`` (``language`` is an ISO 639-1 code) and runs each
candidate on each prompt, single-threaded, one text at a time (the way an annotator sees records). Reports per
candidate: model load time, accuracy overall and per language, and throughput (texts/s). A prediction outside the
taxonomy's 23 languages counts as wrong.

Candidates: lingua-language-detector (all its languages; restricted to the 23; each also in low-accuracy mode),
py3langid (all its languages; restricted to the 23), langdetect (seeded, all its languages), and the rule
`treasure.annotate.language` builds on py3langid (all languages scored; the best taxonomy language is taken when
it is nearly as likely as an outside winner; otherwise none).

Usage::

    .venv/bin/python bench/langid_compare.py [--data /work/shared/data] [--out bench/RESULTS_langid.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

# The taxonomy's 23 languages by ISO 639-1 code (kept here so the bench runs without the package installed).
TAXONOMY = {
    "ar": "Arabic", "zh": "Chinese", "cs": "Czech", "nl": "Dutch", "en": "English", "fr": "French",
    "de": "German", "el": "Greek", "he": "Hebrew", "hi": "Hindi", "id": "Indonesian", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "fa": "Persian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "es": "Spanish", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
}  # fmt: skip

Detector = Callable[[str], "str | None"]  # text -> ISO 639-1 code or None


def load_prompts(data: Path) -> list[tuple[str, str]]:
    rows = []
    for path in sorted((data / "multilingual" / "language_confusion" / "monolingual").glob("*/*.csv")):
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append((row["prompt"], row["language"].strip().lower()))
    return rows


def make_lingua(restrict: bool, low: bool) -> Detector:
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    if restrict:
        langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in TAXONOMY]
        builder = LanguageDetectorBuilder.from_languages(*langs)
    else:
        builder = LanguageDetectorBuilder.from_all_languages()
    if low:
        builder = builder.with_low_accuracy_mode()
    # Preload so the load time is measured here, not hidden in the first call.
    det = builder.with_preloaded_language_models().build()

    def detect(text: str) -> str | None:
        lang = det.detect_language_of(text)
        return None if lang is None else lang.iso_code_639_1.name.lower()

    return detect


def make_py3langid(restrict: bool) -> Detector:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)
    if restrict:
        ident.set_languages(list(TAXONOMY))

    def detect(text: str) -> str | None:
        return ident.classify(text)[0]

    return detect


def make_langdetect() -> Detector:
    from langdetect import DetectorFactory, LangDetectException, detect_langs
    from langdetect.detector_factory import init_factory

    DetectorFactory.seed = 0  # langdetect is random unless seeded
    init_factory()  # loads the profiles (otherwise done lazily on the first call)

    def detect(text: str) -> str | None:
        try:
            code = detect_langs(text)[0].lang
        except LangDetectException:
            return None
        return {"zh-cn": "zh", "zh-tw": "zh"}.get(code, code)

    return detect


def make_treasure() -> Detector:
    """The rule `treasure.annotate.language` applies on top of py3langid (all languages, near-ratio fallback)."""
    from treasure.annotate.language import ISO_TO_LANGUAGE, _model, detect_language

    _model()
    to_iso = {name: iso for iso, name in ISO_TO_LANGUAGE.items()}

    def detect(text: str) -> str | None:
        # Same bound as the annotator: at most 2 x MAX_CHARS_PER_TURN characters of prose are scored.
        name = detect_language(text)
        return None if name is None else to_iso[name]

    return detect


CANDIDATES: dict[str, Callable[[], Detector]] = {
    "lingua (all languages)": lambda: make_lingua(False, False),
    "lingua (23 languages)": lambda: make_lingua(True, False),
    "lingua low-accuracy (all languages)": lambda: make_lingua(False, True),
    "lingua low-accuracy (23 languages)": lambda: make_lingua(True, True),
    "py3langid (all languages)": lambda: make_py3langid(False),
    "py3langid (23 languages)": lambda: make_py3langid(True),
    "langdetect (all languages)": make_langdetect,
    "treasure rule (py3langid all + fallback, ≤600 chars)": make_treasure,
}


def long_texts(rows: list[tuple[str, str]], size: int) -> list[tuple[str, str]]:
    """Texts of about `size` characters: consecutive prompts of one language joined (response-sized inputs)."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    for text, gold in rows:
        by_lang[gold].append(text)
    out = []
    for gold, texts in sorted(by_lang.items()):
        buf = ""
        for text in texts:
            buf = f"{buf}\n{text}" if buf else text
            if len(buf) >= size:
                out.append((buf[:size], gold))
                buf = ""
    return out


def _score(detect: Detector, rows: list[tuple[str, str]], repeats: int) -> tuple[list, float]:
    t0 = time.perf_counter()
    for _ in range(repeats):
        preds = [detect(text) for text, _ in rows]
    return preds, (time.perf_counter() - t0) / repeats


def evaluate(name: str, rows: list[tuple[str, str]], repeats: int, long_size: int) -> dict:
    """Run one candidate. Call it in a fresh process so the load time includes imports and no shared caches."""
    t0 = time.perf_counter()
    detect = CANDIDATES[name]()
    load_s = time.perf_counter() - t0
    detect("warm up")
    per_lang: dict[str, Counter] = defaultdict(Counter)
    confusions: Counter = Counter()
    preds, run_s = _score(detect, rows, repeats)
    for (_, gold), pred in zip(rows, preds, strict=True):
        per_lang[gold]["n"] += 1
        if pred == gold:
            per_lang[gold]["ok"] += 1
        else:
            confusions[f"{gold}>{pred}"] += 1
    longs = long_texts(rows, long_size)
    long_preds, long_s = _score(detect, longs, repeats)
    n = sum(c["n"] for c in per_lang.values())
    ok = sum(c["ok"] for c in per_lang.values())
    return {
        "name": name,
        "load_s": load_s,
        "acc": ok / n,
        "per_lang": {g: c["ok"] / c["n"] for g, c in per_lang.items()},
        "texts_per_s": len(rows) / run_s,
        "long_n": len(longs),
        "long_acc": sum(p == g for (_, g), p in zip(longs, long_preds, strict=True)) / len(longs),
        "long_texts_per_s": len(longs) / long_s,
        "confusions": confusions.most_common(6),
    }


def to_markdown(results: list[dict], rows: list[tuple[str, str]], command: str, long_size: int) -> str:
    langs = sorted({g for _, g in rows})
    counts = Counter(g for _, g in rows)
    lines = [
        "## Language identification: measured comparison",
        "",
        f"Command: `{command}`",
        "",
        f"Data: all {len(rows):,} Language Confusion monolingual prompts "
        f"(`shared/data/multilingual/language_confusion/monolingual/*/*.csv`, {len(langs)} languages, "
        f"median {sorted(len(t) for t, _ in rows)[len(rows) // 2]} characters). "
        f"Long texts: the same prompts joined per language into {results[0]['long_n']} texts of {long_size} "
        "characters (response-sized inputs). "
        "One text per call, single thread, on "
        f"{platform.machine()} / Python {platform.python_version()} ({os.cpu_count()} cores). "
        "Each candidate runs in a fresh process; load = import + building the detector with its models in "
        "memory. A prediction outside the taxonomy's 23 languages (or none) counts as wrong.",
        "",
        "| candidate | load (s) | accuracy | texts/s | long: accuracy | long: texts/s | most common errors (gold>pred) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        errs = ", ".join(f"{c}×{k}" for c, k in r["confusions"][:4])
        lines.append(
            f"| {r['name']} | {r['load_s']:.2f} | {r['acc']:.2%} | {r['texts_per_s']:,.0f} "
            f"| {r['long_acc']:.2%} | {r['long_texts_per_s']:,.0f} | {errs} |"
        )
    lines += ["", "Accuracy per language (n = prompts):", ""]
    lines.append("| candidate | " + " | ".join(f"{g} ({counts[g]})" for g in langs) + " |")
    lines.append("|---|" + "---:|" * len(langs))
    for r in results:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['per_lang'][g]:.1%}" for g in langs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown tables here (else print them)")
    ap.add_argument("--repeats", type=int, default=1, help="timing repeats per candidate")
    ap.add_argument("--long-size", type=int, default=1000, help="characters per long text")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of candidate names to run")
    ap.add_argument(
        "--worker", default=None, help=argparse.SUPPRESS
    )  # internal: run one candidate, print JSON
    args = ap.parse_args(argv)
    rows = load_prompts(args.data)
    if not rows:
        print(f"no prompts under {args.data}", file=sys.stderr)
        return 1
    if args.worker:
        print(json.dumps(evaluate(args.worker, rows, args.repeats, args.long_size)))
        return 0
    results = []
    for name in CANDIDATES:
        if args.only and not any(s in name for s in args.only):
            continue
        # A fresh interpreter per candidate: lingua caches its models process-wide, so measuring two lingua
        # configurations in one process would hide the second one's load time.
        cmd = [sys.executable, __file__, "--worker", name, "--data", str(args.data)]
        cmd += ["--repeats", str(args.repeats), "--long-size", str(args.long_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{name:45s} load {r['load_s']:6.2f}s  acc {r['acc']:.2%}  {r['texts_per_s']:8,.0f} texts/s  "
            f"long: acc {r['long_acc']:.2%} {r['long_texts_per_s']:8,.0f} texts/s",
            flush=True,
        )
        results.append(r)
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    command = " ".join([".venv/bin/python bench/langid_compare.py", *shown])
    md = to_markdown(results, rows, command, args.long_size)
    if args.out:
        args.out.write_text(md, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
