"""Compare language-identification libraries on the Language Confusion prompts, to pick the one `treasure` uses.

Reads every ``prompt,source,language`` row of
``<data>/multilingual/language_confusion/monolingual/*/*.csv`` (``language`` is an ISO 639-1 code) and runs each
candidate on each prompt, single-threaded, one text at a time (the way an annotator sees records). Reports per
candidate: model load time, accuracy overall and per language, and throughput (texts/s). A prediction outside the
taxonomy's 23 languages counts as wrong.

Candidates: lingua-language-detector (all its languages; restricted to the 23; each also in low-accuracy mode),
py3langid (all its languages; restricted to the 23), langdetect (seeded, all its languages), and what
`treasure.annotate.language` does with py3langid (all languages scored; the best taxonomy language is taken when
it is nearly as likely as an outside winner, otherwise none; an English fast path; at most 2 x 150 characters).

`--annotators N` instead measures the throughput of the three rule annotators (format, code_type, language) on N
synthetic but varied records built from the shared data (60% English, 40% in the 15 Language Confusion languages;
replies in every format, code in the 17 languages, long and huge texts).

Usage::

    .venv/bin/python bench/langid_compare.py [--data ../shared/data] [--repeats 3] [--out FILE.md]
    .venv/bin/python bench/langid_compare.py --annotators 10000
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

# One everyday sentence in each of 20 languages outside the taxonomy (written for this bench). A detector should
# not put them in a taxonomy language: the annotator leaves such conversations out instead of guessing.
OUTSIDE = {
    "sw": "Habari yako? Leo ninaenda sokoni kununua matunda na mboga kwa ajili ya familia yangu.",
    "fi": "Hyvää huomenta! Menen tänään kauppaan ostamaan hedelmiä ja vihanneksia perheelleni.",
    "sv": "God morgon! Idag ska jag gå till affären och köpa frukt och grönsaker till min familj.",
    "ms": "Selamat pagi! Hari ini saya akan pergi ke kedai untuk membeli buah-buahan dan sayur-sayuran untuk "
    "keluarga saya.",
    "ca": "Bon dia! Avui aniré a la botiga a comprar fruita i verdura per a la meva família.",
    "gl": "Bos días! Hoxe vou á tenda mercar froita e verduras para a miña familia.",
    "az": "Sabahınız xeyir! Bu gün ailəm üçün meyvə və tərəvəz almaq üçün mağazaya gedirəm.",
    "be": "Добрай раніцы! Сёння я пайду ў краму купіць садавіну і гародніну для маёй сям'і.",
    "mr": "सुप्रभात! आज मी माझ्या कुटुंबासाठी फळे आणि भाज्या खरेदी करण्यासाठी दुकानात जाणार आहे.",
    "ne": "शुभ प्रभात! आज म मेरो परिवारको लागि फलफूल र तरकारी किन्न पसल जाँदैछु।",
    "th": "สวัสดีตอนเช้า วันนี้ฉันจะไปซื้อผลไม้และผักที่ร้านสำหรับครอบครัวของฉัน",
    "ta": "காலை வணக்கம்! இன்று நான் என் குடும்பத்திற்காக பழங்கள் மற்றும் காய்கறிகள் வாங்க கடைக்குச் செல்கிறேன்.",
    "ur": "صبح بخیر! آج میں اپنے خاندان کے لیے پھل اور سبزیاں خریدنے دکان جا رہا ہوں۔",
    "bn": "সুপ্রভাত! আজ আমি আমার পরিবারের জন্য ফল ও সবজি কিনতে দোকানে যাচ্ছি।",
    "hu": "Jó reggelt! Ma elmegyek a boltba gyümölcsöt és zöldséget venni a családomnak.",
    "sk": "Dobré ráno! Dnes idem do obchodu kúpiť ovocie a zeleninu pre moju rodinu.",
    "da": "Godmorgen! I dag går jeg i butikken for at købe frugt og grøntsager til min familie.",
    "tl": "Magandang umaga! Pupunta ako sa tindahan ngayon para bumili ng prutas at gulay para sa aking pamilya.",
    "sr": "Добро јутро! Данас идем у продавницу да купим воће и поврће за своју породицу.",
    "bg": "Добро утро! Днес отивам до магазина да купя плодове и зеленчуци за семейството си.",
}


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
        # Same bound as the annotator on a conversation: at most 2 x MAX_CHARS_PER_TURN characters of prose.
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
    "treasure.annotate.language (py3langid + rules)": make_treasure,
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
    # CPU time of this process: the machine may be shared, and every candidate runs on one thread.
    t0 = time.process_time()
    for _ in range(repeats):
        preds = [detect(text) for text, _ in rows]
    return preds, (time.process_time() - t0) / repeats


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
    outside_kept_out = sum(detect(text) not in TAXONOMY for text in OUTSIDE.values())
    return {
        "outside": outside_kept_out,
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
        "One text per call, single thread; texts/s = texts per second of CPU time of the process (the machine "
        "was shared with other jobs, so wall time would mostly measure them), on "
        f"{platform.machine()} / Python {platform.python_version()} ({os.cpu_count()} cores). "
        "Each candidate runs in a fresh process; load = wall time of import + building the detector with its "
        f"models in memory (load average {os.getloadavg()[0]:.1f} when the run ended). "
        "A prediction outside the taxonomy's 23 languages (or none) counts as wrong. "
        f"Outside languages: one hand-written sentence in each of {len(OUTSIDE)} languages that are not in the "
        f"taxonomy ({', '.join(OUTSIDE)}); left out = the detector did not name a taxonomy language.",
        "",
        "| candidate | load (s) | accuracy | texts/s | long: accuracy | long: texts/s | outside languages left out "
        f"(of {len(OUTSIDE)}) | most common errors (gold>pred) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        errs = ", ".join(f"{c}×{k}" for c, k in r["confusions"][:4])
        lines.append(
            f"| {r['name']} | {r['load_s']:.2f} | {r['acc']:.2%} | {r['texts_per_s']:,.0f} "
            f"| {r['long_acc']:.2%} | {r['long_texts_per_s']:,.0f} | {r['outside']} | {errs} |"
        )
    lines += ["", "Accuracy per language (n = prompts):", ""]
    lines.append("| candidate | " + " | ".join(f"{g} ({counts[g]})" for g in langs) + " |")
    lines.append("|---|" + "---:|" * len(langs))
    for r in results:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['per_lang'][g]:.1%}" for g in langs) + " |")
    return "\n".join(lines) + "\n"


def synthetic_records(data: Path, n: int, seed: int = 0) -> list[dict]:
    """`n` varied conversations built from the shared data (see the module docstring)."""
    import random

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_annotate_code import SNIPPETS, TAGS  # one snippet per code_type value

    rng = random.Random(seed)
    by_lang: dict[str, list[str]] = defaultdict(list)
    for text, gold in load_prompts(data):
        by_lang[gold].append(text)
    with (data / "prompts" / "arena_hard_v0.1_question.jsonl").open(encoding="utf-8") as fh:
        en_prompts = [json.loads(line)["prompt"] for line in fh]
    replies: list[str] = []

    def walk(node: dict) -> None:
        if node["role"] == "assistant":
            replies.append(node["text"])
        for child in node.get("replies", []):
            walk(child)

    with (data / "conversations" / "oasst_en_100_tree.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            walk(json.loads(line)["prompt"])
    code = sorted(SNIPPETS.items())

    def reply(i: int, base: str) -> str:
        k = i % 12
        lang, snippet = code[rng.randrange(len(code))]
        words = base.split()
        if k == 1:
            return f"{base[:300]}\n\n```{TAGS[lang]}\n{snippet}```\n\n{base[300:700]}"
        if k == 2:
            return f"{base[:300]}\n\n```\n{snippet}```"
        if k == 3:
            return json.dumps(
                {"answer": base[:200], "items": list(range(rng.randint(1, 30)))}, ensure_ascii=False
            )
        if k == 4:
            return "| name | value |\n|---|---|\n" + "\n".join(
                f"| {w} | {j} |" for j, w in enumerate(words[:20])
            )
        if k == 5:
            return "## Summary\n\n" + "\n".join(
                f"{j}. {x.strip()}" for j, x in enumerate(base.split(".")[:8], 1)
            )
        if k == 6:
            return f"Step 1: {base[:200]}\nStep 2: {base[200:400]}\nTherefore the answer is 42."
        if k == 7:
            return rng.choice(["B", "(C) because of the reasons above.", "The correct answer is D."])
        if k == 8:
            return "**Note**: " + base + "\n\n" + "\n\n".join(rng.sample(replies, 4))  # long
        if k == 9:
            return f"We get $x = \\frac{{1}}{{2}}$ and {base[:500]}"
        if k == 10:
            return (
                "<root>" + "".join(f"<item id='{j}'>{w}</item>" for j, w in enumerate(words[:30])) + "</root>"
            )
        if k == 11:
            return (base + "\n\n") * rng.randint(20, 60)  # 10k to 100k+ characters
        return base

    langs = sorted(by_lang)
    records = []
    for i in range(n):
        if rng.random() < 0.6:
            prompt, base = rng.choice(en_prompts), rng.choice(replies)
        else:
            pool = by_lang[rng.choice(langs)]
            prompt, base = rng.choice(pool), " ".join(rng.sample(pool, 6))
        if i % 12 == 7:
            prompt += "\nA) one\nB) two\nC) three\nD) four"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply(i, base)}]
        records.append({"messages": messages, "markers": {}})
    return records


def annotator_throughput(data: Path, n: int) -> str:
    """Records/s of FormatAnnotator, CodeTypeAnnotator and LanguageAnnotator, alone and together (Markdown)."""
    from treasure.annotate.code import CodeTypeAnnotator
    from treasure.annotate.format import FormatAnnotator
    from treasure.annotate.language import LanguageAnnotator

    records = synthetic_records(data, n)
    mean_chars = sum(len(r["messages"][-1]["content"]) for r in records) / len(records)
    anns = [FormatAnnotator(), CodeTypeAnnotator(), LanguageAnnotator()]
    t0 = time.perf_counter()
    anns[2].annotate(records[:1])  # loads the language model: reported apart
    load_s = time.perf_counter() - t0
    lines = [
        f"{len(records):,} synthetic records (mean reply {mean_chars:,.0f} characters), batches of 256, one process; "
        f"language model load {load_s:.2f} s (not included); load average {os.getloadavg()[0]:.1f}.",
        "",
        "| annotator | records/s (CPU time) | records/s (wall) | most common values |",
        "|---|---:|---:|---|",
    ]
    cpu_total = wall_total = 0.0
    for ann in anns:
        c0, w0 = time.process_time(), time.perf_counter()
        out: list[dict] = []
        for j in range(0, len(records), 256):
            out += ann.annotate(records[j : j + 256])
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        cpu_total, wall_total = cpu_total + cpu, wall_total + wall
        top = Counter(v for o in out for v in o.values()).most_common(4)
        lines.append(
            f"| {ann.name} | {len(records) / cpu:,.0f} | {len(records) / wall:,.0f} | "
            + ", ".join(f"{v} {k}" for v, k in top)
            + " |"
        )
    lines.append(f"| all three | {len(records) / cpu_total:,.0f} | {len(records) / wall_total:,.0f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown tables here (else print them)")
    ap.add_argument("--repeats", type=int, default=1, help="timing repeats per candidate")
    ap.add_argument("--long-size", type=int, default=1000, help="characters per long text")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of candidate names to run")
    ap.add_argument(
        "--annotators", type=int, default=0, help="measure the 3 rule annotators on N records instead"
    )
    # internal: run one candidate in this (fresh) process and print its result as JSON
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.annotators:
        print(annotator_throughput(args.data, args.annotators))
        return 0
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
            f"long: acc {r['long_acc']:.2%} {r['long_texts_per_s']:8,.0f} texts/s  outside left out {r['outside']}",
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
