"""The node's configuration: one typed object, every field documented with its default.

Sources, highest first: CLI flags > environment (``OBAN_<FIELD>``, e.g. ``OBAN_PROCESSES``) >
``oban.toml`` (top level or an ``[oban]`` table) or ``[tool.oban]`` in ``pyproject.toml`` >
the defaults below. Every value is validated; an error names the field and the bad value.

Oban.py's settings are accepted under its own names too (:data:`OBANPY_SETTINGS`), in every
source and as ``Config(...)``/``Oban(...)`` keywords: ``shutdown_grace_period``, the
``pool_*`` settings, ``leadership``, ``[queues.NAME]`` tables (``limit``, ``paused``) and the
``[pruner]``, ``[lifeline]``, ``[stager]``, ``[refresher]``, ``[scheduler]``, ``[metrics]`` and
``[notifier]`` tables. Each is applied through the oban_pro field it means; the few that have
no meaning here are accepted with a logged warning that says why (never silently).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, ValidationError
from .limits import QueueLimits
from .naming import validate_name, validate_prefix

ENV_PREFIX = "OBAN_"

log = logging.getLogger(__name__)

#: Marks an Oban.py-named keyword that was not given (``None`` means something for some).
_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()


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
    #: Queues to run here and their concurrency limits on this node, e.g. ``{"default": 10}``.
    #: A queue may be given as a table of options instead: ``{"api": {"limit": 5,
    #: "global_limit": 10, "rate_limit": {"allowed": 60, "period": 60}, "paused": False}}``;
    #: its limits across nodes then go to ``cluster_limits``.
    queues: dict[str, int] = field(default_factory=dict)
    #: Limits across all nodes per queue (``global_limit``, ``rate_limit``, each optionally
    #: partitioned): see :mod:`oban_pro.limits`. Usually given in the queue tables above.
    cluster_limits: dict[str, QueueLimits] = field(default_factory=dict)
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
    #: Seconds a cancelled running job gets to see ``job.cancelled()`` and return by itself
    #: before it is asked to stop (then ``kill_grace`` applies); 0 = stop it at once.
    cancel_grace: float = 1.0
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
    #: Seconds between the leader's counts of jobs and workflows per state (metrics on only).
    gauge_interval: float = 5.0
    #: Acks written per statement at most.
    ack_batch_size: int = 1000
    #: Extra seconds the acker waits for a batch to fill (0: write at once; acks arriving during
    #: a write form the next batch).
    ack_interval: float = 0.0
    #: Longest an outcome waits for others to share its write (seconds); never longer than its
    #: job ran; jobs under 2 ms are written at once (0: never wait). Saves the cores a statement
    #: and a commit per job when long jobs finish one by one.
    ack_linger: float = 0.05
    #: Buffered acks above which fetching pauses (back-pressure).
    ack_max_backlog: int = 50000
    #: Database connections in the coordinator's pool (a node also keeps one for LISTEN and one
    #: for heartbeats, so it opens at most pool_size + 2).
    pool_size: int = 4
    #: Serve Prometheus /metrics on this port (None = off).
    metrics_port: int | None = None
    #: Address the metrics endpoint binds to.
    metrics_host: str = "127.0.0.1"
    #: Log level for the CLI.
    log_level: str = "info"
    #: Log format for the CLI: text or json.
    log_format: str = "text"
    #: Whether this node takes part in leader election (the leader runs cron, staging, rescue
    #: and pruning). None: every node that runs queues does. Oban.py's ``leadership``.
    leadership: bool | None = None
    #: Queues that start paused (Oban.py's ``[queues.NAME] paused = true``); resume them with
    #: ``resume_queue``.
    paused_queues: list[str] = field(default_factory=list)
    #: IANA timezone of cron expressions whose entry names none (Oban.py's
    #: ``scheduler.timezone``).
    cron_timezone: str = "Etc/UTC"
    #: Modules with cron workers to import at start (Oban.py's ``--cron-modules``).
    cron_modules: list[str] = field(default_factory=list)
    #: Folders to search for modules with ``@worker``/``@job`` cron workers, imported at start
    #: (Oban.py's ``--cron-paths``).
    cron_paths: list[str] = field(default_factory=list)
    #: Connections the pool keeps open (``pool_size`` is the most it opens).
    pool_min_size: int = 1
    #: Seconds to wait for a connection from the pool.
    pool_timeout: float = 30.0
    #: Seconds after which a pooled connection is replaced.
    pool_max_lifetime: float = 3600.0
    #: Seconds an idle pooled connection is kept above ``pool_min_size``.
    pool_max_idle: float = 600.0
    #: Check each connection before handing it out of the pool.
    pool_check: bool = False

    # Oban.py's names, accepted as keywords and mapped onto the fields above (not stored).
    shutdown_grace_period: InitVar[Any] = _UNSET
    pool_max_size: InitVar[Any] = _UNSET
    pruner: InitVar[Any] = _UNSET
    lifeline: InitVar[Any] = _UNSET
    stager: InitVar[Any] = _UNSET
    refresher: InitVar[Any] = _UNSET
    scheduler: InitVar[Any] = _UNSET
    metrics: InitVar[Any] = _UNSET
    notifier: InitVar[Any] = _UNSET

    def __post_init__(self, *obanpy: Any) -> None:
        given = {
            name: value
            for name, value in zip(OBANPY_SETTINGS, obanpy, strict=True)
            if value is not _UNSET
        }
        defaults = _field_defaults()
        for name, value in translate_obanpy(given).items():
            current = getattr(self, name)
            if current != defaults[name] and current != value:
                raise ConfigError(
                    name, current, f"one value: it was also given as {value!r} by Oban.py's name"
                )
            setattr(self, name, value)
        if any(isinstance(limit, Mapping) for limit in self.queues.values()):
            specs = parse_queue_specs(self.queues)
            self.queues = specs.limits
            self.paused_queues = sorted({*self.paused_queues, *specs.paused})
            self.cluster_limits = {**self.cluster_limits, **specs.cluster_limits}
        self.cluster_limits = {
            queue: parsed
            for queue, limits in self.cluster_limits.items()
            if (parsed := _queue_limits(queue, limits)) is not None
        }
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
        for queue in self.cluster_limits:
            _check(
                queue in self.queues,
                f"cluster_limits[{queue}]",
                queue,
                "a queue this node runs (add it to queues, or give its limits in its table)",
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
            "gauge_interval",
            "ack_interval",
            "ack_linger",
            "kill_grace",
            "cancel_grace",
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
        self._validate_compat()

    def _validate_compat(self) -> None:
        _check(
            str(self.log_level).lower() in ("debug", "info", "warning", "error", "critical"),
            "log_level",
            self.log_level,
            "debug, info, warning, error or critical",
        )
        _check(
            self.leadership in (None, True, False),
            "leadership",
            self.leadership,
            "true, false or unset",
        )
        for name in ("paused_queues", "cron_modules", "cron_paths"):
            value = getattr(self, name)
            _check(
                isinstance(value, list) and all(isinstance(v, str) and v for v in value),
                name,
                value,
                "a list of names",
            )
        for queue in self.paused_queues:
            validate_name("queue", queue)
        _check(_is_zone(self.cron_timezone), "cron_timezone", self.cron_timezone, "an IANA zone")
        _check(_positive_int(self.pool_min_size), "pool_min_size", self.pool_min_size, ">= 1")
        _check(
            self.pool_min_size <= self.pool_size,
            "pool_min_size",
            self.pool_min_size,
            f"at most pool_size / pool_max_size ({self.pool_size})",
        )
        for name in ("pool_timeout", "pool_max_lifetime", "pool_max_idle"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
                name,
                value,
                "seconds > 0",
            )
        _check(isinstance(self.pool_check, bool), "pool_check", self.pool_check, "true or false")

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


def parse_queues(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"default:10,media:4"`` -> ``{"default": 10, "media": 4}``.

    A JSON object (``'{"api": {"limit": 5, "global_limit": 10}}'``, for ``--queues`` and
    ``OBAN_QUEUES``) or a mapping gives queues as tables of options (Oban.py's
    ``[queues.media] limit = 5``); those are returned as given, after checking them with
    :func:`parse_queue_specs`, for :class:`Config` to split.
    """
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError("queues", value, f"a valid JSON object ({exc})") from None
        if not isinstance(value, Mapping):
            raise ConfigError("queues", value, "a JSON object of queue tables")
    if isinstance(value, Mapping):
        parse_queue_specs(value)  # raises on the first bad option, naming it
        return dict(value)
    queues: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in str(value).split(","))):
        name, sep, limit = part.rpartition(":")
        if not sep or not name:
            raise ConfigError("queues", value, "name:limit pairs such as default:10,media:4")
        queues[name] = _queue_limit(name, limit)
    return queues


def _queue_limit(name: str, limit: object) -> int:
    if isinstance(limit, bool) or isinstance(limit, float) and not limit.is_integer():
        raise ConfigError(f"queues[{name}]", limit, "an integer limit")
    try:
        return int(limit)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"queues[{name}]", limit, "an integer limit") from None


#: Options of a queue table for its limits across nodes (see :mod:`oban_pro.limits`).
_CLUSTER_OPTIONS = ("global_limit", "rate_limit")


@dataclass(frozen=True)
class QueueSpecs:
    """Queue tables split by meaning: local limits, paused queues, limits across nodes."""

    limits: dict[str, int]
    paused: list[str]
    cluster_limits: dict[str, QueueLimits]


def parse_queue_specs(value: Mapping[str, Any]) -> QueueSpecs:
    """Queues given as ``{name: limit}`` or ``{name: {"limit": n, "paused": bool,
    "global_limit": ..., "rate_limit": ...}}`` -> :class:`QueueSpecs`.

    As in Oban.py, a table without ``limit`` gets 10. ``debounce_interval`` is accepted with a
    warning (it does not apply to oban_pro); any other key is an error naming it.
    """
    limits: dict[str, int] = {}
    paused: list[str] = []
    cluster: dict[str, QueueLimits] = {}
    for key, spec in value.items():
        name = str(key)
        if not isinstance(spec, Mapping):
            limits[name] = _queue_limit(name, spec)
            continue
        options = dict(spec)
        limits[name] = _queue_limit(name, options.pop("limit", 10))
        flag = options.pop("paused", False)
        if not isinstance(flag, bool):
            raise ConfigError(f"queues[{name}].paused", flag, "true or false")
        if flag:
            paused.append(name)
        given = {k: options.pop(k) for k in _CLUSTER_OPTIONS if k in options}
        queue_limits = _queue_limits(name, given)
        if queue_limits is not None:
            cluster[name] = queue_limits
        if "partition" in options:
            raise ConfigError(
                f"queues[{name}].partition",
                options["partition"],
                "a partition inside global_limit or rate_limit, e.g. global_limit = {allowed = "
                '10, partition = {fields = ["args"], keys = ["tenant"]}}',
            )
        if "debounce_interval" in options:
            _not_applied(
                f"queues[{name}].debounce_interval",
                options.pop("debounce_interval"),
                "oban_pro fetches as soon as a slot frees and coalesces fetches itself",
            )
        if options:
            bad = sorted(options)[0]
            raise ConfigError(
                f"queues[{name}].{bad}",
                options[bad],
                "a known queue option (limit, paused, global_limit, rate_limit, debounce_interval)",
            )
    return QueueSpecs(limits, paused, cluster)


def _queue_limits(queue: str, value: Any) -> QueueLimits | None:
    """A queue's limits across nodes from their options (or as already parsed)."""
    if isinstance(value, QueueLimits) or value is None:
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"cluster_limits[{queue}]", value, "global_limit / rate_limit options")
    try:
        return QueueLimits.parse(value, queue)
    except ValidationError as exc:
        raise ConfigError(exc.field, value, "", why=exc.reason) from None


def parse_list(value: str | list[str]) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _parse_bool_or_none_int(value: object) -> int | None:
    if value in (None, "", "none", "off"):
        return None
    return int(value)  # type: ignore[call-overload]


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def parse_cluster_limits(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """``'{"api": {"global_limit": 10}}'`` (JSON, for ``OBAN_CLUSTER_LIMITS``) or a mapping."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError("cluster_limits", value, f"a valid JSON object ({exc})") from None
    if not isinstance(value, Mapping):
        raise ConfigError("cluster_limits", value, "a JSON object of queue limits")
    return dict(value)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "queues": parse_queues,
    "cluster_limits": parse_cluster_limits,
    "paused_queues": parse_list,
    "cron_modules": parse_list,
    "cron_paths": parse_list,
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
    if name == "leadership":
        default = False  # a bool, unset by default
    if name == "shutdown_timeout" and raw is None:
        return math.inf  # Oban.py's shutdown_grace_period = None: wait for running jobs
    try:
        if isinstance(default, bool):
            return _parse_bool(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except (TypeError, ValueError):
        kind = (
            "true or false"
            if isinstance(default, bool)
            else "an integer"
            if isinstance(default, int)
            else "a number"
        )
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


def env_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``OBAN_<FIELD>`` for every field, and Oban.py's variables (``OBAN_SHUTDOWN_GRACE_PERIOD``,
    ``OBAN_POOL_MAX_SIZE``, ``OBAN_NOTIFIER``) under their own names."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name in [*field_names(), *OBANPY_ENV]:
        key = ENV_PREFIX + name.upper()
        if key in environ and environ[key] != "":
            out[name] = environ[key]
    if "notifier" in out:
        out["notifier"] = {"type": out["notifier"]}
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
        for key, raw in translate_settings(source).items():
            if key not in known:
                names = ", ".join(sorted(known | set(OBANPY_SETTINGS)))
                raise ConfigError(key, raw, f"a known setting ({names})")
            merged[key] = coerce(key, raw)
    given = {key: raw for key, raw in (overrides or {}).items() if raw is not None}
    for key, raw in translate_settings(given).items():
        if key not in known:
            raise ConfigError(key, raw, "a known setting")
        merged[key] = coerce(key, raw)
    return Config(**merged)


# -- Oban.py's settings -------------------------------------------------------------------------

#: Oban.py's setting names that are not oban_pro field names (keywords of ``Config``/``Oban``,
#: keys and tables of ``oban.toml``), in the order of ``Config``'s keyword-only InitVars.
OBANPY_SETTINGS = (
    "shutdown_grace_period",
    "pool_max_size",
    "pruner",
    "lifeline",
    "stager",
    "refresher",
    "scheduler",
    "metrics",
    "notifier",
)
#: Oban.py's environment variables that are not ``OBAN_<FIELD>`` of an oban_pro field.
OBANPY_ENV = ("shutdown_grace_period", "pool_max_size", "notifier")

# table -> {key: oban_pro field, or None when the key does not apply (warned)}
_TABLES: dict[str, dict[str, str | None]] = {
    "pruner": {"max_age": "prune_max_age", "interval": "prune_interval", "limit": "prune_limit"},
    "lifeline": {"interval": "lifeline_interval", "rescue_after": "rescue_after"},
    "stager": {"interval": "stage_interval", "limit": None},
    "refresher": {"interval": "heartbeat_interval", "max_age": "heartbeat_ttl"},
    "scheduler": {"timezone": "cron_timezone"},
    "metrics": {
        "interval": "gossip_interval",
        "counts_enabled": None,
        "cronitor_interval": None,
        "estimate_limit": None,
    },
    "notifier": {
        "type": None,
        "beat_interval": None,
        "connect_timeout": None,
        "notify_timeout": None,
    },
}

_WHY_NOT: dict[str, str] = {
    "stager.limit": "oban_pro stages every due job, in batches of 5000, on each stage_interval",
    "metrics.counts_enabled": "oban_pro sends Oban Web's queue checks (gossip), not job counts",
    "metrics.cronitor_interval": "oban_pro does not send Oban Web's crontab broadcasts",
    "metrics.estimate_limit": "oban_pro sends Oban Web's queue checks (gossip), not job counts",
    "notifier.beat_interval": "oban_pro's notifier keeps its own LISTEN connection and reconnects",
    "notifier.connect_timeout": "oban_pro's notifier reconnects with backoff on its own",
    "notifier.notify_timeout": "oban_pro sends notices inside the inserting transaction",
}


def _not_applied(name: str, value: object, why: str) -> None:
    log.warning("oban_pro: setting %s=%r is accepted but does not apply: %s", name, value, why)


def translate_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with Oban.py's names (and queue tables) turned into oban_pro field names.

    Values stay raw (strings from the environment are coerced later); keys oban_pro does not
    know are passed through for the caller to reject.
    """
    plain = {key: raw for key, raw in settings.items() if key not in OBANPY_SETTINGS}
    out = dict(plain)
    if isinstance(plain.get("queues"), Mapping):
        parse_queue_specs(plain["queues"])  # bad options fail here, naming the source's key
    out.update(translate_obanpy({k: v for k, v in settings.items() if k in OBANPY_SETTINGS}))
    return out


def translate_obanpy(given: Mapping[str, Any]) -> dict[str, Any]:
    """Oban.py-named settings -> oban_pro fields (see the module docstring)."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name == "shutdown_grace_period":
            out["shutdown_timeout"] = math.inf if value is None else value
        elif name == "pool_max_size":
            if value is not None:
                out["pool_size"] = value
        elif name == "metrics":
            out.update(_translate_metrics(value))
        elif name == "notifier":
            out.update(_translate_table(name, _notifier_table(value)))
        elif value is not None:
            out.update(_translate_table(name, value))
    return out


def _translate_table(table: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(table, value, f"a table (dict) of {', '.join(_TABLES[table])}")
    out: dict[str, Any] = {}
    for key, raw in value.items():
        if key not in _TABLES[table]:
            raise ConfigError(f"{table}.{key}", raw, f"one of {', '.join(_TABLES[table])}")
        target = _TABLES[table][key]
        if target is not None:
            out[target] = raw
        elif f"{table}.{key}" in _WHY_NOT:
            _not_applied(f"{table}.{key}", raw, _WHY_NOT[f"{table}.{key}"])
    return out


def _translate_metrics(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, bool) or isinstance(value, str):
        flag = _parse_bool(value) if isinstance(value, str) else value
        _not_applied(
            "metrics",
            flag,
            "oban_pro always sends Oban Web's queue checks (gossip, every gossip_interval) and "
            "does not send its job-count and timing broadcasts; Prometheus metrics are served "
            "with metrics_port",
        )
        return {}
    out = _translate_table("metrics", value)
    _not_applied(
        "metrics",
        dict(value),  # type: ignore[call-overload]
        "only metrics.interval applies (as gossip_interval, the period of Oban Web's queue "
        "checks); job-count and timing broadcasts are not sent",
    )
    return out


def _notifier_table(value: object) -> object:
    if value is None:
        return {}
    table = {"type": value} if isinstance(value, str) else value
    if isinstance(table, Mapping):
        kind = table.get("type", "postgres")
        if kind != "postgres":
            raise ConfigError("notifier.type", kind, "postgres (the only notifier oban_pro has)")
    return table


def _is_zone(name: object) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
