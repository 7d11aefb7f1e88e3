"""``python -m training``: the generator commands' flags take their defaults from CharConfig and TrainConfig (no
restated value can drift from the model's), and every command's module is there with its two functions."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from training.__main__ import COMMANDS, build_parser
from training.generator.cli import config_defaults, flag_values
from training.generator.model import CharConfig
from training.generator.train import TrainConfig


def parse(*argv: str):
    return build_parser(argv[0]).parse_args(list(argv))


def test_train_generator_flag_defaults_are_charconfigs():
    args = parse("train-generator")
    fields = [f for f in dataclasses.fields(CharConfig) if f.name != "vocab_size"]  # vocab_size: from the text
    assert [f.name for f in fields] == ["cell", "embed_dim", "hidden_size", "num_layers", "dropout"]
    for f in fields:
        assert getattr(args, f.name) == f.default and type(getattr(args, f.name)) is type(f.default), f.name
    assert args.dropout == 0.2  # was 0.15 by hand while CharConfig said 0.2
    assert (args.cell, args.embed_dim, args.hidden_size, args.num_layers) == ("lstm", 64, 512, 2)
    assert CharConfig(vocab_size=93, **flag_values(args, CharConfig)) == CharConfig(vocab_size=93)


def test_train_generator_flag_defaults_are_trainconfigs():
    args = parse("train-generator")
    flagged = [f for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)]
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {f.name for f in flagged} == {"sample_every"}
    for f in flagged:
        assert getattr(args, f.name) == f.default, f.name
    assert TrainConfig(**flag_values(args, TrainConfig)) == TrainConfig()
    assert (args.batch_size, args.bptt, args.lr, args.patience, args.bf16, args.time_budget_min) == (
        64,
        128,
        2e-3,
        4,
        False,
        None,
    )


def test_train_generator_flags_still_override_the_defaults():
    args = parse(
        "train-generator",
        "--dropout",
        "0.25",
        "--cell",
        "gru",
        "--hidden-size",
        "384",
        "--bf16",
        "--time-budget-min",
        "1.5",
    )
    cfg = CharConfig(vocab_size=10, **flag_values(args, CharConfig))
    assert (cfg.dropout, cfg.cell, cfg.hidden_size, cfg.embed_dim) == (0.25, "gru", 384, 64)
    train = TrainConfig(**flag_values(args, TrainConfig))
    assert (train.bf16, train.time_budget_min, train.sample_every) == (True, 1.5, 1)
    with pytest.raises(SystemExit):
        parse("train-generator", "--cell", "transformer")  # choices are model.CELLS


def test_config_defaults_leave_out_fields_without_one():
    assert config_defaults(CharConfig) == {
        "cell": "lstm",
        "embed_dim": 64,
        "hidden_size": 512,
        "num_layers": 2,
        "dropout": 0.2,
    }
    assert config_defaults(TrainConfig)["eval_every"] == 200 and "vocab_size" not in config_defaults(CharConfig)


def test_bench_generator_shape_defaults_are_the_generators():
    args = parse("bench-generator")
    assert (
        (args.embed_dim, args.batch_size, args.bptt)
        == (CharConfig.embed_dim, TrainConfig.batch_size, TrainConfig.bptt)
        == (64, 64, 128)
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_module_is_there_with_its_two_functions(command):
    """No "module not there yet" fallback in build_parser: a missing one is an error, and this test finds it."""
    module = importlib.import_module(COMMANDS[command][0])
    assert callable(module.add_arguments) and callable(module.main)
    sub = next(a for a in build_parser(command)._actions if a.dest == "command").choices[command]
    assert len(sub._actions) > 1, command  # add_arguments added its flags (beyond --help)
