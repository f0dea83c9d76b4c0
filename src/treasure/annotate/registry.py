"""The annotator kinds, by name, and which annotators a run builds for a taxonomy and its options.

A taxonomy's category names its kind (`annotator: length`, `embedding`, ...); `KINDS` maps each kind to the
factory that builds its annotator, importing the annotator's module only then (some load torch or a model).
`build_annotators` is used by an annotate run, by `--explain` and by on-the-fly markers at generation time: they
all get the same annotators for the same options. A new annotator is one module and one line here.

Categories routed elsewhere come first: a category mapped from an input field (`--map`, or the taxonomy's
`from_field`) is filled by the field annotator; with an LLM, the categories it fills (annotate/llm.py) go to it;
`quality_bucket` is a dataset-level marker, filled after the streaming pass (annotate/quality.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from treasure.annotate.base import Annotator, Evidence
from treasure.annotate.options import AnnotateOptions
from treasure.taxonomy import Taxonomy

DATASET_LEVEL = ("quality_bucket",)  # markers that need the whole dataset: filled after the streaming pass

# A kind's factory: (taxonomy, options, the categories routed to it) -> the annotator, or None, and the
# categories it cannot fill with why.
Factory = Callable[[Taxonomy, AnnotateOptions, list[str]], tuple[Annotator | None, dict[str, str]]]


class Restricted:
    """An annotator limited to some of its categories (e.g. only length_tokens)."""

    def __init__(self, inner: Annotator, categories: list[str]):
        self.inner, self.categories, self.name = inner, tuple(categories), inner.name

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        return [{k: v for k, v in m.items() if k in self.categories} for m in self.inner.annotate(records)]

    def explain(self, records: list[dict]) -> list[dict[str, Evidence]]:
        return [{k: v for k, v in m.items() if k in self.categories} for m in self.inner.explain(records)]

    def close(self) -> None:
        close_annotators([self.inner])


def _length(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    from treasure.annotate.length import LengthAnnotator

    return Restricted(LengthAnnotator(opts.tokenizer), cats), {}


def _format(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    from treasure.annotate.format import FormatAnnotator

    return FormatAnnotator(), {}


def _code(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    from treasure.annotate.code import CodeTypeAnnotator

    return CodeTypeAnnotator(), {}


def _language(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    from treasure.annotate.language import LanguageAnnotator

    return LanguageAnnotator(), {}


def _embedding(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    from treasure.annotate.embedding import EmbeddingAnnotator

    cls, tuning = EmbeddingAnnotator, {}
    if opts.embedding_fine_tune:
        from treasure.annotate.finetune import FineTunedEmbeddingAnnotator

        cls, tuning = FineTunedEmbeddingAnnotator, {"fine_tune_epochs": opts.embedding_fine_tune}
    return cls(taxonomy, categories=tuple(cats), extra_seeds_path=opts.seeds, **tuning), {}


def _llm(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    from treasure.annotate.llm import LLMAnnotator

    return LLMAnnotator(taxonomy, opts.llm, cats), {}  # type: ignore[arg-type]


def _fields(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    return None, {c: "no input field mapped (use --map CATEGORY=FIELD)" for c in cats}


def _reward_model(taxonomy: Taxonomy, opts: AnnotateOptions, cats: list[str]):
    skipped = {}
    for c in cats:
        if c != "quality":
            skipped[c] = "a reward model fills `quality` only"
        elif not opts.reward_model:
            skipped[c] = "needs a reward model (--reward-model PATH)"
    if "quality" not in cats or not opts.reward_model:
        return None, skipped
    from treasure.annotate.quality import QualityAnnotator

    ann = QualityAnnotator(
        opts.reward_model, batch_size=opts.reward_batch_size, max_length=opts.reward_max_length
    )
    return ann, skipped


KINDS: dict[str, Factory] = {
    "length": _length,
    "format": _format,
    "code": _code,
    "language": _language,
    "embedding": _embedding,
    "llm": _llm,
    "fields": _fields,
    "reward_model": _reward_model,
}


def field_map(taxonomy: Taxonomy, opts: AnnotateOptions) -> dict[str, str]:
    """The wanted categories filled from input fields: the taxonomy's `from_field`, then `--map`."""
    wanted = [c for c in taxonomy if opts.categories is None or c.name in opts.categories]
    out = {c.name: c.from_field for c in wanted if c.from_field}
    out.update({k: v for k, v in opts.field_map.items() if opts.categories is None or k in opts.categories})
    return out


def dataset_level_categories(taxonomy: Taxonomy, opts: AnnotateOptions) -> list[str]:
    """The wanted categories filled by a pass over the whole output (not mapped from a field)."""
    mapped = field_map(taxonomy, opts)
    return [
        c for c in DATASET_LEVEL
        if c in taxonomy and (opts.categories is None or c in opts.categories) and c not in mapped
    ]  # fmt: skip


def build_annotators(taxonomy: Taxonomy, opts: AnnotateOptions) -> tuple[list[Annotator], dict[str, str]]:
    """The annotators for the taxonomy's categories, and the categories no annotator can fill (with why)."""
    wanted = [c for c in taxonomy if opts.categories is None or c.name in opts.categories]
    mapped = field_map(taxonomy, opts)
    routed_to_llm: set[str] = set()
    if opts.llm is not None:
        from treasure.annotate.llm import llm_categories

        routed_to_llm = set(llm_categories(taxonomy, opts.llm))
    by_kind: dict[str, list[str]] = {}
    for c in wanted:
        if c.name not in mapped and c.name not in DATASET_LEVEL:
            by_kind.setdefault("llm" if c.name in routed_to_llm else (c.annotator or ""), []).append(c.name)
    if dataset_level_categories(taxonomy, opts) and "quality" in taxonomy and "quality" not in mapped:
        # quality_bucket is computed from quality, so asking for the bucket also fills the score.
        by_kind.setdefault("reward_model", [])
        if "quality" not in by_kind["reward_model"]:
            by_kind["reward_model"].append("quality")
    annotators: list[Annotator] = []
    skipped: dict[str, str] = {}
    for kind, cats in by_kind.items():
        factory = KINDS.get(kind)
        if factory is None:
            skipped.update(
                {c: f"no offline annotator for this category ({kind or 'none set'})" for c in cats}
            )
            continue
        ann, cannot = factory(taxonomy, opts, cats)
        if ann is not None:
            annotators.append(ann)
        skipped.update(cannot)
    if mapped:
        from treasure.annotate.fields import FieldAnnotator

        annotators.insert(0, FieldAnnotator(taxonomy, mapped))
    return annotators, skipped


def close_annotators(annotators: list[Annotator]) -> None:
    """Release what annotators hold open (the LLM annotator's event loop, connections and cache)."""
    for ann in annotators:
        close = getattr(ann, "close", None)
        if close is not None:
            close()
