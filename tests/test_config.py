"""Configuration: defaults, precedence (CLI > env > file), parsing and validation errors."""

from __future__ import annotations

import pytest

from oban_pro import Config, ConfigError
from oban_pro.config import load_config, parse_queues, parse_size


def test_defaults_are_valid_and_documented():
    config = Config()
    assert config.prefix == "public" and config.processes >= 1 and config.kill_grace == 3.0
    assert config.threads == 0 and config.isolated_queues == []
    assert config.heartbeat_ttl + config.lifeline_interval == 35.0


def test_precedence_cli_over_env_over_file(tmp_path):
    (tmp_path / "oban.toml").write_text('processes = 3\nqueues = {default = 5}\nnode = "file"\n')
    env = {"OBAN_PROCESSES": "4", "OBAN_NODE": "env"}
    config = load_config({"node": "cli"}, environ=env, cwd=tmp_path)
    assert (config.processes, config.node, config.queues) == (4, "cli", {"default": 5})
    assert load_config({}, environ={}, cwd=tmp_path).processes == 3


def test_pyproject_tool_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.oban]\nqueues = "a:1,b:2"\n')
    assert load_config({}, environ={}, cwd=tmp_path).queues == {"a": 1, "b": 2}


def test_parsers():
    assert parse_queues("default:10, media:4") == {"default": 10, "media": 4}
    assert parse_size("512MiB") == 512 * 1024**2 and parse_size("2GB") == 2 * 10**9
    assert parse_size(1024) == 1024


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"processes": "0"}, "processes"),
        ({"processes": "many"}, "processes"),
        ({"queues": "default"}, "queues"),
        ({"queues": "default:x"}, "queues[default]"),
        ({"queues": "default:0"}, "queues[default]"),
        ({"prefix": "bad prefix"}, "prefix"),
        ({"start_method": "thread"}, "start_method"),
        ({"max_memory": "lots"}, "max_memory"),
        ({"heartbeat_ttl": "1", "heartbeat_interval": "5"}, "heartbeat_ttl"),
        ({"log_format": "xml"}, "log_format"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_validation_errors_name_the_field(overrides, field, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(overrides, environ={}, cwd=tmp_path)
    assert err.value.field == field
    assert field in str(err.value)


def test_unknown_env_settings_are_ignored_but_unknown_file_keys_fail(tmp_path):
    assert load_config({}, environ={"OBAN_SOMETHING_ELSE": "1"}, cwd=tmp_path)
    (tmp_path / "oban.toml").write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="colour"):
        load_config({}, environ={}, cwd=tmp_path)
