"""Training configuration: files, overrides, and errors that name the key."""
from __future__ import annotations

import json

import pytest

from rnnkit.config import ConfigError, TrainConfig, config_from_mapping, load_config_file
from rnnkit.errors import UserError


def test_defaults_are_valid_and_serialize():
    cfg = TrainConfig().validate()
    assert json.loads(cfg.to_json())["corpus"] == "human_numbers"


def test_toml_and_yaml_files_load(tmp_path):
    (tmp_path / "c.toml").write_text('epochs = 3\nlr = 1e-2\nprecision = "bf16"\n')
    (tmp_path / "c.yaml").write_text("epochs: 4\nbs: 32\nclip: null\n")
    cfg = config_from_mapping(load_config_file(tmp_path / "c.toml"))
    assert (cfg.epochs, cfg.lr, cfg.precision) == (3, 1e-2, "bf16")
    cfg = config_from_mapping(load_config_file(tmp_path / "c.yaml"))
    assert (cfg.epochs, cfg.bs, cfg.clip) == (4, 32, None)


def test_later_values_override_earlier(tmp_path):
    base = config_from_mapping({"epochs": 3, "lr": 0.5})
    cfg = config_from_mapping({"lr": 0.1}, base=base)
    assert (cfg.epochs, cfg.lr) == (3, 0.1) and base.lr == 0.5


def test_int_accepted_for_float_but_not_bool_for_int():
    assert config_from_mapping({"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="epochs must be int, got True"):
        config_from_mapping({"epochs": True})


@pytest.mark.parametrize("values, match", [
    ({"epocs": 3}, "unknown key 'epocs'; did you mean 'epochs'"),
    ({"lr": "fast"}, "lr must be float, got 'fast'"),
    ({"bs": 3.5}, "bs must be int"),
])
def test_unknown_or_ill_typed_keys_are_named(values, match):
    assert issubclass(ConfigError, UserError)  # the command line prints it in one line
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(values, source="c.toml")


@pytest.mark.parametrize("values, match", [
    ({"lr": 0.0}, "lr=0.0 must be positive"),
    ({"preset": "huge"}, "preset='huge' is not a preset"),
    ({"corpus": "imdb"}, "is not a known corpus"),
    ({"corpus": "ptb"}, "needs data="),
    ({"input_p": 1.5}, "probability"),
    ({"seed": -1}, "seed=-1 must be >= 0"),
])
def test_bad_values_are_named(values, match):
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(values).validate()


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="could not be parsed"):
        load_config_file(tmp_path / "bad.toml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match="use a .toml"):
        load_config_file(tmp_path / "c.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="table of options"):
        load_config_file(tmp_path / "list.yaml")


def test_a_file_that_does_not_hold_a_table_is_a_config_error():
    with pytest.raises(ConfigError, match=r"runs/r/config.json must hold a table of options, not list"):
        config_from_mapping([1, 2], source="runs/r/config.json")


def test_unreadable_files_and_multi_line_parse_errors_give_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a .toml"):
        load_config_file(tmp_path)
    (tmp_path / "latin1.toml").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml is not UTF-8 text \(byte 11\); save it as UTF-8"):
        load_config_file(tmp_path / "latin1.toml")
    (tmp_path / "bad.yaml").write_text("epochs: [\n")  # PyYAML's own message spans four lines
    with pytest.raises(ConfigError) as e:
        load_config_file(tmp_path / "bad.yaml")
    assert "\n" not in str(e.value)
    assert str(e.value).endswith("could not be parsed: expected the node content, but found '<stream end>' "
                                 "(line 2, column 1)")
