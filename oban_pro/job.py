"""Jobs and the values a worker may return (compat.md §2).

A :class:`Job` mirrors one ``oban_jobs`` row. Built by application code it is validated at once:
a bad field raises :class:`~oban_pro.errors.ValidationError` naming it, before anything touches
the database.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .errors import ValidationError
from .naming import validate_name

#: Largest args/meta document accepted at enqueue (JSON bytes). Postgres' jsonb allows far
#: more, but a job row this large is almost always a mistake; raise it per job with care.
MAX_ARGS_BYTES = 8 * 1024 * 1024

RECORDED_LIMIT = 64_000_000


class JobState(StrEnum):
    """The ``oban_job_state`` enum."""

    AVAILABLE = "available"
    SUSPENDED = "suspended"
    SCHEDULED = "scheduled"
    EXECUTING = "executing"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"


FINAL_STATES = ("completed", "discarded", "cancelled")


@dataclass(frozen=True, slots=True)
class Snooze:
    """Return from ``process`` to run the job again in ``seconds`` (attempt is given back)."""

    seconds: int
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, int) or isinstance(self.seconds, bool) or self.seconds < 0:
            raise ValidationError(
                "seconds", f"Snooze needs whole seconds >= 0, got {self.seconds!r}"
            )


@dataclass(frozen=True, slots=True)
class Cancel:
    """Return from ``process`` to stop the job for good (state ``cancelled``)."""

    reason: str


@dataclass(slots=True)
class Record:
    """Return from ``process`` to complete the job and store ``value`` in ``meta.return``.

    The value is encoded in Erlang's external term format, base64 without padding, which is
    what Oban.py and Oban Web read. Raises if the encoding exceeds ``limit`` bytes.
    """

    value: Any
    limit: int = RECORDED_LIMIT
    encoded: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from .term import encode_recorded

        self.encoded = encode_recorded(self.value, limit=self.limit)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (that is how the columns store them)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Job:
    """One job. Build with ``Job(worker, args=..., queue=...)`` or a worker's ``.new(...)``."""

    __slots__ = (
        "id",
        "state",
        "queue",
        "worker",
        "args",
        "meta",
        "tags",
        "errors",
        "attempt",
        "max_attempts",
        "priority",
        "inserted_at",
        "scheduled_at",
        "attempted_at",
        "attempted_by",
        "completed_at",
        "discarded_at",
        "cancelled_at",
        "unique",
        "conflict",
    )

    def __init__(
        self,
        worker: str,
        *,
        args: dict[str, Any] | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 20,
        meta: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        scheduled_at: datetime | None = None,
        schedule_in: timedelta | float | None = None,
        scheduled_in: timedelta | float | None = None,
        unique: dict[str, Any] | bool | None = None,
        id: int | None = None,
        state: str = "available",
        attempt: int = 0,
        errors: list[dict[str, Any]] | None = None,
        inserted_at: datetime | None = None,
        attempted_at: datetime | None = None,
        attempted_by: list[str] | None = None,
        completed_at: datetime | None = None,
        discarded_at: datetime | None = None,
        cancelled_at: datetime | None = None,
        _validate: bool = True,
    ) -> None:
        delay = schedule_in if schedule_in is not None else scheduled_in
        if delay is not None:
            if scheduled_at is not None:
                raise ValidationError("schedule_in", "give scheduled_at or schedule_in, not both")
            scheduled_at = utcnow() + _as_timedelta(delay)
        self.id = id
        self.state = str(state)
        self.queue = queue
        self.worker = worker
        self.args = {} if args is None else args
        self.meta = {} if meta is None else meta
        self.tags = [] if tags is None else tags
        self.errors = [] if errors is None else errors
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.priority = priority
        self.inserted_at = inserted_at
        self.scheduled_at = _as_utc(scheduled_at) if scheduled_at is not None else None
        self.attempted_at = attempted_at
        self.attempted_by = attempted_by
        self.completed_at = completed_at
        self.discarded_at = discarded_at
        self.cancelled_at = cancelled_at
        self.unique = unique
        self.conflict = False
        if _validate:
            self.validate()
            if delay is None and scheduled_at is not None:
                self.state = "scheduled"
            elif delay is not None:
                self.state = "scheduled"

    # -- validation -----------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ValidationError` naming the first bad field."""
        validate_name("worker", self.worker)
        validate_name("queue", self.queue)
        _check_int("priority", self.priority, 0, 9)
        _check_int("max_attempts", self.max_attempts, 1, 2**31 - 1)
        _check_document("args", self.args)
        _check_document("meta", self.meta)
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise ValidationError("tags", f"must be a list of strings, got {self.tags!r}")
        if self.scheduled_at is not None and not isinstance(self.scheduled_at, datetime):
            raise ValidationError("scheduled_at", "must be a datetime")
        if self.unique not in (None, False):
            from .unique import UniqueOptions

            UniqueOptions.parse(self.unique)

    # -- helpers --------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, worker={self.worker!r}, queue={self.queue!r}, "
            f"state={self.state!r}, attempt={self.attempt}/{self.max_attempts}, args={self.args!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """Build from a database row (a dict of column values); no validation."""
        known = {k: v for k, v in row.items() if k in cls.__slots__}
        for stamp in (
            "inserted_at",
            "scheduled_at",
            "attempted_at",
            "completed_at",
            "discarded_at",
            "cancelled_at",
        ):
            if known.get(stamp) is not None:
                known[stamp] = _as_utc(known[stamp])
        errors = known.get("errors")
        if isinstance(errors, str):
            known["errors"] = json.loads(errors)
        worker = known.pop("worker")
        return cls(worker, _validate=False, **known)


def _as_timedelta(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError("schedule_in", f"must be seconds or a timedelta, got {value!r}")
    return timedelta(seconds=value)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(name, f"must be an integer from {low} to {high}, got {value!r}")


def _check_document(name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise ValidationError(name, f"must be a JSON object (dict), got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise ValidationError(name, "keys must be strings (JSON objects have string keys)")
    try:
        size = len(encode_json(value))
    except (TypeError, ValueError) as exc:
        raise ValidationError(name, f"is not JSON-serialisable: {exc}") from None
    if size > MAX_ARGS_BYTES:
        raise ValidationError(
            name,
            f"is {size} bytes of JSON; the limit is {MAX_ARGS_BYTES} (store big data elsewhere)",
        )


def encode_json(value: Any) -> str:
    """Compact JSON as Postgres will store it; NaN/Infinity are refused (not valid JSON)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
