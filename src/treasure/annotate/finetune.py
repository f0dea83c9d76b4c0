"""Fine-tuning the embedding annotator's encoder end to end on its own examples (`EmbeddingAnnotator(...,
fine_tune_epochs=N)`, `treasure annotate --embedding-fine-tune N`).

What trains. all-MiniLM-L6-v2 (a float32 copy, never the shared frozen model of `embedding.load_model`) with the
annotator's pooling ([L2-normalised mean of all token vectors, L2-normalised mean of the first HEAD_TOKENS token
vectors, the 5 lexical features]) and one linear head per category, on the examples the annotator's heads train
on (`training_examples`: the seeds, a user's seeds at USER_SEED_WEIGHT, the value descriptions at
DESCRIPTION_WEIGHT, the labelled prompts; a labelled prompt whose texts for two categories are the same is one
example with both labels, one forward pass).

Recipe (`fine_tune`), measured by bench/encoder_finetune_loso.py (leave one source out: domain 0.715 -> 0.765,
task 0.689 -> 0.751 after 1 epoch; bench/results/encoder_finetune_loso.md): "linear probe, then fine-tune"
(LP-FT, Kumar et al. 2022): the heads start from the annotator's own logistic fit (`embedding.fit_head`) on the
frozen float32 features, so epoch 0 is the frozen annotator; then the whole model (all transformer layers, the
embeddings and the heads) trains with AdamW, lr LR, weight decay WEIGHT_DECAY, WARMUP_SHARE linear warm-up then
linear decay, batch BATCH_SIZE, gradient norm clipped at CLIP_NORM, dropout as in the model config, cross-entropy
weighted like the head (1 / count(value) ** CLASS_BALANCE, mean 1 per category), max 48 tokens, seed SEED. bf16
autocast on CPUs with native bfloat16. The heads are used as the fine-tuning left them (no refit), as the bench
scored them. The caller's torch random state is left as it was.

About 55 s per 1,000 examples and epoch at 1 thread on a 2-core VM (the packaged set is ~1,070 examples).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import random
import sys
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from treasure.annotate import embedding as emb
from treasure.errors import TreasureError
from treasure.taxonomy import Taxonomy

LR = 3e-5
HEAD_LR = 1e-3  # init="random" only: zero heads need a faster rate
WEIGHT_DECAY = 0.01
WARMUP_SHARE = 0.1
BATCH_SIZE = 16
CLIP_NORM = 1.0
SEED = 0
FORMAT_VERSION = 1  # of the cache key and file


@dataclass
class Example:
    """One training text: its labels (category -> value index) and raw weights (category -> weight, as
    `embedding.fit_head` gets them; `fine_tune` applies the class balance itself)."""

    text: str
    response: str | None
    labels: dict[str, int]
    weights: dict[str, float]


def training_examples(
    taxonomy: Taxonomy,
    categories: Sequence[str],
    seeds: Sequence[emb.Seed],
    labelled: Sequence[dict],
    user_seeds: Collection[tuple[str, str]] = (),
) -> list[Example]:
    """The examples of `EmbeddingAnnotator._examples`, for all categories at once, in this order: the seeds (in
    their order; a (category, text) in `user_seeds` weighs USER_SEED_WEIGHT), the value descriptions (category by
    category; none for Unspecified), then per labelled prompt its texts (`request_text` for REQUEST_CATEGORIES),
    one example per distinct text. A category reads the labelled prompts only when every label is one of its
    values."""
    cats = tuple(categories)
    ex: list[Example] = []
    for s in seeds:
        if s.category in cats:
            w = emb.USER_SEED_WEIGHT if (s.category, s.text) in user_seeds else 1.0
            ex.append(Example(s.text, None, {s.category: taxonomy[s.category].values.index(s.value)},
                              {s.category: w}))  # fmt: skip
    for cat in cats:
        c = taxonomy[cat]
        for v in c.values:
            d = c.value_descriptions.get(v, "").strip()
            if d and v != emb.UNSPECIFIED:
                ex.append(Example(d, None, {cat: c.values.index(v)}, {cat: emb.DESCRIPTION_WEIGHT}))
    reads = []
    for cat in cats:
        rows = [r for r in labelled if r.get(cat) is not None]
        if rows and all(r[cat] in taxonomy[cat].values for r in rows):
            reads.append(cat)
    for r in labelled:
        by_text: dict[str, Example] = {}
        for cat in reads:
            if r.get(cat) is None:
                continue
            text = emb.request_text(r["prompt"]) if cat in emb.REQUEST_CATEGORIES else r["prompt"]
            e = by_text.get(text)
            if e is None:
                e = by_text[text] = Example(text, r.get("response"), {}, {})
                ex.append(e)
            e.labels[cat] = taxonomy[cat].values.index(r[cat])
            e.weights[cat] = 1.0
    return ex


def loss_weights(examples: Sequence[Example], categories: Sequence[str]) -> list[dict[str, float]]:
    """Per example and category, the cross-entropy weight: the raw weight / (the value's weighted count) **
    CLASS_BALANCE, scaled to mean 1 over the category's examples."""
    out: list[dict[str, float]] = [{} for _ in examples]
    for cat in categories:
        mine = [i for i, e in enumerate(examples) if cat in e.labels]
        if not mine:
            continue
        counts: Counter = Counter()
        for i in mine:
            counts[examples[i].labels[cat]] += examples[i].weights[cat]
        for i in mine:
            e = examples[i]
            out[i][cat] = e.weights[cat] / counts[e.labels[cat]] ** emb.CLASS_BALANCE
        mean = np.mean([out[i][cat] for i in mine])
        for i in mine:
            out[i][cat] /= mean
    return out


class FineTuneModel:
    """MiniLM (float32, its own copy) with the annotator's pooling and one linear head per category."""

    def __init__(self, n_values: dict[str, int], *, max_length: int = emb.DEFAULT_MAX_LENGTH,
                 head_tokens: int = emb.HEAD_TOKENS, autocast: bool | None = None):  # fmt: skip
        import torch

        self.tokenizer, self.encoder = load_encoder()
        dim = 2 * self.encoder.config.hidden_size + 5
        self.heads = torch.nn.ModuleDict({c: torch.nn.Linear(dim, k) for c, k in n_values.items()})
        for h in self.heads.values():
            torch.nn.init.zeros_(h.weight), torch.nn.init.zeros_(h.bias)
        self.max_length, self.head_tokens = max_length, head_tokens
        self.autocast = emb._native_bf16() if autocast is None else autocast

    def parameters(self) -> list:
        return [*self.encoder.parameters(), *self.heads.parameters()]

    def features(self, texts: Sequence[str], responses: Sequence[str | None]):
        import torch

        enc = self.tokenizer([t[: self.max_length * emb.CHARS_PER_TOKEN] for t in texts], truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt")  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            hidden = self.encoder(**enc).last_hidden_state
        pooled = emb.pool_views(hidden.float(), enc["attention_mask"], self.head_tokens)
        lex = torch.tensor(
            np.stack([emb.lexical_features(t, r) for t, r in zip(texts, responses, strict=True)])
        )
        return torch.cat([*pooled, lex], dim=1)

    def frozen_features(
        self, texts: Sequence[str], responses: Sequence[str | None], batch: int = 64
    ) -> np.ndarray:
        import torch

        self.encoder.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), 2 * self.encoder.config.hidden_size + 5), dtype=np.float32)
        with torch.inference_mode():
            for b in range(0, len(order), batch):
                idx = order[b : b + batch]
                out[idx] = self.features([texts[i] for i in idx], [responses[i] for i in idx]).numpy()
        return out

    def probe_init(self, examples: Sequence[Example]) -> None:
        """The heads from `embedding.fit_head` on the frozen features (the packaged head's fit)."""
        import torch

        x = self.frozen_features([e.text for e in examples], [e.response for e in examples])
        for cat, head in self.heads.items():
            idx = [i for i, e in enumerate(examples) if cat in e.labels]
            y = np.array([examples[i].labels[cat] for i in idx])
            raw = np.array([examples[i].weights[cat] for i in idx], dtype=np.float32)
            coef = emb.fit_head(x[idx], y, raw, head.out_features)
            with torch.no_grad():
                head.weight.copy_(torch.tensor(coef[:-1].T))
                head.bias.copy_(torch.tensor(coef[-1]))

    def coefs(self) -> dict[str, np.ndarray]:
        """The heads as `embedding.fit_head` returns them: (d + 1, k), the last row the bias."""
        return {
            c: np.vstack([h.weight.detach().float().numpy().T, h.bias.detach().float().numpy()[None]])
            for c, h in self.heads.items()
        }

    def state(self) -> dict[str, Any]:
        """The tensors to cache: the encoder's state dict ("encoder.*") and the heads ("head.CAT.weight/bias")."""
        out = {f"encoder.{k}": v.detach().contiguous() for k, v in self.encoder.state_dict().items()}
        for c, h in self.heads.items():
            out[f"head.{c}.weight"], out[f"head.{c}.bias"] = h.weight.detach(), h.bias.detach()
        return out


def load_encoder() -> tuple[Any, Any]:
    """(tokenizer, model): a fresh float32 all-MiniLM-L6-v2, offline, not shared with `embedding.load_model`."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = str(emb.model_path())
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with emb._offline():
            return (AutoTokenizer.from_pretrained(path, local_files_only=True),
                    AutoModel.from_pretrained(path, local_files_only=True))  # fmt: skip
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def fine_tune(
    examples: Sequence[Example],
    n_values: dict[str, int],
    *,
    epochs: int = 1,
    seed: int = SEED,
    lr: float = LR,
    head_lr: float = HEAD_LR,
    init: str = "probe",
    batch_size: int = BATCH_SIZE,
    weight_decay: float = WEIGHT_DECAY,
    max_length: int = emb.DEFAULT_MAX_LENGTH,
    head_tokens: int = emb.HEAD_TOKENS,
    autocast: bool | None = None,
    on_epoch: Callable[[FineTuneModel, int, float | None], None] | None = None,
    progress: bool | None = None,
) -> tuple[FineTuneModel, int]:
    """Train as the module docstring says; returns (the model, the optimiser steps taken).

    `init`: "probe" (heads from `fit_head`, trained at `lr`) or "random" (zero heads, trained at `head_lr`).
    `on_epoch(model, epoch, mean training loss)` is called after the head's init (epoch 0, loss None) and after
    each epoch (the bench scores the held-out source there; it must not draw random numbers). `progress`: a tqdm
    bar over the steps on stderr (None: only on a terminal)."""
    import torch
    from tqdm.auto import tqdm

    cats = list(n_values)
    loss_w = loss_weights(examples, cats)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = random.Random(seed)
        model = FineTuneModel(n_values, max_length=max_length, head_tokens=head_tokens, autocast=autocast)
        if init == "probe":
            model.probe_init(examples)
        if on_epoch:
            on_epoch(model, 0, None)
        groups = [{"params": list(model.encoder.parameters()), "lr": lr},
                  {"params": list(model.heads.parameters()), "lr": lr if init == "probe" else head_lr}]  # fmt: skip
        opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
        steps = epochs * math.ceil(len(examples) / batch_size)
        warm = max(1, int(WARMUP_SHARE * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm))
        )
        disable = not sys.stderr.isatty() if progress is None else not progress
        bar = tqdm(total=steps, desc="fine-tune", unit="step", file=sys.stderr, disable=disable)
        step = 0
        for epoch in range(1, epochs + 1):
            model.encoder.train()
            order = list(range(len(examples)))
            rng.shuffle(order)
            losses = []
            for b in range(0, len(order), batch_size):
                idx_b = order[b : b + batch_size]
                batch = [examples[i] for i in idx_b]
                x = model.features([e.text for e in batch], [e.response for e in batch])
                loss = torch.zeros(())
                for cat in cats:
                    idx = [j for j, e in enumerate(batch) if cat in e.labels]
                    if not idx:
                        continue
                    y = torch.tensor([batch[j].labels[cat] for j in idx])
                    w = torch.tensor([loss_w[idx_b[j]][cat] for j in idx])
                    ce = torch.nn.functional.cross_entropy(model.heads[cat](x[idx]), y, reduction="none")
                    loss = loss + (ce * w).sum() / len(batch)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
                opt.step()
                sched.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
            model.encoder.eval()
            if on_epoch:
                on_epoch(model, epoch, float(np.mean(losses)))
        bar.close()
    model.encoder.eval()
    return model, step


def cache_key(
    examples: Sequence[Example],
    n_values: dict[str, int],
    *,
    epochs: int,
    seed: int = SEED,
    max_length: int = emb.DEFAULT_MAX_LENGTH,
    head_tokens: int = emb.HEAD_TOKENS,
    autocast: bool | None = None,
) -> str:
    """What decides the fine-tuned weights: the model files, the encoder settings, the recipe, the examples (texts,
    responses, labels, weights), the categories' sizes, the epochs and the seed."""
    import torch

    blob = json.dumps({
        "version": FORMAT_VERSION, "model": emb._model_fingerprint(), "max_length": max_length,
        "head_tokens": head_tokens, "autocast": emb._native_bf16() if autocast is None else autocast,
        "torch": torch.__version__, "machine": platform.machine(), "epochs": epochs, "seed": seed,
        "recipe": [LR, WEIGHT_DECAY, WARMUP_SHARE, BATCH_SIZE, CLIP_NORM, "probe", emb.CLASS_BALANCE,
                   emb.L2_PENALTY, emb.FIT_STEPS, emb.FIT_RATE, emb.FIT_MOMENTUM],
        "n_values": n_values,
        "examples": [[e.text, e.response, e.labels, e.weights] for e in examples],
    }, sort_keys=True, ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def save_state(path, state: dict[str, Any]) -> None:
    """Write the tensors of `FineTuneModel.state` as safetensors, atomically (a temporary file, then a rename)."""
    import os

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def load_state(path) -> dict[str, Any] | None:
    """The tensors `save_state` wrote, or None when the file is missing or unreadable (then it is retrained)."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception:  # a damaged file: safetensors raises its own error types
        return None


def apply_state(state: dict[str, Any], categories: Sequence[str], n_values: dict[str, int], *, dtype: str,
                device: str = "cpu") -> tuple[Any, dict[str, np.ndarray]] | None:  # fmt: skip
    """(the fine-tuned encoder in `dtype` on `device`, eval mode; the heads as (d + 1, k) coefficients), or None
    when the tensors do not fit (a file of another model or taxonomy: retrained)."""
    import torch

    _, model = load_encoder()
    enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        model.load_state_dict(enc, strict=True)
        coefs = {}
        for c in categories:
            w, b = state[f"head.{c}.weight"].float().numpy(), state[f"head.{c}.bias"].float().numpy()
            if w.shape != (n_values[c], 2 * model.config.hidden_size + 5) or b.shape != (n_values[c],):
                return None
            coefs[c] = np.vstack([w.T, b[None]])
    except (RuntimeError, KeyError, ValueError):
        return None
    model.eval().to(device=device, dtype=getattr(torch, dtype))
    return model, coefs


class FineTunedEmbeddingAnnotator(emb.EmbeddingAnnotator):
    """The embedding annotator with its encoder fine-tuned end to end on its own examples (seeds, descriptions,
    labelled prompts, a user's seeds at their weight) for `fine_tune_epochs` epochs, seed `fine_tune_seed`,
    the weights cached in `cache_dir`; every other argument as `EmbeddingAnnotator`'s."""

    def __init__(self, *args: Any, fine_tune_epochs: int = 1, fine_tune_seed: int = 0, **kwargs: Any):
        if (
            isinstance(fine_tune_epochs, bool)
            or not isinstance(fine_tune_epochs, int)
            or fine_tune_epochs < 1
        ):
            raise TreasureError(f"fine_tune_epochs must be a number of epochs >= 1, got {fine_tune_epochs!r}")
        self.fine_tune_epochs, self.fine_tune_seed = fine_tune_epochs, fine_tune_seed
        super().__init__(*args, **kwargs)

    def _build(self) -> dict[str, Any]:
        """Fine-tune the encoder and the heads on all the categories' examples (annotate/finetune.py), or load
        the result from the process or the disk cache; the encoder then reads with the fine-tuned copy."""
        examples = training_examples(
            self.taxonomy, self.categories, self.seeds, self.labelled, self._user_seeds
        )
        n_values = {c: len(self.taxonomy[c].values) for c in self.categories}
        enc = self.encoder
        key = cache_key(examples, n_values, epochs=self.fine_tune_epochs, seed=self.fine_tune_seed,
                           max_length=enc.max_length, head_tokens=enc.head_tokens)  # fmt: skip
        mem = (key, enc.dtype, enc.device)
        if mem not in emb._FINE_TUNED:
            path = self._cache_dir / f"finetune-{key}.safetensors" if self._cache_dir else None
            state = load_state(path) if path is not None else None
            loaded = None
            if state is not None:
                loaded = apply_state(state, self.categories, n_values, dtype=enc.dtype, device=enc.device)
            if loaded is None:  # not cached, or a damaged or foreign file: train
                where = f"cached at {path}" if path is not None else "not cached (cache_dir none)"
                print(f"fine-tuning MiniLM-L6 on {len(examples)} examples, {self.fine_tune_epochs} epoch(s); {where}",
                      file=sys.stderr, flush=True)  # fmt: skip
                with emb._torch_threads(enc.num_threads):
                    model, _ = fine_tune(examples, n_values, epochs=self.fine_tune_epochs, seed=self.fine_tune_seed,
                                            max_length=enc.max_length, head_tokens=enc.head_tokens)  # fmt: skip
                state = model.state()
                if path is not None:
                    with contextlib.suppress(OSError):  # an unwritable cache only costs time
                        save_state(path, state)
                loaded = apply_state(state, self.categories, n_values, dtype=enc.dtype, device=enc.device)
                assert loaded is not None
            emb._FINE_TUNED[mem] = loaded
        enc.model, coefs = emb._FINE_TUNED[mem]
        # Part of Encoder.settings(), so the seed-vector cache never mixes frozen and fine-tuned vectors.
        enc.fine_tune = key
        return {cat: self._category_model(cat, coefs[cat]) for cat in self.categories}
