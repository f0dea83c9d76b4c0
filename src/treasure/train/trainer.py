"""Build TRL's `SFTTrainer` for a marker run, train it (resumable, data-parallel under `accelerate launch`), save.

No Trainer subclass: the marker recipe lives in the dataset (render.py, data.py), the tokenizer and embeddings
(tokens.py) and the chat template (chat_template.py). What this module sets on TRL's config, and why:

- ``completion_only_loss=True``: the loss covers the completion (its marker block and the response), never the
  prompt; TRL builds the labels from our `completion_mask`.
- ``train_sampling_strategy="sequential"`` and one pass over per-epoch copies (data.py): the order and dropout of
  every epoch are fixed by the seed, identical in the baseline arm, and resuming skips exactly the batches done.
  ``num_train_epochs`` (or ``max_steps``) keeps its meaning; "epoch" save/eval/logging strategies become "steps"
  with one epoch's worth of steps. The ``epoch`` TRL logs is the fraction of that single pass.
- ``padding_free: true`` without packing: TRL flattens each batch into one row and leaves ``max_length`` unenforced
  (it refuses a ``max_length``), so treasure truncates the examples itself, exactly as TRL would (keep_start, then
  drop examples left without a trained token), and hands TRL ``max_length: None``. Examples stay apart through the
  ``position_ids`` TRL writes (tests/test_train_packing.py; docs/training.md).
- With LoRA and the compact format, the new token rows are trained through PEFT's ``trainable_token_indices``
  (embeddings, and the LM head when it is not tied to them), and the bundle saves the adapter and those rows only.
  ``embedding_learning_rate`` gives those rows a learning rate of their own (`_rows_learning_rate`).
- With ``markers.countdown`` the model gets the length countdown (treasure/countdown.py) before PEFT wraps it; its
  table trains with the run (PEFT freezes it; build_trainer thaws it) and is saved as countdown.safetensors, in the
  bundle and in every checkpoint.
- TRL's fused LM head scores only the trained positions on Triton devices and every position elsewhere (to keep
  Neuron's tile shapes fixed); on a CPU, where no shape is compiled, `score_trained_positions_on_cpu` makes it score
  the trained ones there too: the same loss and gradients, without the prompt's and the padding's share of the
  49k-vocabulary projection (SmolLM2, LoRA, batch 8 x 256 with 100 prompt tokens: 8.5 vs 11.3 s a step).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treasure.errors import ConfigError, RecordError
from treasure.records import read_records
from treasure.train.config import RunConfig
from treasure.train.data import DataSpec, build_dataset, truncate_dataset
from treasure.train.render import epoch_plan

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import SFTTrainer

    from treasure.train.config import TreasureSFTConfig

log = logging.getLogger(__name__)


def read_run_records(path: str, run: RunConfig) -> tuple[list[dict], list[int]]:
    """All records of `path` with their line numbers; the first invalid one (markers included) raises."""
    records, lines = [], []
    for line, rec in read_records(path, run.taxonomy):
        if isinstance(rec, RecordError):
            raise rec
        records.append(rec)
        lines.append(line)
    if not records:
        raise RecordError("no records", source=str(path))
    return records, lines


def data_seed(args: TreasureSFTConfig) -> int:
    return args.data_seed if args.data_seed is not None else args.seed


def epoch_copies(args: TreasureSFTConfig, n_records: int) -> int:
    """How many per-epoch copies the run reads: its epochs, or enough for `max_steps`."""
    if args.max_steps and args.max_steps > 0:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return max(1, math.ceil(args.max_steps * per_step / n_records))
    return max(1, math.ceil(args.num_train_epochs))


def trl_args(args: TreasureSFTConfig, n_records: int, copies: int) -> TreasureSFTConfig:
    """A copy of `args` set up for one sequential pass over `copies` epoch copies (see the module docstring)."""
    out = copy.copy(args)
    out.completion_only_loss = True
    out.train_sampling_strategy = "sequential"
    # Applied by model.resolve_chat_template; TRL would overwrite the wrapped template with it.
    out.chat_template_path = None
    if padding_free_truncates(args):
        out.max_length = None  # the datasets are cut to args.max_length already (build_trainer)
    if not (args.max_steps and args.max_steps > 0):
        out.num_train_epochs = args.num_train_epochs / copies
    per_pass = args.per_device_train_batch_size * args.world_size
    steps_per_epoch = max(1, math.ceil(math.ceil(n_records / per_pass) / args.gradient_accumulation_steps))
    for strategy, steps in (
        ("eval_strategy", "eval_steps"),
        ("save_strategy", "save_steps"),
        ("logging_strategy", "logging_steps"),
    ):
        if getattr(out, strategy) == "epoch":
            setattr(out, strategy, type(getattr(out, strategy))("steps"))
            setattr(out, steps, steps_per_epoch)
    return out


def padding_free_truncates(args: TreasureSFTConfig) -> bool:
    """Whether treasure cuts the examples to max_length itself: padding-free without packing (module docstring)."""
    return bool(args.padding_free and not args.packing and args.max_length is not None)


@dataclass
class Prepared:
    """Everything built before the trainer: useful on its own to inspect what a run trains on."""

    model: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    spec: DataSpec
    records: list[dict]
    lines: list[int]
    marker_token_ids: list[int] = field(default_factory=list)
    train_dataset: Dataset | None = None
    eval_dataset: Dataset | None = None
    copies: int = 1
    counts: dict[str, int] = field(default_factory=dict)


def prepare(run: RunConfig, *, load_model: bool = True, build_datasets: bool = True) -> Prepared:
    """Load records, model and tokenizer; add marker tokens; wrap the chat template; tokenise the datasets."""
    from treasure.train.chat_template import wrap_chat_template
    from treasure.train.model import load_model_and_tokenizer, load_tokenizer, resolve_chat_template
    from treasure.train.tokens import add_marker_tokens, extend_tokenizer

    args, markers = run.args, run.markers
    name = run.model.model_name_or_path
    records, lines = read_run_records(args.train_file, run)
    model = None
    if load_model:
        model, tokenizer = load_model_and_tokenizer(run.model, args)
    else:  # what the data looks like needs only the tokenizer
        tokenizer = load_tokenizer(
            name, revision=run.model.model_revision, trust_remote_code=args.trust_remote_code
        )
    template = resolve_chat_template(tokenizer, args, name)
    ids: list[int] = []
    if markers.adds_tokens:
        mtax = markers.marker_taxonomy(run.taxonomy)
        if model is not None:
            ids = add_marker_tokens(model, tokenizer, mtax, markers.embedding_init)
        else:
            extend_tokenizer(tokenizer, mtax)
    if markers.uses_countdown and model is not None:
        from treasure.countdown import attach_countdown

        attach_countdown(model, tokenizer, markers.marker_taxonomy(run.taxonomy))
    tokenizer.chat_template = wrap_chat_template(template, markers, run.taxonomy)
    spec = DataSpec(markers, run.taxonomy, data_seed(args), template, args.chat_template_kwargs)
    prep = Prepared(model, tokenizer, spec, records, lines, ids)
    if build_datasets:
        prep.copies = epoch_copies(args, len(records))
        prep.train_dataset, counts = build_dataset(
            tokenizer,
            records,
            spec,
            epoch_plan(len(records), prep.copies, spec.seed),
            source=args.train_file,
            lines=lines,
            num_proc=args.dataset_num_proc,
        )
        prep.counts = {"records": len(records), "epochs": prep.copies, **counts}
        if args.eval_file:
            eval_records, eval_lines = read_run_records(args.eval_file, run)
            prep.eval_dataset, _ = build_dataset(
                tokenizer,
                eval_records,
                spec,
                [(0, i) for i in range(len(eval_records))],
                source=args.eval_file,
                lines=eval_lines,
                num_proc=args.dataset_num_proc,
            )
    return prep


def _peft_config(run: RunConfig, model: PreTrainedModel, marker_token_ids: list[int]):
    """TRL's LoRA config from the YAML, plus the new marker rows as trainable tokens."""
    from trl import get_peft_config

    peft_config = get_peft_config(run.model)
    if peft_config is None or not marker_token_ids:
        return peft_config
    names = {id(m): n for n, m in model.named_modules()}
    targets = {names[id(model.get_input_embeddings())].split(".")[-1]: list(marker_token_ids)}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        targets[names[id(head)].split(".")[-1]] = list(marker_token_ids)
    existing = dict(peft_config.trainable_token_indices or {})
    for key, ids in targets.items():
        existing[key] = sorted(set(existing.get(key, [])) | set(ids))
    peft_config.trainable_token_indices = existing
    return peft_config


def _expose_lm_head_bias(model: Any) -> None:
    """PEFT's TrainableTokensWrapper forwards `.weight` (merged rows) but not `.bias`, which TRL's fused LM head reads
    (TRL 1.16, PEFT 0.21); give the wrapper its base layer's bias as a plain attribute."""
    head = model.get_output_embeddings()
    adapter = getattr(head, "token_adapter", None)
    if head is not None and adapter is not None and "bias" not in head.__dict__:
        object.__setattr__(head, "bias", getattr(adapter.base_layer, "bias", None))


def _save_adapter_only(model: Any, marker_token_ids: list[int]) -> None:
    """Save a LoRA run as the adapter plus the marker rows, never the whole embedding matrix.

    PEFT's ``save_embedding_layers="auto"`` saves the full (resized) embedding and LM head whenever the vocabulary
    grew (247 MB for SmolLM2's 49k x 576 rows, tied), although ``trainable_token_indices`` already stores every new
    row (PEFT writes them with ``index_copy``, so the base rows they replace never matter on loading). The Trainer
    calls ``model.save_pretrained`` for the final save and every checkpoint, so the flag is bound on this one
    instance.
    """
    import functools

    from peft import PeftModel

    if not isinstance(model, PeftModel) or not marker_token_ids:
        return
    config = model.peft_config[model.active_adapter]
    if getattr(config, "trainable_token_indices", None) is None:
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model, save_embedding_layers=False)


def score_trained_positions_on_cpu() -> bool:
    """Make TRL's fused LM head project only the positions with a label on a CPU (see the module docstring).

    TRL 1.x decides per call with ``trl.trainer.utils._use_triton(device)`` whether to score the masked positions
    alone; the kernel itself picks its torch tiles through its own copy of that function, so only the choice of
    positions changes. Idempotent; False (and nothing changed) where TRL no longer has that hook.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        log.debug("trl.trainer.utils._use_triton not found: the fused LM head scores every position on CPU")
        return False
    if getattr(original, "_treasure_cpu_compact", False):
        return True

    def use_compact(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    use_compact._treasure_cpu_compact = True  # type: ignore[attr-defined]
    trl_utils._use_triton = use_compact
    return True


def build_trainer(
    run: RunConfig, prep: Prepared, callbacks: list[TrainerCallback] | None = None
) -> SFTTrainer:
    from trl import SFTTrainer

    score_trained_positions_on_cpu()

    args = trl_args(run.args, len(prep.records), prep.copies)
    train_ds, eval_ds = prep.train_dataset, prep.eval_dataset
    if padding_free_truncates(run.args):
        cut = run.args.max_length, run.args.truncation_mode
        train_ds = truncate_dataset(train_ds, *cut)
        eval_ds = truncate_dataset(eval_ds, *cut) if eval_ds is not None else None
    trainer_class, weighting = SFTTrainer, {}
    if run.args.end_of_turn_weight != 1 or run.args.line_break_weight != 1:
        from treasure.generate.engine import stop_ids
        from treasure.train.loss import WeightedStopSFTTrainer, label_weights, line_break_ids

        trainer_class = WeightedStopSFTTrainer
        weights = label_weights(
            stop_ids(prep.model, prep.tokenizer),
            run.args.end_of_turn_weight,
            line_break_ids(prep.tokenizer) if run.args.line_break_weight != 1 else [],
            run.args.line_break_weight,
        )
        weighting = {"weights": weights}
    trainer = trainer_class(
        model=prep.model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=prep.tokenizer,
        peft_config=_peft_config(run, prep.model, prep.marker_token_ids),
        callbacks=callbacks,
        **weighting,
    )
    _expose_lm_head_bias(trainer.model)
    _save_adapter_only(trainer.model, prep.marker_token_ids)
    if run.args.embedding_learning_rate is not None:
        _rows_learning_rate(trainer, run.args.embedding_learning_rate)
    if run.markers.uses_countdown:
        _train_countdown(trainer, prep, run)
    return trainer


ROWS_PARAMETER = "trainable_tokens_delta"  # PEFT's name for the trained rows of `trainable_token_indices`


def _rows_learning_rate(trainer: SFTTrainer, lr: float) -> None:
    """Train the new marker-token rows at `lr`: the Trainer builds its optimizer as always, then those rows move to
    a param group of their own (no weight decay), before the scheduler reads each group's rate, so they follow the
    run's warm-up and decay. Bound on this one instance, as `_save_adapter_only` does."""
    rows = [p for n, p in trainer.model.named_parameters() if ROWS_PARAMETER in n and p.requires_grad]
    if not rows:
        raise ConfigError(
            "embedding_learning_rate: this run trains no new token rows apart (it needs LoRA, use_peft: true, "
            "and the compact marker format, whose tokens are new)"
        )
    create = trainer.create_optimizer

    def create_optimizer(model: Any = None) -> Any:
        optimizer = create(model)
        if getattr(optimizer, "_treasure_rows", False):
            return optimizer
        ids = {id(p) for p in rows}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.add_param_group({"params": rows, "lr": lr, "weight_decay": 0.0})
        optimizer._treasure_rows = True
        return optimizer

    trainer.create_optimizer = create_optimizer


def _train_countdown(trainer: SFTTrainer, prep: Prepared, run: RunConfig) -> None:
    """Hook the countdown to the input embeddings PEFT left, make its table trainable, save it with checkpoints."""
    from transformers import TrainerCallback

    from treasure.countdown import attach_countdown, save_countdown

    countdown = attach_countdown(trainer.model, prep.tokenizer, run.markers.marker_taxonomy(run.taxonomy))
    countdown.table.weight.requires_grad_(True)
    countdown.head.weight.requires_grad_(True)

    class SaveCountdown(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                save_countdown(trainer.model, folder)

    trainer.add_callback(SaveCountdown())


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`. The trainer writes trainer_state.json last, so a folder
    without it was cut short by a kill during the save; the one before it is used."""
    folders = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for folder in folders:
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        log.warning("skipping %s: incomplete (no trainer_state.json)", folder)
    return None


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    counts: dict[str, int]
    resumed_from: str | None


def train(
    run: RunConfig, *, resume: bool = False, callbacks: list[TrainerCallback] | None = None
) -> TrainResult:
    """Train `run` and save its bundle into `output_dir`. `resume` continues from the last checkpoint there."""
    from treasure.stats import marker_stats
    from treasure.train.bundle import write_bundle_files

    output_dir = Path(run.args.output_dir)
    resume_from = last_checkpoint(output_dir) if resume else None
    if resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", output_dir)
    prep = prepare(run)
    trainer = build_trainer(run, prep, callbacks)
    if run.markers.uses_countdown and resume_from is not None:
        from treasure.countdown import COUNTDOWN_FILE, attach_countdown

        attach_countdown(
            trainer.model,
            prep.tokenizer,
            run.markers.marker_taxonomy(run.taxonomy),
            Path(resume_from) / COUNTDOWN_FILE,
        )
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(str(output_dir))
    if trainer.args.should_save:
        from treasure.countdown import save_countdown

        save_countdown(trainer.model, output_dir)
        stats = marker_stats(prep.records, run.markers.marker_taxonomy(run.taxonomy))
        write_bundle_files(
            output_dir,
            run,
            stats=stats,
            marker_tokens=prep.tokenizer.convert_ids_to_tokens(prep.marker_token_ids),
            adapter=run.model.use_peft,
            counts=prep.counts,
        )
    trainer.accelerator.wait_for_everyone()
    return TrainResult(output_dir, dict(result.metrics), prep.counts, resume_from)
