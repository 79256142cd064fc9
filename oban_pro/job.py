"""Jobs and the values a worker may return (compat.md §2).

A :class:`Job` mirrors one ``oban_jobs`` row. Built by application code it is validated at once:
a bad field raises :class:`~oban_pro.errors.ValidationError` naming it, before anything touches
the database.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar, Union

from .errors import ValidationError
from .naming import validate_name

if TYPE_CHECKING:
    from .workflow_context import WorkflowContext

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


T = TypeVar("T")

#: What ``process`` may return (Oban.py's ``Result[T]``): a value (or None) completes the job.
Result = Union[Cancel, Snooze, Record, T, None]  # noqa: UP007 - subscriptable on Python 3.11

TIMESTAMP_FIELDS = (
    "inserted_at",
    "attempted_at",
    "cancelled_at",
    "completed_at",
    "discarded_at",
    "scheduled_at",
)


def scheduled_from_now(delay: timedelta | float) -> datetime:
    """``now + delay`` (seconds or a timedelta), as an aware UTC datetime."""
    return utcnow() + _as_timedelta(delay, "scheduled_in")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (that is how the columns store them)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Fields :meth:`Job.update` and :meth:`Oban.update_job` may change (as in Oban.py), plus
#: ``scheduled_in`` / ``schedule_in`` for ``scheduled_at``.
UPDATABLE_FIELDS = (
    "args",
    "max_attempts",
    "meta",
    "priority",
    "queue",
    "scheduled_at",
    "tags",
    "worker",
)

_STATES = frozenset(state.value for state in JobState)

_current_job: ContextVar[Job | None] = ContextVar("oban_pro_current_job", default=None)


def current_job() -> Job | None:
    """The job running in this context (task or thread), or ``None`` outside of a job.

    As Oban.py's ``current_job()``: set for the whole of ``process`` of a worker made with
    ``@worker`` or ``@job`` (in the worker process that runs it), so a function worker, which
    gets no ``job`` argument, can still read its attempt, meta or id.
    """
    return _current_job.get()


@contextmanager
def running_job(job: Job) -> Iterator[Job]:
    """Make ``job`` what :func:`current_job` returns inside the ``with`` block."""
    token = _current_job.set(job)
    try:
        yield job
    finally:
        _current_job.reset(token)


class Job:
    """One job. Build with ``Job(worker, args=..., queue=...)`` or a worker's ``.new(...)``.

    Attributes are those of an ``oban_jobs`` row (Oban.py's ``Job``), plus ``extra`` (options a
    worker or ``new()`` was given that are not job fields: kept on this object for extensions,
    never stored), ``unique`` and ``conflict`` (oban_pro's unique inserts).
    """

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
        "extra",
        "_cancellation",
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
        scheduled_in: timedelta | float | None = None,
        schedule_in: timedelta | float | None = None,
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
        extra: dict[str, Any] | None = None,
        _validate: bool = True,
    ) -> None:
        # As Oban.py: ``scheduled_in`` (or its older spelling ``schedule_in``) wins over
        # ``scheduled_at`` when both are given.
        delay, delay_name = (
            (scheduled_in, "scheduled_in")
            if scheduled_in is not None
            else (schedule_in, "schedule_in")
        )
        if delay is not None:
            scheduled_at = utcnow() + _as_timedelta(delay, delay_name)
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
        self.inserted_at = _as_utc(inserted_at) if inserted_at is not None else None
        self.scheduled_at = _as_utc(scheduled_at) if scheduled_at is not None else None
        self.attempted_at = _as_utc(attempted_at) if attempted_at is not None else None
        self.attempted_by = [] if attempted_by is None else attempted_by
        self.completed_at = _as_utc(completed_at) if completed_at is not None else None
        self.discarded_at = _as_utc(discarded_at) if discarded_at is not None else None
        self.cancelled_at = _as_utc(cancelled_at) if cancelled_at is not None else None
        self.unique = unique
        self.conflict = False
        self.extra = {} if extra is None else extra
        self._cancellation: Any = None
        if _validate:
            self.tags = normalize_tags(self.tags)
            self.validate()
            if self.scheduled_at is not None and self.state == "available":
                self.state = "scheduled"

    # -- validation -----------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ValidationError` naming the first bad field."""
        validate_name("worker", self.worker)
        validate_name("queue", self.queue)
        if self.state not in _STATES:
            raise ValidationError(
                "state", f"must be one of {', '.join(sorted(_STATES))}, got {self.state!r}"
            )
        _check_int("priority", self.priority, 0, 9)
        _check_int("max_attempts", self.max_attempts, 1, 2**31 - 1)
        _check_document("args", self.args)
        _check_document("meta", self.meta)
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise ValidationError("tags", f"must be a list of strings, got {self.tags!r}")
        if self.scheduled_at is not None and not isinstance(self.scheduled_at, datetime):
            raise ValidationError("scheduled_at", "must be a datetime")
        if not isinstance(self.extra, dict):
            raise ValidationError("extra", f"must be a dict, got {type(self.extra).__name__}")
        if self.unique not in (None, False):
            from .unique import UniqueOptions

            UniqueOptions.parse(self.unique)

    # -- Oban.py's job methods ------------------------------------------------------------

    def update(self, changes: Mapping[str, Any]) -> Job:
        """Change fields in place, validated as at creation; returns this job.

        Only :data:`UPDATABLE_FIELDS` may change, and ``scheduled_in`` / ``schedule_in``
        (seconds or a timedelta from now) set ``scheduled_at``. Any other key, or a bad value,
        raises :class:`ValidationError` naming it and leaves the job unchanged. This changes
        the object only; :meth:`oban_pro.Oban.update_job` writes the row.
        """
        if not isinstance(changes, Mapping):
            raise ValidationError(
                "changes", f"must be a dict of field changes, got {type(changes).__name__}"
            )
        values = dict(changes)
        for alias in ("scheduled_in", "schedule_in"):
            if alias in values:
                delay = values.pop(alias)
                if delay is not None:
                    values["scheduled_at"] = utcnow() + _as_timedelta(delay, alias)
        unknown = sorted(set(values) - set(UPDATABLE_FIELDS))
        if unknown:
            raise ValidationError(
                unknown[0],
                "cannot be updated; the fields a job update may change are "
                + ", ".join(UPDATABLE_FIELDS)
                + " (and scheduled_in)",
            )
        if "tags" in values:
            values["tags"] = normalize_tags(values["tags"])
        if values.get("scheduled_at") is not None:
            if not isinstance(values["scheduled_at"], datetime):
                raise ValidationError("scheduled_at", "must be a datetime")
            values["scheduled_at"] = _as_utc(values["scheduled_at"])
        saved = {name: getattr(self, name) for name in values}
        for name, value in values.items():
            setattr(self, name, value)
        try:
            self.validate()
        except Exception:
            for name, value in saved.items():
                setattr(self, name, value)
            raise
        return self

    @property
    def workflow(self) -> WorkflowContext:
        """This job's workflow: ids, step name, deps, and ``await job.workflow.results()``
        (``results_sync()`` in sync code) to read what its dependencies recorded."""
        from .workflow_context import WorkflowContext

        return WorkflowContext(self)

    def cancelled(self) -> bool:
        """Whether cancelling this job was asked for while it runs (Oban.py's ``cancelled()``).

        A long job may check it at safe points and return ``Cancel(...)``. oban_pro also stops
        a cancelled job itself (the task is cancelled, the thread interrupted, and the child
        killed after the kill grace), so a job that never checks still stops.
        """
        flag = self._cancellation
        return bool(flag is not None and flag.is_set())

    def request_cancellation(self) -> None:
        """Mark this job as cancelled (what :meth:`cancelled` reports); safe from any thread."""
        if self._cancellation is None:
            self._cancellation = threading.Event()
        self._cancellation.set()

    # -- helpers --------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, worker={self.worker!r}, queue={self.queue!r}, "
            f"state={self.state!r}, attempt={self.attempt}/{self.max_attempts}, args={self.args!r})"
        )

    def __str__(self) -> str:
        short = self.worker.rsplit(".", 1)[-1] if isinstance(self.worker, str) else self.worker
        try:
            args = encode_json(self.args)
        except (TypeError, ValueError):
            args = repr(self.args)
        return (
            f"Job(id={self.id}, worker={short}, args={args}, queue={self.queue}, "
            f"state={self.state})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in _PUBLIC_SLOTS)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PUBLIC_SLOTS}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """Build from a database row (a dict of column values); no validation."""
        known = {k: v for k, v in row.items() if k in _PUBLIC_SLOTS}
        errors = known.get("errors")
        if isinstance(errors, str):
            known["errors"] = json.loads(errors)
        worker = known.pop("worker")
        return cls(worker, _validate=False, **known)


_PUBLIC_SLOTS = tuple(name for name in Job.__slots__ if not name.startswith("_"))


def normalize_tags(tags: object) -> list[str]:
    """Tags as Oban.py keeps them: trimmed, lowercase, without blanks or duplicates, sorted.

    Numbers are written as text (as Oban.py does); anything else but text raises
    :class:`ValidationError` on ``tags``.
    """
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise ValidationError("tags", f"must be a list of strings, got {tags!r}")
    out = set()
    for tag in tags:
        if tag is None:
            continue
        if isinstance(tag, bool) or not isinstance(tag, (str, int, float)):
            raise ValidationError("tags", f"must be a list of strings, got the tag {tag!r}")
        text = str(tag).strip().lower()
        if text:
            out.add(text)
    return sorted(out)


def _as_timedelta(value: timedelta | float, name: str = "schedule_in") -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(name, f"must be seconds or a timedelta, got {value!r}")
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
