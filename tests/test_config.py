"""Configuration (tianci.config): presets, CLI flags generated from the dataclasses, validation."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

from tianci.config import (SECTIONS, ConfigError, GPTConfig, NGramConfig, TrainConfig, from_dict, load_preset,
                           preset_names, to_dict)
from tianci.flags import add_config_flags, apply_overrides

RUNG_PRESETS = ["bigram", "position", "attention", "multihead", "feedforward", "blocks", "residual", "projection",
                "layernorm", "dropout", "ci-cpu", "ci-gpu", "counting"]


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return p.parse_args(list(argv))


def test_every_field_has_a_kebab_case_flag():
    """Guards: a config field added to a dataclass but unreachable from the command line."""
    p = argparse.ArgumentParser()
    add_config_flags(p)
    flags = {s for a in p._actions for s in a.option_strings}
    for cls in (GPTConfig, TrainConfig, NGramConfig):
        for f in fields(cls):
            assert "--" + f.name.replace("_", "-") in flags, f.name


def test_shipped_presets_load_and_validate():
    """Guards: a shipped preset with a typo'd field or an out-of-range value (found only at train time)."""
    names = preset_names()
    assert set(RUNG_PRESETS) <= set(names)
    for name in names:
        pr = load_preset(name)
        pr.model.validate()
        pr.train.validate()
        pr.ngram.validate()
        assert pr.description, name


def test_ci_gpu_is_the_tutorials_final_config():
    """Guards: drift of the ci-gpu preset away from the tutorial's published hyper-parameters."""
    m, t = load_preset("ci-gpu").model, load_preset("ci-gpu").train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (t.batch_size, t.learning_rate) == (64, 3e-4)


def test_flags_override_presets_field_by_field():
    """Guards: flags ignored, or unset flags (default None) clobbering preset values."""
    pr = apply_overrides(load_preset("ci-cpu"), parse("--n-layer", "2", "--learning-rate", "1e-3",
                                                      "--no-bias", "--qk-norm", "--max-time", "0"))
    base = load_preset("ci-cpu")
    assert (pr.model.n_layer, pr.train.learning_rate, pr.model.bias, pr.model.qk_norm) == (2, 1e-3, False, True)
    assert pr.train.max_time == 0.0
    assert pr.model.n_embd == base.model.n_embd and pr.train.batch_size == base.train.batch_size


def test_shared_flag_name_reaches_every_section():
    """Guards: --seed setting the trainer's seed but silently not the counting model's (both
    TrainConfig and NGramConfig have a `seed` field, and only one flag can exist)."""
    pr = apply_overrides(load_preset("counting"), parse("--seed", "5"))
    assert pr.ngram.seed == 5 and pr.train.seed == 5


@pytest.mark.parametrize("argv,field,allowed", [
    (["--dropout", "1.5"], "dropout", "0 <= dropout < 1"),
    (["--n-head", "5"], "n_head", "divisor of n_embd"),
    (["--block-size", "0"], "block_size", "1..65536"),
    (["--learning-rate", "-1"], "learning_rate", "> 0"),
    (["--init-std", "-1"], "init_std", "0 < init_std <= 1"),
    (["--weight-decay", "-1"], "weight_decay", ">= 0"),
    (["--n-embd", "100000"], "n_embd", "1..16384"),
    (["--learning-rate", "inf"], "learning_rate", "a finite number"),
    (["--max-time", "nan"], "max_time", "a finite number"),
    (["--min-lr", "0.1", "--learning-rate", "0.01"], "min_lr", "<= learning_rate"),
    (["--grad-accum", "0"], "grad_accum", "1..65536"),
    (["--order", "9"], "order", "1..8"),
    (["--cooldown-frac", "0"], "cooldown_frac", "0 < cooldown_frac <= 1"),
    (["--value-embeds", "--attn", "none"], "value_embeds", "attn='none'"),
])
def test_validation_errors_name_field_and_range(argv, field, allowed):
    """Guards: a bad value that fails deep inside torch (or trains silently: inf learning rate,
    negative weight decay or init std, an n_embd that cannot fit in memory), or an error that does
    not say which field is wrong and what is allowed."""
    with pytest.raises(ConfigError) as e:
        apply_overrides(load_preset("ci-cpu" if field != "order" else "counting"), parse(*argv))
    assert field in str(e.value) and allowed in str(e.value)
    assert e.value.param == field


def test_enum_flags_list_their_choices(capsys):
    """Guards: enum-like fields taking any string at the command line (a typo found only at
    validation, with no list of what is allowed in --help)."""
    with pytest.raises(SystemExit):
        parse("--attn", "linear")
    assert "none" in capsys.readouterr().err


def test_flag_help_shows_the_chosen_presets_values(capsys):
    """Guards: --help showing the dataclass default (`--n-layer (default 6)`) while the preset in
    force uses another value, and flags without help text or allowed range."""
    from tianci.cli import main

    for argv, want in ((["train", "--help"], "(ci-cpu: 4)"), (["train", "--preset", "ci-gpu", "--help"], "(ci-gpu: 6)")):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        line = out[out.index("--n-layer INT transformer"):][:80]
        assert "transformer blocks; 1..256" in line and want in line, line
        assert "--norm {none,layernorm,rmsnorm}" in out


def test_unknown_preset_lists_known_ones():
    """Guards: a typo'd --preset giving a bare FileNotFoundError instead of the list of choices."""
    with pytest.raises(ConfigError) as e:
        load_preset("ci-cpuu")
    assert "ci-cpuu" in str(e.value) and "ci-cpu" in str(e.value) and "bigram" in str(e.value)


def test_preset_file_errors_name_the_field(tmp_path):
    """Guards: unknown fields in a user's preset file being ignored (a silently wrong run)."""
    p = tmp_path / "mine.toml"
    p.write_text('[model]\nn_layers = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="n_layers"):
        load_preset(str(p))
    p.write_text('[model]\nn_layer = "three"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="n_layer"):
        load_preset(str(p))
    p.write_text('[model]\nn_layer = 3\n[train]\nmax_iters = 7\n', encoding="utf-8")
    pr = load_preset(str(p))
    assert (pr.name, pr.model.n_layer, pr.train.max_iters) == ("mine", 3, 7)


def test_to_dict_from_dict_round_trip():
    """Guards: config.json that does not load back into the same preset (resume/sample would rebuild another model)."""
    for name in RUNG_PRESETS:
        pr = load_preset(name)
        assert from_dict(to_dict(pr)) == pr
    assert set(SECTIONS) == {"model", "train", "ngram"}


def test_config_and_cli_parser_do_not_import_torch():
    """Guards: `import tianci`, the config and the CLI's argument parsing pulling in torch (slow
    start-up; the counting model and `tianci --help` must work without it)."""
    code = ("import sys, tianci, tianci.config, tianci.cli, tianci.errors\n"
            "tianci.cli.build_parser(['presets'])\n"
            "from tianci.commands import presets\n"
            "bad = [m for m in ('torch', 'numpy') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
