"""Training configs: every shipped config validates; YAML + CLI overrides; a bad config is one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny import REPO, records, tiny_config, write_records

from treasure.cli import main
from treasure.errors import ConfigError
from treasure.train.config import load_config

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ACCELERATE = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def _cpu_overrides() -> list[str]:
    import torch

    # GPU configs ask for bf16, which TrainingArguments refuses on a machine without a GPU unless use_cpu is set.
    return [] if torch.cuda.is_available() else ["--use_cpu", "true"]


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"tiny-cpu.yaml", "qwen2.5-0.5b-lora.yaml", "qwen2.5-7b-full-fsdp.yaml"} <= names
    assert {"single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"} <= {
        p.name for p in ACCELERATE
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert (
        first.startswith("# ") and " train configs/" + path.name in first
    )  # headed by the command that runs it
    run = load_config(path, _cpu_overrides(), check_files=path.name == "tiny-cpu.yaml")
    run.markers.check(run.taxonomy)
    assert run.model.model_name_or_path and run.args.train_file
    if run.model.use_peft:
        assert run.model.lora_target_modules


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_every_shipped_accelerate_config_loads(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.distributed_type is not None
    assert (
        "accelerate launch --config_file configs/accelerate/" + path.name in path.read_text()
        or path.name in ("cpu_2proc.yaml",)
    )


def test_cli_values_override_the_yaml(tmp_path):
    cfg = tiny_config(tmp_path, learning_rate=0.5, markers={"format": "paper", "dataset_dropout": 0.3})
    run = load_config(
        cfg, ["--learning_rate", "0.25", "--markers.format", "compact", "--markers.categories=task,domain"]
    )
    assert run.args.learning_rate == 0.25
    assert run.markers.format == "compact" and run.markers.dataset_dropout == 0.3
    assert run.markers.categories == ("task", "domain")
    assert run.args.train_file == str(tmp_path / "train.jsonl")  # relative to the YAML
    run = load_config(cfg, ["--train_file", "other.jsonl"], check_files=False)
    assert run.args.train_file == "other.jsonl"  # command-line paths are the caller's
    (tmp_path / "turns.jinja").write_text("{{ messages }}")
    run = load_config(tiny_config(tmp_path, chat_template_path="turns.jinja"))
    assert run.args.chat_template_path == str(tmp_path / "turns.jinja")
    run = load_config(tiny_config(tmp_path, chat_template_path="Qwen/Qwen2.5-7B-Instruct"))
    assert run.args.chat_template_path == "Qwen/Qwen2.5-7B-Instruct"  # a hub id, not a path


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _write_yaml(tmp_path: Path, **fields) -> Path:
    return tiny_config(tmp_path, **fields)


def test_unknown_key(tmp_path, capsys):
    cfg = _write_yaml(tmp_path, lerning_rate=1e-3)
    err = _cli_error(capsys, ["train", str(cfg)])
    assert (
        "config.yaml:" in err
        and "unknown key 'lerning_rate'" in err
        and "did you mean 'learning_rate'" in err
    )


def test_unknown_markers_key(tmp_path, capsys):
    cfg = _write_yaml(tmp_path, markers={"fromat": "compact"})
    assert "markers.fromat: unknown key (did you mean 'format'?)" in _cli_error(capsys, ["train", str(cfg)])


def test_unknown_command_line_flag(tmp_path, capsys):
    cfg = _write_yaml(tmp_path)
    assert "--lerning_rate" in _cli_error(capsys, ["train", str(cfg), "--lerning_rate", "3"])


def test_unknown_category(tmp_path, capsys):
    cfg = _write_yaml(tmp_path, markers={"categories": ["domain", "colour"]})
    err = _cli_error(capsys, ["train", str(cfg)])
    assert "markers.categories: unknown category 'colour'" in err


@pytest.mark.parametrize("where", ["yaml", "cli"])
def test_dropout_outside_unit_interval(tmp_path, capsys, where):
    if where == "yaml":
        cfg = _write_yaml(tmp_path, markers={"dataset_dropout": 1.5})
        err = _cli_error(capsys, ["train", str(cfg)])
        assert "markers.dataset_dropout: 1.5 is outside [0, 1]" in err
    else:
        cfg = _write_yaml(tmp_path)
        err = _cli_error(capsys, ["train", str(cfg), "--markers.sample_dropout", "-0.1"])
        assert "markers.sample_dropout: '-0.1' is outside [0, 1]" in err


def test_missing_data_file(tmp_path, capsys):
    cfg = _write_yaml(tmp_path, train_file="nope.jsonl")
    err = _cli_error(capsys, ["train", str(cfg)])
    assert err.endswith(f"train_file: {tmp_path / 'nope.jsonl'}: no such file or directory")
    cfg = _write_yaml(tmp_path, eval_file="missing-eval.parquet")
    assert "eval_file: " in _cli_error(capsys, ["inspect", str(cfg)])


def test_model_path_that_does_not_exist(tmp_path, capsys):
    cfg = _write_yaml(tmp_path, model_name_or_path="./models/none")
    err = _cli_error(capsys, ["train", str(cfg)])
    assert err.endswith(f"model_name_or_path: {tmp_path / 'models' / 'none'}: no such directory")
    err = _cli_error(capsys, ["train", str(cfg), "--model_name_or_path", "/no/such/model"])
    assert "model_name_or_path: /no/such/model: no such directory" in err


def test_bad_value_type_and_bad_yaml(tmp_path, capsys):
    cfg = _write_yaml(tmp_path, learning_rate="fast")
    err = _cli_error(capsys, ["train", str(cfg)])
    assert "--learning_rate" in err and "invalid float value: 'fast'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("markers: [\n")
    assert "bad.yaml:" in _cli_error(capsys, ["train", str(bad)])
    assert "no such config file" in _cli_error(capsys, ["train", str(tmp_path / "none.yaml")])


def test_records_with_invalid_markers_name_file_line_field(tmp_path, capsys):
    recs = records(3)
    recs[1] = {**recs[1], "markers": {**recs[1]["markers"], "domain": "Cooking"}}
    write_records(tmp_path / "bad.jsonl", recs)
    cfg = _write_yaml(tmp_path, train_file="bad.jsonl")
    err = _cli_error(capsys, ["train", str(cfg)])
    assert f"{tmp_path / 'bad.jsonl'}:2: markers.domain: unknown value 'Cooking'" in err


def test_programmatic_config_validates_markers():
    from treasure.train.config import TreasureSFTConfig

    base = {"output_dir": "x", "use_cpu": True, "bf16": False, "activation_checkpointing": False}
    with pytest.raises(ConfigError, match="markers.placement"):
        TreasureSFTConfig(**base, markers={"placement": "middle"})
    with pytest.raises(ConfigError, match="completion_only_loss"):
        TreasureSFTConfig(**base, completion_only_loss=False)
    with pytest.raises(ConfigError, match="markers: expected a mapping"):
        TreasureSFTConfig(**base, markers="compact")
    args = TreasureSFTConfig(**base, markers=json.dumps({"format": "compact"}))
    assert args.marker_config.format == "compact"
    assert yaml.safe_load(yaml.safe_dump(args.markers)) == args.markers
