"""Long-tail slices: any per-example metric split by how frequent the example's marker values were in training.

A value is in the tail when under 5% of the training records held it (the paper's cut, `treasure.stats`); a
value never seen in training is tail too. An example is `tail` when any of the chosen categories has a tail
value, else `head` (with one category, that category alone decides). The tail lift of A over B is one number:
A's tail metric minus B's, on the same examples.

    sl = [example_slice(r["markers"], bundle.stats, ["domain", "task"]) for r in records]
    split_metric(scores, sl)          # {"head": {"n", "mean"}, "tail": {...}, "all": {...}}
    tail_lift(split_a, split_b)       # a["tail"]["mean"] - b["tail"]["mean"]

Slice specs restrict an evaluation (the judge's, for instance) to some examples: `tail`, `head`, `domain=tail`,
`domain=Legal|Medical`, several joined by `,` (all must hold).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from treasure.errors import TreasureError

SLICES = ("head", "tail")


def is_tail(stats: dict[str, Any], category: str, value: Any) -> bool:
    """Whether `value` of `category` is rare in the training statistics (unseen values are rare)."""
    entry = stats.get("categories", {}).get(category, {}).get("values", {}).get(str(value))
    return True if entry is None else bool(entry["tail"])


def categorical(stats: dict[str, Any]) -> list[str]:
    """The categorical categories the statistics count values for."""
    return [c for c, s in stats.get("categories", {}).items() if s.get("kind") == "categorical"]


def example_slice(
    markers: dict[str, Any], stats: dict[str, Any], categories: Iterable[str] | None = None
) -> str:
    """`tail` when any chosen category's value is rare in training, else `head` (default: all categorical)."""
    cats = list(categories) if categories is not None else categorical(stats)
    return "tail" if any(c in markers and is_tail(stats, c, markers[c]) for c in cats) else "head"


def _summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "mean": sum(values) / len(values) if values else None}


def split_metric(values: Sequence[float | None], slices: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean of a per-example metric over all examples, the head and the tail (None values are skipped)."""
    if len(values) != len(slices):
        raise ValueError(f"{len(values)} values for {len(slices)} slices")
    out = {"all": _summary([float(v) for v in values if v is not None])}
    for name in SLICES:
        out[name] = _summary(
            [float(v) for v, s in zip(values, slices, strict=True) if s == name and v is not None]
        )
    return out


def tail_lift(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> float | None:
    """A's tail mean minus B's (None when either has no tail examples)."""
    ta, tb = a.get("tail", {}).get("mean"), b.get("tail", {}).get("mean")
    return None if ta is None or tb is None else ta - tb


def per_value(
    values: Sequence[float | None], markers: Sequence[dict[str, Any]], category: str
) -> dict[str, Any]:
    """Mean of a metric per value of one category: {value: {"n", "mean"}} (for per-slice bar charts)."""
    groups: dict[str, list[float]] = {}
    for v, m in zip(values, markers, strict=True):
        if v is not None and m.get(category) is not None:
            groups.setdefault(str(m[category]), []).append(float(v))
    return {k: _summary(vs) for k, vs in sorted(groups.items())}


def parse_slice(spec: str | None) -> Callable[[dict[str, Any], dict[str, Any]], bool]:
    """A predicate (markers, stats) -> bool for a slice spec (see the module docstring); None/"" keeps all."""
    if not spec or spec == "all":
        return lambda markers, stats: True
    tests: list[Callable[[dict[str, Any], dict[str, Any]], bool]] = []
    for part in (p.strip() for p in spec.split(",")):
        if part in SLICES:
            tests.append(lambda m, s, want=part: example_slice(m, s) == want)
            continue
        if "=" not in part:
            raise TreasureError(f"slice {part!r}: expected head, tail, CATEGORY=tail|head or CATEGORY=V1|V2")
        cat, _, want = (x.strip() for x in part.partition("="))
        if want in SLICES:
            tests.append(lambda m, s, c=cat, w=want: c in m and example_slice(m, s, [c]) == w)
        else:
            allowed = {v.strip() for v in want.split("|")}
            tests.append(lambda m, s, c=cat, a=allowed: str(m.get(c)) in a)
    return lambda markers, stats: all(t(markers, stats) for t in tests)
