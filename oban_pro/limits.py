"""Limits across nodes: a queue's options, their use, and how the fetch honours them (the
fetch itself is :meth:`oban_pro.store.Store.fetch_limited`; its statements are in
:mod:`oban_pro.queries`).

``global_limit`` caps the queue's jobs executing at once across every node (and every engine:
the count is read from ``oban_jobs`` itself, so Elixir's and Oban.py's executing jobs count
too). ``rate_limit`` caps the jobs *started* per ``period`` seconds across every node, over a
sliding window: the window's counts live in ``oban_rate_limits`` (a logged table), so neither a
node nor a database restart lets a queue burst past it. The window is an exact sliding log (the
start times of the most recent jobs within the period, at most ``allowed`` of them), so no
``period``-long stretch of time ever holds more than ``allowed`` starts; an estimate from two
fixed windows would let twice that through at a window edge. With a ``partition`` each limit
applies to each partition (by worker, by named ``args`` keys or by named ``meta`` keys), so one
tenant's backlog cannot take another's share: within a fetch every partition's first job comes
before any partition's second. When both limits are set they must partition alike (or only one
of them may have a partition, and the other none at all).

Correctness under races: every fetch of a limited queue runs in one transaction that first
takes a transaction-scoped advisory lock for the queue, then counts and fetches in a second
statement (whose snapshot is therefore taken after the previous holder committed). Nodes racing
on the same queue are serialised there and no more than the limit is ever admitted. Acks and
rescues only lower the count, so they need no lock. The share of a node that died stays counted
until the lifeline rescues its jobs, then comes back. Queues without these options never take
the lock and fetch exactly as before.

Options are written as Oban Pro writes them (and Oban Web reads them from gossip checks)::

    {"global_limit": 10}
    {"global_limit": {"allowed": 10, "partition": {"fields": ["args"], "keys": ["tenant"]}}}
    {"rate_limit": {"allowed": 60, "period": 60}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ValidationError

PARTITION_FIELDS = ("worker", "args", "meta")
#: Far above any real cluster's concurrency; refuses absurd values that would hide a typo.
MAX_LIMIT = 1_000_000
#: A rate window longer than a week is a typo, not a rate.
MAX_PERIOD = 7 * 24 * 3600.0
#: Advisory-lock class of limited fetches (the two-int4 key space, apart from unique inserts).
LOCK_CLASS = 0x0BA7


@dataclass(frozen=True, slots=True)
class Partition:
    """How jobs of a queue are grouped for a limit: by worker, and/or by ``args`` or ``meta``
    (all of it, or only the listed ``keys``)."""

    fields: tuple[str, ...]
    keys: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: Any, field: str) -> Partition:
        if isinstance(spec, str):  # shorthand: partition = "worker"
            spec = {"fields": [spec]}
        if isinstance(spec, (list, tuple)) and all(isinstance(p, (list, tuple)) for p in spec):
            spec = dict(spec)  # Oban Web's form: [["fields", [...]], ["keys", [...]]]
        if not isinstance(spec, Mapping):
            raise ValidationError(field, f"must be a dict with fields (and keys), got {spec!r}")
        unknown = set(spec) - {"fields", "keys"}
        if unknown:
            raise ValidationError(field, f"unknown option {sorted(unknown)[0]!r}; use fields, keys")
        fields = _names(spec.get("fields"), f"{field}.fields")
        bad = [f for f in fields if f not in PARTITION_FIELDS]
        if not fields or bad:
            raise ValidationError(
                f"{field}.fields",
                f"must be a non-empty list drawn from {', '.join(PARTITION_FIELDS)}, got "
                f"{spec.get('fields')!r}",
            )
        keys = _names(spec.get("keys", []), f"{field}.keys")
        if keys and not ({"args", "meta"} & set(fields)):
            raise ValidationError(f"{field}.keys", "keys need fields to include args or meta")
        return cls(fields=fields, keys=keys)

    def params(self) -> dict[str, Any]:
        """The statement parameters that build the partition key of a job row."""
        return {
            "by_worker": "worker" in self.fields,
            "by_args": "args" in self.fields,
            "by_meta": "meta" in self.fields,
            "keys": list(self.keys),
        }

    def to_json(self) -> dict[str, list[str]]:
        return {"fields": list(self.fields), "keys": list(self.keys)}


@dataclass(frozen=True, slots=True)
class GlobalLimit:
    """At most ``allowed`` of the queue's jobs executing at once across all nodes (per
    partition when ``partition`` is set)."""

    allowed: int
    partition: Partition | None = None

    @classmethod
    def parse(cls, spec: Any, field: str = "global_limit") -> GlobalLimit:
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"allowed", "partition"}
            if unknown:
                raise ValidationError(
                    field, f"unknown option {sorted(unknown)[0]!r}; use allowed, partition"
                )
            if "allowed" not in spec:
                raise ValidationError(f"{field}.allowed", "is required")
            allowed = _limit(spec["allowed"], f"{field}.allowed")
            partition = spec.get("partition")
            return cls(allowed, Partition.parse(partition, f"{field}.partition")
                       if partition is not None else None)  # fmt: skip
        return cls(_limit(spec, field))

    def to_json(self) -> dict[str, Any]:
        """As Oban Pro's producers show it (``global_limit`` in gossip checks)."""
        out: dict[str, Any] = {"allowed": self.allowed}
        if self.partition is not None:
            out["partition"] = self.partition.to_json()
        return out


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``allowed`` of the queue's jobs started per ``period`` seconds across all nodes
    (per partition when ``partition`` is set), over a sliding window."""

    allowed: int
    period: float
    partition: Partition | None = None

    @classmethod
    def parse(cls, spec: Any, field: str = "rate_limit") -> RateLimit:
        if not isinstance(spec, Mapping):
            raise ValidationError(field, f"must be a dict with allowed and period, got {spec!r}")
        unknown = set(spec) - {"allowed", "period", "partition"}
        if unknown:
            raise ValidationError(
                field, f"unknown option {sorted(unknown)[0]!r}; use allowed, period, partition"
            )
        for required in ("allowed", "period"):
            if required not in spec:
                raise ValidationError(f"{field}.{required}", "is required")
        period = spec["period"]
        if (
            isinstance(period, bool)
            or not isinstance(period, (int, float))
            or not 0.001 <= period <= MAX_PERIOD
        ):
            raise ValidationError(
                f"{field}.period", f"must be seconds from 0.001 to {MAX_PERIOD:.0f}, got {period!r}"
            )
        partition = spec.get("partition")
        return cls(
            _limit(spec["allowed"], f"{field}.allowed"),
            float(period),
            Partition.parse(partition, f"{field}.partition") if partition is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """As Oban Pro's producers show it (``rate_limit`` in gossip checks)."""
        out: dict[str, Any] = {"allowed": self.allowed, "period": self.period}
        if self.partition is not None:
            out["partition"] = self.partition.to_json()
        return out


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """The limits of one queue beyond its local ``limit``; None when it has neither."""

    global_limit: GlobalLimit | None = None
    rate_limit: RateLimit | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any], queue: str) -> QueueLimits | None:
        """From a queue's options (``global_limit``, ``rate_limit``; other keys are not ours)."""
        field = f"queues[{queue}]"
        limits = cls(
            GlobalLimit.parse(options["global_limit"], f"{field}.global_limit")
            if options.get("global_limit") is not None else None,
            RateLimit.parse(options["rate_limit"], f"{field}.rate_limit")
            if options.get("rate_limit") is not None else None,
        )  # fmt: skip
        if limits.global_limit is None and limits.rate_limit is None:
            return None
        partitions = {lim.partition for lim in (limits.global_limit, limits.rate_limit) if lim}
        if len(partitions) > 1 and limits.global_limit and limits.rate_limit:
            raise ValidationError(
                field,
                "global_limit and rate_limit must partition alike (or set a partition on one "
                "of them only when the other is absent)",
            )
        return limits

    @property
    def partition(self) -> Partition | None:
        return next((lim.partition for lim in (self.global_limit, self.rate_limit)
                     if lim is not None and lim.partition is not None), None)  # fmt: skip


#: The options of a queue's limits across nodes, as scale signals and queue tables name them.
LIMIT_OPTIONS = ("global_limit", "rate_limit")


def rescale(
    current: QueueLimits | None, changes: Mapping[str, Any], queue: str
) -> QueueLimits | None:
    """``current`` with the limits named in ``changes`` replaced (a ``None`` value removes that
    limit), as a scale signal asks. Raises :class:`ValidationError` on a bad option."""
    merged: dict[str, Any] = {}
    for option in LIMIT_OPTIONS:
        if option in changes:
            merged[option] = changes[option]
        elif current is not None and getattr(current, option) is not None:
            merged[option] = getattr(current, option).to_json()
    return QueueLimits.parse(merged, queue)


def fetch_params(limits: QueueLimits, prefix: str, queue: str) -> dict[str, Any]:
    """Parameters shared by the lock and the fetch statements of a limited queue (add
    ``demand``, ``node``, ``uuid``)."""
    rate = limits.rate_limit
    params: dict[str, Any] = {
        "lock_class": LOCK_CLASS,
        "lock_name": f"{prefix}.{queue}",
        "queue": queue,
        "global_limit": limits.global_limit.allowed if limits.global_limit else None,
        "rate_allowed": rate.allowed if rate else None,
        "rate_period": rate.period if rate else None,
        "now": None,
    }
    partition = limits.partition
    params.update(partition.params() if partition is not None else _NO_PARTITION)
    params["partitioned"] = partition is not None
    return params


_NO_PARTITION = {"by_worker": False, "by_args": False, "by_meta": False, "keys": []}


@dataclass(frozen=True, slots=True)
class PartitionUse:
    """One partition's use of its limits ('' is the whole queue when it is not partitioned)."""

    key: str
    #: The partition's jobs executing now across all nodes.
    running: int
    #: Starts within the current rate window.
    window_used: int


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """What a limited queue's limits leave, as read from the database at ``observed_at``."""

    limits: QueueLimits
    partitions: tuple[PartitionUse, ...]
    #: Seconds until a full rate window lets another job start (None: none is full).
    opens_in: float | None
    observed_at: float

    @property
    def running(self) -> int:
        return sum(p.running for p in self.partitions)

    @property
    def window_used(self) -> int:
        return sum(p.window_used for p in self.partitions)

    def global_remaining(self) -> int | None:
        """Jobs the global limit still admits (the whole queue; None without one)."""
        gl = self.limits.global_limit
        if gl is None or gl.partition is not None:
            return None
        return max(0, gl.allowed - self.running)

    def rate_remaining(self) -> int | None:
        """Starts the rate window still admits (the whole queue; None without a rate)."""
        rate = self.limits.rate_limit
        if rate is None or rate.partition is not None:
            return None
        return max(0, rate.allowed - self.window_used)

    def to_json(self) -> dict[str, Any]:
        """The ``global_limit`` / ``rate_limit`` fields of a gossip check, in Oban Pro's names
        (compat.md §3). oban_pro's window is a sliding log, so ``windows`` holds one entry:
        the starts within the last period (``curr_count``) and none before it."""
        out: dict[str, Any] = {}
        gl, rate = self.limits.global_limit, self.limits.rate_limit
        if gl is not None:
            out["global_limit"] = {
                **gl.to_json(),
                "tracked": {p.key: {"count": p.running} for p in self.partitions if p.running},
                "burst": False,
            }
        if rate is not None:
            out["rate_limit"] = {
                **rate.to_json(),
                "window_time": self.observed_at,
                "windows": [{"curr_count": self.window_used, "prev_count": 0}],
            }
        return out


def _limit(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValidationError(field, f"must be an integer from 1 to {MAX_LIMIT:,}, got {value!r}")
    return value


def _names(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v.strip() for v in value
    ):
        raise ValidationError(field, f"must be a list of names, got {value!r}")
    return tuple(dict.fromkeys(v.strip() for v in value))
