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


# -- limits across nodes in every source ----------------------------------------------------

API = '{"api": {"limit": 5, "global_limit": 10, "rate_limit": {"allowed": 60, "period": 60}}}'


def _api_limits(config):
    limits = config.cluster_limits["api"]
    return config.queues["api"], limits.global_limit.allowed, limits.rate_limit.allowed


def test_queue_limits_from_the_cli_the_environment_and_the_file(tmp_path):
    assert _api_limits(load_config({"queues": API}, environ={}, cwd=tmp_path)) == (5, 10, 60)
    assert _api_limits(load_config({}, environ={"OBAN_QUEUES": API}, cwd=tmp_path)) == (5, 10, 60)
    (tmp_path / "oban.toml").write_text(
        "[queues.api]\nlimit = 5\nglobal_limit = 10\nrate_limit = {allowed = 60, period = 60}\n"
        "[queues.mail]\nlimit = 2\npaused = true\n"
        '[queues.tenants]\nglobal_limit = {allowed = 1, partition = {fields = ["args"], '
        'keys = ["tenant"]}}\n'
    )
    config = load_config({}, environ={}, cwd=tmp_path)
    assert _api_limits(config) == (5, 10, 60)
    assert config.queues == {"api": 5, "mail": 2, "tenants": 10}
    assert config.paused_queues == ["mail"] and "mail" not in config.cluster_limits
    tenants = config.cluster_limits["tenants"].global_limit
    assert tenants.partition.fields == ("args",) and tenants.partition.keys == ("tenant",)


@pytest.mark.parametrize(
    ("queues", "field"),
    [
        ('{"api": {"global_limit": -1}}', "queues[api].global_limit"),
        ('{"api": {"global_limit": 0}}', "queues[api].global_limit"),
        ('{"api": {"global_limit": 99999999999}}', "queues[api].global_limit"),
        ('{"api": {"rate_limit": {"allowed": 0, "period": 1}}}', "queues[api].rate_limit.allowed"),
        ('{"api": {"rate_limit": {"allowed": 5, "period": 0}}}', "queues[api].rate_limit.period"),
        ('{"api": {"rate_limit": 5}}', "queues[api].rate_limit"),
        (
            '{"api": {"global_limit": {"allowed": 2, "partition": {"fields": ["tenant"]}}}}',
            "queues[api].global_limit.partition.fields",
        ),
        (
            '{"api": {"global_limit": {"allowed": 2, "partition": {"fields": ["args"], '
            '"key": ["t"]}}}}',
            "queues[api].global_limit.partition",
        ),
        ('{"api": {"partition": {"fields": ["worker"]}}}', "queues[api].partition"),
        ('{"api": {"global_limt": 3}}', "queues[api].global_limt"),
        ('{"api": ', "queues"),
        ("[1, 2]", "queues"),
    ],
)
def test_hostile_queue_limits_are_refused_naming_the_option(queues, field, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config({"queues": queues}, environ={}, cwd=tmp_path)
    assert err.value.field == field, str(err.value)
    assert field in str(err.value)


def test_both_limits_must_partition_alike():
    with pytest.raises(ConfigError, match="partition alike"):
        Config(
            queues={
                "api": {
                    "global_limit": {"allowed": 2, "partition": {"fields": ["worker"]}},
                    "rate_limit": {"allowed": 5, "period": 1, "partition": {"fields": ["args"]}},
                }
            }
        )


def test_cluster_limits_of_a_queue_not_run_here_are_refused():
    with pytest.raises(ConfigError) as err:
        Config(queues={"a": 1}, cluster_limits={"b": {"global_limit": 2}})
    assert err.value.field == "cluster_limits[b]"
