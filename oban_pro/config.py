"""The node's configuration: one typed object, every field documented with its default.

Sources, highest first: CLI flags > environment (``OBAN_<FIELD>``, e.g. ``OBAN_PROCESSES``) >
``oban.toml`` (top level or an ``[oban]`` table) or ``[tool.oban]`` in ``pyproject.toml`` >
the defaults below. Every value is validated; an error names the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .naming import validate_name, validate_prefix

ENV_PREFIX = "OBAN_"


def default_node() -> str:
    """The node name: ``OBAN_NODE``-less default is the host name."""
    return socket.gethostname() or "localhost"


@dataclass
class Config:
    """Everything a node needs. Field comments are the documentation the README table mirrors."""

    #: PostgreSQL DSN; None means OBAN_DSN / DATABASE_URL / embedded server.
    dsn: str | None = None
    #: Schema holding the oban tables.
    prefix: str = "public"
    #: Instance name (Oban's ``name``); part of producer rows and leadership.
    name: str = "Oban"
    #: This node's name, written into ``attempted_by[1]``.
    node: str = field(default_factory=default_node)
    #: Queues to run here and their concurrency limits, e.g. ``{"default": 10}``.
    queues: dict[str, int] = field(default_factory=dict)
    #: Worker processes in the pool (default: CPU count).
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: How children start: forkserver (default), spawn or fork.
    start_method: str = "forkserver"
    #: Modules that define workers and cron entries; imported here and in every child.
    imports: list[str] = field(default_factory=list)
    #: Seconds running jobs get to finish on graceful shutdown before they are released.
    shutdown_timeout: float = 15.0
    #: Recycle a child after this many jobs (0 = never).
    max_jobs_per_child: int = 0
    #: A child whose RSS passes this many bytes takes no new jobs, finishes its running ones and
    #: is replaced (checked while jobs run; 0 = no limit).
    max_memory: int = 0
    #: A draining child that grows past this many bytes is killed (0 = 1.5 x max_memory).
    memory_ceiling: int = 0
    #: Discard a job after it has killed its child this many times (poison-job guard).
    max_crashes: int = 3
    #: Default per-job timeout in seconds for workers that set none (0 = no timeout).
    job_timeout: float = 0.0
    #: Threads per child for sync jobs, started only as needed (0 = the sum of the queues'
    #: limits, so every queue can reach its limit whatever the placement; raised when a queue
    #: is scaled up).
    threads: int = 0
    #: Seconds a job asked to stop (timeout, cancel) gets before its child is killed; other jobs
    #: in that child are then given back (available, attempt returned).
    kill_grace: float = 3.0
    #: Queues whose jobs each run alone in a child (as workers marked ``isolated=True``).
    isolated_queues: list[str] = field(default_factory=list)
    #: Seconds between fetch polls when no notification arrives (jittered +-10%).
    poll_interval: float = 1.0
    #: Seconds between producer heartbeats.
    heartbeat_interval: float = 5.0
    #: A producer whose heartbeat is older than this is dead; its jobs are rescued.
    heartbeat_ttl: float = 30.0
    #: Seconds between lifeline runs (leader only).
    lifeline_interval: float = 5.0
    #: Time-based fallback for executing jobs of engines that never heartbeat (seconds).
    rescue_after: float = 3600.0
    #: Seconds between staging runs (scheduled/retryable -> available).
    stage_interval: float = 1.0
    #: Seconds between pruner runs (leader only).
    prune_interval: float = 60.0
    #: Finished jobs older than this many seconds are deleted (0 = never prune).
    prune_max_age: float = 86400.0
    #: Rows deleted per pruner statement.
    prune_limit: int = 10000
    #: Leadership lease in seconds; the leader refreshes it every third of that, and followers
    #: look for an expired lease every heartbeat_interval (or third of the lease, if shorter).
    leader_ttl: float = 30.0
    #: Seconds between gossip checks sent for Oban Web.
    gossip_interval: float = 5.0
    #: Acks written per statement at most.
    ack_batch_size: int = 1000
    #: Extra seconds the acker waits for a batch to fill (0: write at once; acks arriving during
    #: a write form the next batch).
    ack_interval: float = 0.0
    #: Buffered acks above which fetching pauses (back-pressure).
    ack_max_backlog: int = 50000
    #: Database connections in the coordinator's pool.
    pool_size: int = 4
    #: Serve Prometheus /metrics on this port (None = off).
    metrics_port: int | None = None
    #: Address the metrics endpoint binds to.
    metrics_host: str = "127.0.0.1"
    #: Log level for the CLI.
    log_level: str = "info"
    #: Log format for the CLI: text or json.
    log_format: str = "text"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        validate_prefix(self.prefix)
        _check(self.name and isinstance(self.name, str), "name", self.name, "non-blank text")
        _check(self.node and isinstance(self.node, str), "node", self.node, "non-blank text")
        for queue, limit in self.queues.items():
            validate_name("queue", queue)
            _check(
                isinstance(limit, int) and limit > 0,
                f"queues[{queue}]",
                limit,
                "a positive integer limit",
            )
        _check(_positive_int(self.processes), "processes", self.processes, "an integer >= 1")
        _check(
            self.start_method in ("forkserver", "spawn", "fork"),
            "start_method",
            self.start_method,
            "forkserver, spawn or fork",
        )
        _check(_positive_int(self.max_crashes), "max_crashes", self.max_crashes, "an integer >= 1")
        _check(_positive_int(self.ack_batch_size), "ack_batch_size", self.ack_batch_size, ">= 1")
        _check(_positive_int(self.pool_size), "pool_size", self.pool_size, "an integer >= 1")
        for name in (
            "max_jobs_per_child",
            "max_memory",
            "memory_ceiling",
            "threads",
            "prune_limit",
            "ack_max_backlog",
        ):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, name, value, "an integer >= 0")
        for name in (
            "shutdown_timeout",
            "job_timeout",
            "poll_interval",
            "heartbeat_interval",
            "heartbeat_ttl",
            "lifeline_interval",
            "rescue_after",
            "stage_interval",
            "prune_interval",
            "prune_max_age",
            "leader_ttl",
            "gossip_interval",
            "ack_interval",
            "kill_grace",
        ):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and value >= 0, name, value, "seconds >= 0")
        for queue in self.isolated_queues:
            validate_name("queue", queue)
        _check(
            self.heartbeat_ttl > self.heartbeat_interval,
            "heartbeat_ttl",
            self.heartbeat_ttl,
            f"more than heartbeat_interval ({self.heartbeat_interval})",
        )
        _check(self.log_format in ("text", "json"), "log_format", self.log_format, "text or json")

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(ok: object, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(name, value, expected)


# -- parsing values that arrive as strings (env, CLI, toml) ------------------------------------

_SIZE_RE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib|k|m|g|t)?\s*")
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: str | int, name: str = "max_memory") -> int:
    """``"512MB"`` -> bytes. Plain integers are bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.fullmatch(str(value))
    if not match:
        raise ConfigError(name, value, "a size such as 536870912, 512MiB or 2GB")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower() if unit else None])


def parse_queues(value: str | Mapping[str, int]) -> dict[str, int]:
    """``"default:10,media:4"`` -> ``{"default": 10, "media": 4}``."""
    if isinstance(value, Mapping):
        return {str(k): _queue_limit(str(k), v) for k, v in value.items()}
    queues: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in str(value).split(","))):
        name, sep, limit = part.rpartition(":")
        if not sep or not name:
            raise ConfigError("queues", value, "name:limit pairs such as default:10,media:4")
        queues[name] = _queue_limit(name, limit)
    return queues


def _queue_limit(name: str, limit: object) -> int:
    try:
        return int(limit)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"queues[{name}]", limit, "an integer limit") from None


def parse_list(value: str | list[str]) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _parse_bool_or_none_int(value: object) -> int | None:
    if value in (None, "", "none", "off"):
        return None
    return int(value)  # type: ignore[call-overload]


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "queues": parse_queues,
    "imports": parse_list,
    "isolated_queues": parse_list,
    "max_memory": parse_size,
    "memory_ceiling": lambda value: parse_size(value, "memory_ceiling"),
    "metrics_port": _parse_bool_or_none_int,
}


def coerce(name: str, raw: Any) -> Any:
    """Convert ``raw`` (often a string) to the type of field ``name``."""
    if name in _PARSERS:
        return _PARSERS[name](raw)
    default = _field_defaults()[name]
    try:
        if isinstance(default, bool):
            return str(raw).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except (TypeError, ValueError):
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ConfigError(name, raw, kind) from None
    return raw if raw is None else str(raw)


def _field_defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(Config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def read_file_settings(cwd: Path | None = None, path: str | os.PathLike[str] | None = None) -> dict:
    """Settings from ``path``, else ``oban.toml``, else ``[tool.oban]`` of ``pyproject.toml``."""
    cwd = cwd or Path.cwd()
    if path is not None:
        return _load_toml(Path(path), required=True)
    toml = cwd / "oban.toml"
    if toml.exists():
        return _load_toml(toml)
    pyproject = cwd / "pyproject.toml"
    if pyproject.exists():
        data = tomllib.loads(pyproject.read_text())
        return dict(data.get("tool", {}).get("oban", {}))
    return {}


def _load_toml(path: Path, required: bool = False) -> dict:
    if not path.exists():
        if required:
            raise ConfigError("config", str(path), "an existing TOML file")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"valid TOML ({exc})") from None
    return dict(data.get("oban", data))


def env_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    out = {}
    for name in field_names():
        key = ENV_PREFIX + name.upper()
        if key in environ and environ[key] != "":
            out[name] = environ[key]
    return out


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Merge file < environment < ``overrides`` (CLI flags; ``None`` values are ignored)."""
    merged: dict[str, Any] = {}
    known = set(field_names())
    for source in (read_file_settings(cwd, config_file), env_settings(environ)):
        for key, raw in source.items():
            if key not in known:
                raise ConfigError(key, raw, f"a known setting ({', '.join(sorted(known))})")
            merged[key] = coerce(key, raw)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in known:
            raise ConfigError(key, raw, "a known setting")
        merged[key] = coerce(key, raw)
    return Config(**merged)
