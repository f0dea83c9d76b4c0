"""One experiment on the suite: data -> annotate -> (shared base) -> baseline and marker arms per seed -> scores.

Every stage writes its result into the experiment folder and is skipped when the result is already there, so an
interrupted run continues where it stopped (a stage's result is written last, atomically). The stages call the
project's own APIs: `build_suite`, the annotate pipeline (`run_annotate`), training (`treasure.train.trainer.train`
from a YAML written beside the run, which `treasure train RUN/config.yaml` would run the same way) and generation
(`Generator`). Both arms of a seed read the same annotated records in the same order for the same steps.

Layout of `out/`:
    data/train.jsonl, data/train.annotated.jsonl   the fine-tuning records (markers by the annotate stage)
    data/test.jsonl, data/test.annotated.jsonl     test items (never in training) with their gold markers
    init/                                          the untrained model (char tokenizer + tiny Llama)
    base/, base.jsonl                              with base=train: init trained `base_steps` on another draw

Where the arms start (`base`): ``bundled``, the base model shipped in the package (src/treasure/assets/demo-base,
made by `treasure demo --build-base` with the `train` settings below: the paper fine-tunes a pretrained model, and
pretraining is the part of the demo a laptop cannot redo in minutes); ``train``, a base trained in the experiment;
``none``, the untrained model (from scratch).
    runs/<arm>-s<seed>/                            a bundle, its config.yaml and scores.json
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from treasure.arms import QUIET_RUN, read_jsonl, train_from_yaml, use_cuda, write_json, write_jsonl
from treasure.errors import ConfigError
from treasure.suite.build import SuiteConfig, build_suite

log = logging.getLogger(__name__)

# The categories the marker arm trains on. The suite is English, single-source and short (length_bucket is always
# `concise`), and the code annotator finds no code_type in one-line answers, so those would be constants; these
# vary in the annotated records and can be checked.
DEMO_CATEGORIES = ("task", "domain", "format", "quality_bucket", "length_tokens")
ARMS = ("baseline", "markers")
# The packaged bases (folders in treasure/assets), both trained 5,000 steps on 50,000 other suite records without
# markers: `bundled-robust` with random letters where blocks go (base_insertions 12), the demo's default since the
# ablations (docs/findings.md); `bundled` without them, tied to one layout (the findings' sections 1-6 used it).
BUNDLED = {"bundled-robust": "demo-base-robust", "bundled": "demo-base"}
BASES = (*BUNDLED, "train", "none")
ROBUST_INSERTIONS = 12


@dataclass
class ExperimentConfig:
    """Everything that decides an experiment's numbers (saved as out/experiment.json)."""

    # data
    n_train: int = 6000
    n_test_per_task: int = 60
    suite_seed: int = 0
    # where the arms start: bundled-robust | bundled | train | none (see the module docstring)
    base: str = "bundled-robust"
    # with base=train or none: the model, a Llama over byte tokens (train/tiny.py char_tokenizer) ...
    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    # ... and with base=train, its training on another draw of the suite (no markers)
    n_base: int = 50000
    base_steps: int = 5000
    # with base=train: up to this many random letters inserted after half the questions and before half the
    # answers of the base's records (0: none), so the base does not tie copying to one layout (docs/findings.md)
    base_insertions: int = 0
    # fine-tuning, both arms
    steps: int = 500
    baseline_steps: int | None = None  # None: the same steps as the marker arm
    equal_tokens: bool = False  # also train a baseline on as many tokens as the marker arm read (more steps)
    batch_size: int = 32
    learning_rate: float = 1e-3
    base_learning_rate: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    # the marker recipe
    format: str = "compact"
    placement: str = "both"
    dataset_dropout: float = 0.5
    sample_dropout: float = 0.5
    categories: tuple[str, ...] = DEMO_CATEGORIES
    # evaluation
    eval_batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        self.categories = tuple(self.categories)
        for name in ("n_train", "n_test_per_task", "steps", "batch_size", "hidden_size", "num_hidden_layers"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)!r}")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.base not in BASES:
            raise ConfigError(f"base: {self.base!r} is not one of {', '.join(BASES)}")
        if self.base == "train" and (self.n_base <= 0 or self.base_steps <= 0):
            raise ConfigError("n_base and base_steps: must be positive with base=train")
        if self.base in BUNDLED and self.suite_seed != 0:
            raise ConfigError(
                "suite_seed: the bundled base was trained on the draw of suite seed 0 (it never saw "
                "that seed's test items); use base: train for another seed"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "experiment") -> ExperimentConfig:
        known = {f.name: f for f in fields(cls)}
        kw = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
            kw[key] = value
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"], d["categories"] = list(self.seeds), list(self.categories)
        return d


# What each shared stage depends on: experiments that agree on these fields share that stage's result.
DATA_KEYS = ("n_train", "n_test_per_task", "suite_seed")
INIT_KEYS = (*DATA_KEYS, "base", "hidden_size", "num_hidden_layers", "num_attention_heads")
BASE_KEYS = (
    *INIT_KEYS,
    "n_base",
    "base_steps",
    "base_learning_rate",
    "base_insertions",
    "batch_size",
    "device",
)
BASELINE_KEYS = (*BASE_KEYS, "steps", "baseline_steps", "learning_rate", "eval_batch_size")
MARKER_KEYS = (*BASE_KEYS, "steps", "learning_rate", "eval_batch_size", "format", "placement", "dataset_dropout",
               "sample_dropout", "categories")  # fmt: skip


def _key(cfg: ExperimentConfig, keys: tuple[str, ...]) -> str:
    # base_insertions came later: left out at its default (0), so caches made before it keep their names
    values = {k: getattr(cfg, k) for k in keys if not (k == "base_insertions" and not cfg.base_insertions)}
    blob = json.dumps(values, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


@dataclass
class Paths:
    """Where each stage's result lives. With `shared` (a sweep), data, init, base and baseline runs go to folders
    named by what they depend on, so grid points that agree on those reuse them."""

    root: Path
    cfg: ExperimentConfig
    shared: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def _at(self, name: str, keys: tuple[str, ...]) -> Path:
        if self.shared is None:
            return self.root / name
        return Path(self.shared) / f"{name}-{_key(self.cfg, keys)}"

    data = property(lambda self: self._at("data", DATA_KEYS))
    init = property(lambda self: self._at("init", INIT_KEYS))
    base = property(lambda self: self._at("base", BASE_KEYS))

    @property
    def start(self) -> Path:
        """The model both arms are fine-tuned from."""
        if self.cfg.base in BUNDLED:
            return bundled_base(self.cfg.base)
        return self.base if self.cfg.base == "train" else self.init

    def run(self, arm: str, seed: int) -> Path:
        if self.shared is None:
            return self.root / "runs" / f"{arm}-s{seed}"
        if arm == "baseline":
            return self._at(f"baseline-s{seed}", BASELINE_KEYS)
        return self._at(f"markers-s{seed}", MARKER_KEYS)


@contextmanager
def _locked(folder: Path):
    """One process at a time builds a shared stage (sweep workers may need the same one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = round(self.seconds.get(key, 0.0) + seconds, 1)


def bundled_base(name: str = "bundled-robust") -> Path:
    """A packaged base model's folder (a plain Hugging Face model folder)."""
    from importlib import resources

    path = Path(str(resources.files("treasure.assets").joinpath(BUNDLED[name])))
    if not (path / "config.json").is_file():
        raise ConfigError(f"base: {name}: {path} is missing (rebuild it with `treasure demo --build-base`)")
    return path


# ------------------------------------------------------------------------------------------------ stages


def stage_data(cfg: ExperimentConfig, paths: Paths) -> None:
    """Build the suite (train, base draw, test) and annotate train and test with the normal pipeline."""
    from treasure.annotate.options import AnnotateOptions
    from treasure.annotate.pipeline import run_annotate

    paths.data.mkdir(parents=True, exist_ok=True)
    train_path, test_path = paths.data / "train.jsonl", paths.data / "test.jsonl"
    if not test_path.exists():
        train, test = build_suite(SuiteConfig(cfg.n_train, cfg.n_test_per_task, cfg.suite_seed))
        write_jsonl(train_path, train)
        # The test items as records (reference answer as the response), so the same pipeline gives gold markers.
        write_jsonl(test_path, [
            {**t, "messages": [{"role": "user", "content": t["prompt"]},
                               {"role": "assistant", "content": t["answer"]}]} for t in test
        ])  # fmt: skip
    common = {"task": "meta.task", "source": "meta.source"}
    for src, mapping in ((train_path, {**common, "quality": "meta.rating"}), (test_path, common)):
        dst = src.with_suffix(".annotated.jsonl")
        if not dst.exists():
            run_annotate(str(src), str(dst), AnnotateOptions(field_map=mapping), progress=False)


def stage_init(cfg: ExperimentConfig, paths: Paths) -> None:
    """The untrained model, saved as a normal Hugging Face folder (loaded by path like any model)."""
    if (paths.init / "config.json").exists():
        return
    from treasure.train.tiny import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    width = cfg.hidden_size
    model = tiny_llama(
        tok,
        seed=cfg.suite_seed,
        hidden_size=width,
        intermediate_size=int(width * 8 / 3) // 16 * 16,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=1024,
    )
    tmp = paths.init.with_name(paths.init.name + ".tmp")
    for stale in (tmp, paths.init):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    os.replace(tmp, paths.init)


def train_yaml(
    cfg: ExperimentConfig, *, model: Path, train_file: Path, output_dir: Path, mode: str, steps: int,
    seed: int, learning_rate: float,
) -> dict[str, Any]:  # fmt: skip
    """The `treasure train` config of one run."""
    cuda = use_cuda(cfg.device)
    return {
        "model_name_or_path": str(model.resolve()),
        "train_file": str(train_file.resolve()),
        "taxonomy": "paper",
        "markers": {
            "mode": mode,
            "format": cfg.format,
            "placement": cfg.placement,
            "dataset_dropout": cfg.dataset_dropout,
            "sample_dropout": cfg.sample_dropout,
            "categories": list(cfg.categories),
        },
        "output_dir": str(output_dir.resolve()),
        "max_steps": steps,
        "per_device_train_batch_size": cfg.batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, steps // 20),
        "weight_decay": 0.0,
        "max_length": 1024,
        "seed": seed,
        "bf16": False,  # full precision on CPU and GPU alike: the same numbers wherever a sweep runs
        "use_cpu": not cuda,
        **QUIET_RUN,
    }


def _train(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Train one run from its YAML (arms.train_from_yaml): its seconds, counts and metrics."""
    result, seconds = train_from_yaml(config, folder)
    return {"seconds": seconds, **result.counts, "metrics": result.metrics}


def stage_base(cfg: ExperimentConfig, paths: Paths) -> dict[str, Any] | None:
    """The shared base: the untrained model trained on another draw of the suite without markers."""
    if cfg.base != "train":
        return None
    done = paths.base / "base.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    base_file = paths.base.with_name(paths.base.name + ".jsonl")
    if not base_file.exists():
        records = build_suite(SuiteConfig(cfg.n_base, 1, cfg.suite_seed), stream="base")[0]
        if cfg.base_insertions:
            records = insert_noise(records, cfg.base_insertions, cfg.suite_seed)
        write_jsonl(base_file, records)
    config = train_yaml(cfg, model=paths.init, train_file=base_file, output_dir=paths.base,
                        mode="baseline", steps=cfg.base_steps, seed=cfg.suite_seed,
                        learning_rate=cfg.base_learning_rate)  # fmt: skip
    info = _train(config, paths.base)
    write_json(done, info)
    return info


def insert_noise(records: list[dict], max_len: int, seed: int) -> list[dict]:
    """Random letters (1..max_len) after half the questions and, on their own line, before half the answers: text
    that carries nothing, where marker blocks go, so the base learns to copy by content rather than position."""
    import random

    rng = random.Random(f"insertions:{seed}")

    def noise() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, max_len)))

    out = []
    for r in records:
        user, answer = r["messages"][0]["content"], r["messages"][-1]["content"]
        if rng.random() < 0.5:
            user = f"{user} {noise()}"
        if rng.random() < 0.5:
            answer = f"{noise()}\n{answer}"
        out.append(
            {**r, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        )
    return out


def arm_steps(cfg: ExperimentConfig, arm: str) -> int:
    return cfg.baseline_steps if arm == "baseline" and cfg.baseline_steps else cfg.steps


def stage_arm(
    cfg: ExperimentConfig,
    paths: Paths,
    arm: str,
    seed: int,
    *,
    steps: int | None = None,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Train one arm for one seed (skipped when its bundle is complete) and score it (skipped when scored)."""
    from treasure.suite.score import score_bundle

    steps = steps or arm_steps(cfg, arm)
    folder = folder or paths.run(arm, seed)
    scores_path = folder / "scores.json"
    if scores_path.exists():
        return json.loads(scores_path.read_text(encoding="utf-8"))
    train_info_path = folder / "train.json"
    if not train_info_path.exists():
        config = train_yaml(cfg, model=paths.start, train_file=paths.data / "train.annotated.jsonl", output_dir=folder,
                            mode=arm, steps=steps, seed=seed,
                            learning_rate=cfg.learning_rate)  # fmt: skip
        write_json(train_info_path, _train(config, folder))
    train_info = json.loads(train_info_path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    scores = score_bundle(
        folder,
        read_jsonl(paths.data / "test.annotated.jsonl"),
        read_jsonl(paths.data / "train.annotated.jsonl"),
        batch_size=cfg.eval_batch_size,
        cuda=use_cuda(cfg.device),
    )
    scores["train"] = {k: v for k, v in train_info.items() if k != "metrics"}
    metrics = train_info.get("metrics", {})
    scores["train"].update(loss=metrics.get("train_loss"), num_tokens=metrics.get("num_input_tokens_seen"),
                           steps=steps)  # fmt: skip
    scores["eval_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(scores_path, scores)
    return scores


def run_experiment(
    cfg: ExperimentConfig, out: str | Path, *, on_stage=None, shared: str | Path | None = None
) -> dict[str, Any]:
    """Run (or finish) the experiment in `out`; returns {"config", "runs": {arm: {seed: scores}}, "timings"}.

    `shared`: a folder for the stages that other experiments can reuse (data, init, base, and every run, keyed by
    the settings it depends on)."""
    paths = Paths(out, cfg, shared)
    paths.root.mkdir(parents=True, exist_ok=True)
    saved = paths.root / "experiment.json"
    if saved.exists():
        before = json.loads(saved.read_text(encoding="utf-8"))
        defaults = (
            ExperimentConfig().to_dict()
        )  # settings added since that folder was made take their default
        before = {**{k: v for k, v in defaults.items() if k not in before}, **before}
        if before != cfg.to_dict():
            changed = sorted(k for k in cfg.to_dict() if before.get(k) != cfg.to_dict()[k])
            raise ConfigError(
                f"{out}: holds an experiment with other settings ({', '.join(changed)}); use a new --out folder"
            )
    else:
        write_json(saved, cfg.to_dict())
    say = on_stage or (lambda msg: None)
    timings = Timings()

    def stage(name: str, fn, *args, lock: Path | None = None, **kwargs):
        say(name)
        t0 = time.perf_counter()
        if lock is not None:
            with _locked(lock):
                result = fn(*args, **kwargs)
        else:
            result = fn(*args, **kwargs)
        timings.add(name.split(" ")[0], time.perf_counter() - t0)
        return result

    stage("data: build the suite and annotate it", stage_data, cfg, paths, lock=paths.data)
    if cfg.base not in BUNDLED:
        stage("init: build the untrained model", stage_init, cfg, paths, lock=paths.init)
    if cfg.base == "train":
        stage(
            f"base: train the shared base ({cfg.base_steps} steps)", stage_base, cfg, paths, lock=paths.base
        )
    runs: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for seed in cfg.seeds:
        for arm in ARMS:
            runs[arm][seed] = stage(
                f"{arm}: seed {seed}, {arm_steps(cfg, arm)} steps, then evaluate",
                stage_arm,
                cfg,
                paths,
                arm,
                seed,
                lock=paths.run(arm, seed) if shared is not None else None,
            )
        if cfg.equal_tokens:
            # A third arm: the baseline trained on as many tokens as the marker arm read (more steps).
            t_m, t_b = (
                runs["markers"][seed]["train"]["num_tokens"],
                runs["baseline"][seed]["train"]["num_tokens"],
            )
            steps = max(1, round(arm_steps(cfg, "baseline") * t_m / t_b))
            folder = paths._at(f"baseline-tokens{steps}-s{seed}", BASELINE_KEYS) if shared is not None else \
                paths.root / "runs" / f"baseline_tokens-s{seed}"  # fmt: skip
            runs.setdefault("baseline_tokens", {})[seed] = stage(
                f"baseline at equal tokens: seed {seed}, {steps} steps, then evaluate", stage_arm, cfg, paths,
                "baseline", seed, lock=folder if shared is not None else None, steps=steps, folder=folder,
            )  # fmt: skip
    return {"config": cfg.to_dict(), "runs": runs, "timings": timings.seconds}


BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja")  # fmt: skip


def build_bundled_base(cfg: ExperimentConfig, work: str | Path, dest: str | Path, *, on_stage=None) -> Path:
    """Train the base that the package ships (cfg with base=train) in `work`, and copy the model into `dest`."""
    say = on_stage or (lambda msg: None)
    if cfg.base != "train":
        raise ConfigError("build_bundled_base: needs base=train settings")
    paths = Paths(work, cfg)
    t0 = time.perf_counter()
    say("data: build the base draw of the suite")
    stage_data(cfg, paths)
    say("init: build the untrained model")
    stage_init(cfg, paths)
    say(f"base: train {cfg.base_steps} steps of {cfg.batch_size} on {cfg.n_base} records")
    info = stage_base(cfg, paths)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        if (paths.base / name).is_file():
            shutil.copyfile(paths.base / name, dest / name)
    keys = ("n_base", "suite_seed", "hidden_size", "num_hidden_layers", "num_attention_heads", "base_steps",
            "batch_size", "base_learning_rate", "base_insertions")  # fmt: skip
    lines = [
        "# The demo's base model",
        "",
        "A Llama over byte tokens, trained without markers on a draw of the bundled suite (stream `base` of suite",
        "seed 0; no prompt of the first 200 test items of any task), by `treasure demo --build-base` with:",
        "(base_insertions: up to that many random letters after half the questions and before half the answers)",
        "",
        *(f"- {k}: {getattr(cfg, k)}" for k in keys),
        f"- train loss {info['metrics'].get('train_loss', float('nan')):.4f}; {info['seconds']:.0f} s on the build "
        f"machine; {round(time.perf_counter() - t0)} s in all",
        "",
        "Both arms of `treasure demo` are fine-tuned from it (`base: bundled`).",
    ]
    (dest / "PROVENANCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest
