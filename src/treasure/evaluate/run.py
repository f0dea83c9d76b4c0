"""Run the evaluations for several bundles (or modes of one bundle) and gather one report.

A run is `NAME=BUNDLE_DIR:MODE` (mode `inferred`, `fixed` or `onthefly`; default `inferred`). A baseline
bundle takes no markers, so its mode only names the column. Each evaluation reads the generations of every
run on the same inputs:

- `markers`  marker accuracy of runs in mode inferred on the held-out records (`marker_accuracy.py`);
- `control`  length / format / language requests built from the packaged prompt sets (`control.py`);
- `slices`   per-example metrics on the held-out records (exact match and token F1 against the reference answer,
             and the marker match of inferred runs) split head / tail by the training statistics (`slices.py`);
- `code`     HumanEvalFix pass@1 (`code_repair.py`);
- `judge`    pairwise win rates against the first run with an OpenAI-compatible judge (`judge.py`).

In mode `fixed` the held-out records' own annotations are given for `fix` categories (by default those a user
could state: domain, task, language, format, length_bucket); control requests give their markers; code
repair gives domain=Code, task=CodeFix, code_type=python.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treasure.errors import TreasureError
from treasure.evaluate import control as ctl
from treasure.evaluate import slices as sl
from treasure.evaluate.marker_accuracy import example_scores, marker_accuracy
from treasure.records import last_assistant, prompt_messages, prompt_text
from treasure.stats import TAIL_SHARE

EVALS = ("markers", "control", "slices", "code", "judge")
DEFAULT_FIX = ("domain", "task", "language", "format", "length_bucket")
CODE_MARKERS = {"domain": "Code", "task": "CodeFix", "code_type": "python"}


@dataclass(frozen=True)
class RunSpec:
    """One column of the report: a bundle in one generation mode."""

    name: str
    path: Path
    mode: str = "inferred"

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """`NAME=DIR[:MODE]` (or just `DIR`, named after the folder)."""
        from treasure.generate.engine import MODES

        name, eq, rest = text.partition("=")
        if not eq:
            name, rest = "", text
        path, mode = rest, "inferred"
        head, colon, tail = rest.rpartition(":")
        if colon and tail in MODES:
            path, mode = head, tail
        elif colon and "/" not in tail and tail:
            raise TreasureError(f"--run {text}: unknown mode {tail!r} (valid: {', '.join(MODES)})")
        path = Path(path)
        return cls(name or path.name, path, mode)


@dataclass
class EvalOptions:
    """What to evaluate and how much of it; `treasure eval` derives its flags from these fields."""

    evals: tuple[str, ...] = field(
        default=EVALS, metadata={"help": f"comma-separated subset of {','.join(EVALS)} (default: all)"}
    )
    limit: int | None = field(default=None, metadata={"help": "use the first N held-out records"})
    control_n: int = field(default=10, metadata={"help": "control prompts per kind"})
    code_limit: int = field(default=10, metadata={"help": "HumanEvalFix problems (164 = all)"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens generated per answer at most"})
    batch_size: int = field(default=16, metadata={"help": "prompts generated together"})
    fix: tuple[str, ...] = field(
        default=DEFAULT_FIX,
        metadata={"help": f"categories given from the annotation in mode fixed (default: {','.join(DEFAULT_FIX)})"},
    )  # fmt: skip
    slice_categories: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "categories whose rare values make an example tail (default: all categorical)"},
    )
    judge_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"}
    )
    judge_model: str = field(default="judge", metadata={"help": "model name sent to the judge endpoint"})
    judge_pairs: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata={"flag": "--judge-pair", "action": "append", "metavar": "A:B",
                  "help": "judge run A against run B (default: every run against the first)"},
    )  # fmt: skip
    judge_slice: str | None = field(
        default=None,
        metadata={
            "help": "judge only examples in a slice: tail, head, domain=tail, domain=Legal|Medical, ..."
        },
    )
    judge_workers: int = field(default=4, metadata={"cli": False, "help": "judge requests in flight"})
    seed: int = field(
        default=0, metadata={"help": "seed of the control prompts' draw and of the judge's order"}
    )
    data_dir: Path = field(
        default=ctl.DATA_DIR, metadata={"cli": False, "help": "the prompt sets of the control evaluation"}
    )
    extra: dict[str, Any] = field(
        default_factory=dict, metadata={"cli": False, "help": "free-form settings, left out of the report"}
    )


class ModelRun:
    """A loaded bundle answering prompts in its run's mode."""

    def __init__(self, spec: RunSpec, options: EvalOptions, cache: dict[Path, Any] | None = None):
        from treasure.bundle import load_bundle
        from treasure.generate.engine import Generator

        self.spec = spec
        self.options = options
        key = spec.path.resolve()
        if cache is not None and key in cache:
            self.generator = cache[key]
        else:
            if not spec.path.is_dir():
                raise TreasureError(f"--run {spec.name}: {spec.path} is not a folder")
            self.generator = Generator(load_bundle(spec.path))
            if cache is not None:
                cache[key] = self.generator
        self.bundle = self.generator.bundle

    @property
    def takes_markers(self) -> bool:
        return self.generator.uses_markers and self.spec.mode != "inferred"

    @property
    def writes_markers(self) -> bool:
        return self.generator.writes_block and self.spec.mode == "inferred"

    def usable(self, markers: dict[str, Any] | None) -> dict[str, Any]:
        """The markers this bundle can take: its categories only, values its taxonomy accepts."""
        if not markers or not self.takes_markers:
            return {}
        tax = self.generator.taxonomy
        out = {}
        for cat, value in markers.items():
            if cat in tax:
                try:
                    out.update(tax.validate_markers({cat: value}))
                except Exception:  # a value outside this bundle's taxonomy: leave the category to the model
                    continue
        return out

    def generate(self, conversations: list[list[dict]], markers: Sequence[dict | None] | None = None):
        markers = markers or [None] * len(conversations)
        usable = [self.usable(m) or None for m in markers]
        mode = self.spec.mode if self.generator.uses_markers else "inferred"
        return self.generator.generate_batch(
            conversations, usable, mode=mode, max_new_tokens=self.options.max_new_tokens,
            batch_size=self.options.batch_size,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        info = self.bundle.info
        return {
            "name": self.spec.name,
            "path": str(self.spec.path),
            "mode": self.spec.mode,
            "bundle_mode": info.get("mode"),
            "format": info.get("format"),
            "base_model": info.get("base_model"),
            "marker_categories": info.get("marker_categories"),
            "train_examples": (info.get("counts") or {}).get("examples"),
        }


# --------------------------------------------------------------------------------------- per-example metrics


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def exact_match(response: str, reference: str) -> float:
    return float(_norm(response) == _norm(reference))


def token_f1(response: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1 between a response and the reference answer."""
    a, b = _norm(response).split(), _norm(reference).split()
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if not common:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


# ------------------------------------------------------------------------------------------------ sections


def _data_section(runs: list[ModelRun], records: list[dict], options: EvalOptions) -> dict[str, Any]:
    """Generate every run's answers to the held-out records and score them per example."""
    convs = [prompt_messages(r) for r in records]
    out = {}
    for run in runs:
        fixed = [{c: r["markers"][c] for c in options.fix if c in (r.get("markers") or {})} for r in records]
        gens = run.generate(convs, fixed)
        examples = []
        for rec, gen in zip(records, gens, strict=True):
            ref = last_assistant(rec)
            ex: dict[str, Any] = {
                "response": gen.text,
                "markers": gen.markers,
                "exact_match": exact_match(gen.text, ref),
                "token_f1": token_f1(gen.text, ref),
            }
            if run.writes_markers:
                cats = [c.name for c in run.generator.taxonomy if not c.numeric]
                ex["marker_match"] = example_scores(rec.get("markers") or {}, gen.inferred, cats)
            examples.append(ex)
        out[run.spec.name] = examples
    return out


def marker_accuracy_section(runs: list[ModelRun], records: list[dict], data: dict) -> dict[str, Any]:
    out = {}
    gold = [r.get("markers") or {} for r in records]
    for run in runs:
        if not run.writes_markers:
            continue
        cats = [c.name for c in run.generator.taxonomy if not c.numeric]
        out[run.spec.name] = marker_accuracy(gold, [e["markers"] for e in data[run.spec.name]], cats)
    return out


def slices_section(
    runs: list[ModelRun], records: list[dict], data: dict, options: EvalOptions
) -> dict[str, Any]:
    ref = next((r for r in runs if r.bundle.stats), None)
    if ref is None:
        raise TreasureError("no bundle has training marker statistics (marker_stats.json); cannot slice")
    stats = ref.bundle.stats
    cats = list(options.slice_categories) if options.slice_categories else sl.categorical(stats)
    gold = [r.get("markers") or {} for r in records]
    slices = [sl.example_slice(m, stats, cats) for m in gold]
    metrics: dict[str, dict[str, Any]] = {}
    for run in runs:
        examples = data[run.spec.name]
        names = (
            [k for k in ("exact_match", "token_f1", "marker_match") if k in examples[0]] if examples else []
        )
        metrics[run.spec.name] = {m: sl.split_metric([e[m] for e in examples], slices) for m in names}
    base = runs[0].spec.name
    lifts = {
        name: {m: sl.tail_lift(split, metrics[base][m]) for m, split in ms.items() if m in metrics[base]}
        for name, ms in metrics.items()
        if name != base
    }
    return {
        "stats_from": ref.spec.name,
        "tail_share": stats.get("tail_share", TAIL_SHARE),
        "categories": cats,
        "counts": {"head": slices.count("head"), "tail": slices.count("tail")},
        "slices": slices,
        "metrics": metrics,
        "reference": base,
        "tail_lift": lifts,
    }


def control_section(runs: list[ModelRun], options: EvalOptions) -> dict[str, Any]:
    items = ctl.build_items(ctl.load_prompts(options.data_dir), options.control_n, seed=options.seed)
    if not items:
        raise TreasureError(f"no control prompts under {options.data_dir}/prompts")
    count = ctl.token_counter()
    out = {}
    for run in runs:
        by_marker = [bool(run.usable(i.markers)) for i in items]
        convs = [
            [{"role": "user", "content": i.prompt if m else i.instructed}]
            for i, m in zip(items, by_marker, strict=True)
        ]
        gens = run.generate(convs, [i.markers if m else None for i, m in zip(items, by_marker, strict=True)])
        texts = [g.text for g in gens]
        tokens = count(texts)
        scores = [ctl.score_item(i, t, n) for i, t, n in zip(items, texts, tokens, strict=True)]
        asked = (
            "markers" if all(by_marker) else "instruction" if not any(by_marker) else "markers where possible"
        )
        out[run.spec.name] = {
            "asked_by": asked,
            "summary": ctl.summarize(items, scores),
            "examples": [
                {**i.to_dict(), **s, "by_marker": m, "response": t}
                for i, s, m, t in zip(items, scores, by_marker, texts, strict=True)
            ],  # fmt: skip
        }
    return out


def code_section(runs: list[ModelRun], options: EvalOptions) -> dict[str, Any]:
    from treasure.evaluate import code_repair as cr
    from treasure.evaluate.sandbox import SandboxUnavailableError

    path = Path(options.data_dir) / cr.DATA_FILE
    if not path.is_file():
        return {run.spec.name: {"skipped": f"no data set at {path}"} for run in runs}
    problems = cr.load_problems(path)[: options.code_limit]
    convs = [[{"role": "user", "content": cr.build_fix_prompt(p)}] for p in problems]
    out = {}
    for run in runs:
        gens = run.generate(convs, [CODE_MARKERS] * len(convs))
        try:
            out[run.spec.name] = cr.pass_at_1(problems, [g.text for g in gens]).to_dict()
        except SandboxUnavailableError as e:
            out[run.spec.name] = {"skipped": f"sandbox unavailable: {e}"}
    return out


def judge_section(
    runs: list[ModelRun], records: list[dict], data: dict, options: EvalOptions, judge: Any = None
) -> list[dict[str, Any]]:
    from treasure.evaluate.judge import OpenAIJudge, pairwise

    names = [r.spec.name for r in runs]
    pairs = list(options.judge_pairs) or [(n, names[0]) for n in names[1:]]
    for a, b in pairs:
        if a not in names or b not in names:
            raise TreasureError(f"--judge-pair {a}:{b}: runs are {', '.join(names)}")
    if judge is None and not options.judge_url:
        return [{"a": a, "b": b, "slice": options.judge_slice, "skipped": "no --judge-url"} for a, b in pairs]
    judge = judge or OpenAIJudge(options.judge_url, options.judge_model)
    stats = next((r.bundle.stats for r in runs if r.bundle.stats), {})
    keep = sl.parse_slice(options.judge_slice)
    idx = [i for i, r in enumerate(records) if keep(r.get("markers") or {}, stats)]
    out = []
    for a, b in pairs:
        result = pairwise(
            [prompt_text(records[i]) for i in idx],
            [data[a][i]["response"] for i in idx],
            [data[b][i]["response"] for i in idx],
            judge,
            ids=[str(i) for i in idx],
            workers=options.judge_workers,
            seed=options.seed,
        )
        out.append({
            "a": a, "b": b, "slice": options.judge_slice, "summary": result.summary(),
            "verdicts": dict(zip(result.ids, result.verdicts, strict=True)),
        })  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------------- main


def load_eval_records(path: str | Path, limit: int | None = None) -> list[dict]:
    """Held-out annotated records (any format `treasure.records` reads), the first `limit`."""
    from treasure.records import load_records

    records = load_records(path)
    return records[:limit] if limit else records


def evaluate(
    specs: Sequence[RunSpec],
    data: str | Path | None,
    options: EvalOptions | None = None,
    *,
    judge: Any = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Every requested evaluation for every run: the report dict (see `report.write_report`)."""
    from treasure.evaluate.report import provenance

    options = options or EvalOptions()
    unknown = set(options.evals) - set(EVALS)
    if unknown:
        raise TreasureError(f"unknown evaluation(s) {', '.join(sorted(unknown))} (valid: {', '.join(EVALS)})")
    if not specs:
        raise TreasureError("give at least one --run NAME=DIR[:MODE]")
    if len({s.name for s in specs}) != len(specs):
        raise TreasureError("run names must differ")
    cache: dict[Path, Any] = {}
    runs = [ModelRun(s, options, cache) for s in specs]
    report: dict[str, Any] = {
        "meta": {
            **provenance(argv),
            "data": str(data) if data else None,
            "evals": list(options.evals),
            "options": {k: v for k, v in vars(options).items() if k != "extra"},
        },  # fmt: skip
        "runs": [r.describe() for r in runs],
    }
    needs_data = {"markers", "slices", "judge"} & set(options.evals)
    records: list[dict] = []
    examples: dict[str, list[dict]] = {}
    if needs_data:
        if not data:
            raise TreasureError(f"{', '.join(sorted(needs_data))} need held-out records: give --data FILE")
        records = load_eval_records(data, options.limit)
        examples = _data_section(runs, records, options)
        report["examples"] = examples
    if "markers" in options.evals:
        report["marker_accuracy"] = marker_accuracy_section(runs, records, examples)
    if "slices" in options.evals:
        report["slices"] = slices_section(runs, records, examples, options)
    if "control" in options.evals:
        report["control"] = control_section(runs, options)
    if "code" in options.evals:
        report["code_repair"] = code_section(runs, options)
    if "judge" in options.evals:
        report["judge"] = judge_section(runs, records, examples, options, judge)
    return json.loads(json.dumps(report, default=str))
