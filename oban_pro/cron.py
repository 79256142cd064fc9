"""Cron expressions and crontab entries (compat.md §4).

Five fields, ``minute hour day-of-month month day-of-week``, each a comma-separated list of:

* ``*`` (every value), a number, or a name (months ``JAN``-``DEC``, weekdays ``SUN``-``SAT``,
  case-insensitive; weekday ``0`` and ``7`` are both Sunday);
* a range ``a-b`` (names allowed: ``MON-FRI``);
* a step ``*/n``, ``a-b/n`` or ``a/n`` (from ``a`` to the end of the field, every ``n``).

Nicknames: ``@hourly``, ``@daily``/``@midnight``, ``@weekly``, ``@monthly``,
``@yearly``/``@annually`` and ``@reboot`` (run once at start; it never matches a minute).

Day rule (standard cron): when day-of-month *and* day-of-week are both restricted, a day matches
if *either* matches; when only one is restricted, only that one counts. A field is restricted
when its set of values is not the whole range (so ``*``, ``*/1`` and ``1-31`` are all
unrestricted). Note: Elixir Oban and Oban.py require *both* to match, so an expression such as
``0 0 1 * MON`` fires on more days here than there; expressions restricting only one of the two
(the usual case) behave identically.

Matching is by wall-clock fields at minute resolution: seconds are ignored, and a timezone-aware
datetime is judged in its own zone. :class:`CronEntry` converts UTC to its timezone first, so a
wall time skipped by a DST change never fires, and one repeated by a DST change fires twice (as
in Elixir Oban).
"""

from __future__ import annotations

import calendar
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ObanError, ValidationError
from .naming import validate_name

__all__ = ["CronEntry", "CronError", "CronExpression", "cron_meta", "with_default_timezone"]


class CronError(ValidationError):
    """A cron expression is invalid (``field`` is ``"cron"``); the message quotes the bad part."""

    def __init__(self, expression: object, message: str) -> None:
        self.expression = expression
        super().__init__("cron", f"invalid expression {expression!r}: {message}")


class CronNeverMatchesError(ObanError, LookupError):
    """``next_after`` was asked about ``@reboot``, which matches no minute."""


_NICKNAMES: dict[str, str | None] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@reboot": None,
}

# Spelled out rather than taken from calendar.month_abbr, which follows the process locale.
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_WEEKDAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_PART_RE = re.compile(r"(?P<base>[^/]+)(?:/(?P<step>[^/]*))?")


@dataclass(frozen=True)
class _FieldSpec:
    """One of the five fields: its name, bounds, and accepted names."""

    name: str
    low: int
    high: int
    names: Mapping[str, int]
    star_high: int  # upper bound that '*' stands for (6 for weekdays, not 7)

    @property
    def allowed(self) -> str:
        hint = f"{self.low}-{self.high}"
        if self.names:
            first, last = list(self.names)[0], list(self.names)[-1]
            hint += f" or {first}-{last}"
        return hint


_SPECS = (
    _FieldSpec("minute", 0, 59, {}, 59),
    _FieldSpec("hour", 0, 23, {}, 23),
    _FieldSpec("day-of-month", 1, 31, {}, 31),
    _FieldSpec("month", 1, 12, _MONTH_NAMES, 12),
    _FieldSpec("day-of-week", 0, 7, _WEEKDAY_NAMES, 6),
)

#: Days in each month in a leap year (the most any month can have).
_MAX_DAYS = {m: calendar.monthrange(2000, m)[1] for m in range(1, 13)}


# ------------------------------------------------------------------------------ parsing


def _is_number(token: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts other scripts' digits)."""
    return token.isascii() and token.isdigit()


def _parse_value(token: str, spec: _FieldSpec, expr: str) -> int:
    """A number or a name, checked against the field's range."""
    if _is_number(token):
        value = int(token)
    elif token.upper() in spec.names:
        value = spec.names[token.upper()]
    else:
        kind = "name or number" if spec.names else "number"
        raise CronError(expr, f"{spec.name} {kind} {token!r} is not valid; allowed {spec.allowed}")
    if not spec.low <= value <= spec.high:
        raise CronError(
            expr, f"{spec.name} value {token!r} is out of range; allowed {spec.allowed}"
        )
    return value


def _parse_step(step: str | None, part: str, spec: _FieldSpec, expr: str) -> int:
    """The ``/n`` of a part (1 when absent); must be a positive integer."""
    if step is None:
        return 1
    if not _is_number(step) or int(step) == 0:
        raise CronError(
            expr,
            f"{spec.name} step in {part!r} must be a positive whole number "
            f"(1-{spec.star_high - spec.low + 1})",
        )
    return int(step)


def _parse_bounds(base: str, has_step: bool, spec: _FieldSpec, expr: str) -> tuple[int, int]:
    """The (first, last) values of ``*``, ``a``, ``a-b`` (or ``a/n`` meaning ``a-<end>``)."""
    if base == "*":
        return spec.low, spec.star_high
    first_text, dash, last_text = base.partition("-")
    first = _parse_value(first_text, spec, expr)
    if not dash:
        return (first, max(first, spec.star_high)) if has_step else (first, first)
    last = _parse_value(last_text, spec, expr)
    if first > last:
        raise CronError(
            expr, f"{spec.name} range {base!r} is reversed; write it low-high ({spec.allowed})"
        )
    return first, last


def _parse_part(part: str, spec: _FieldSpec, expr: str) -> set[int]:
    """One comma-separated element of a field."""
    match = _PART_RE.fullmatch(part)
    if match is None:
        raise CronError(expr, f"{spec.name} element {part!r} is malformed")
    step_text = match.group("step")
    step = _parse_step(step_text, part, spec, expr)
    first, last = _parse_bounds(match.group("base"), step_text is not None, spec, expr)
    return set(range(first, last + 1, step))


def _parse_field(text: str, spec: _FieldSpec, expr: str) -> frozenset[int]:
    """A whole field: the union of its comma-separated parts (weekday 7 folded onto 0)."""
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(expr, f"{spec.name} field {text!r} has an empty list element")
        values |= _parse_part(part, spec, expr)
    if spec.name == "day-of-week" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def _split_fields(text: str) -> list[str]:
    """The five whitespace-separated fields, after expanding a nickname."""
    stripped = text.strip()
    if stripped.startswith("@"):
        lowered = stripped.lower()
        if lowered not in _NICKNAMES:
            known = ", ".join(_NICKNAMES)
            raise CronError(text, f"unknown nickname {stripped!r}; known: {known}")
        stripped = _NICKNAMES[lowered] or ""
    fields = stripped.split()
    if len(fields) != 5:
        raise CronError(
            text,
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}",
        )
    return fields


# ------------------------------------------------------------------------------ expression


@dataclass(frozen=True)
class CronExpression:
    """A parsed cron expression. Build one with :meth:`parse`."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday
    is_reboot: bool = False

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse ``text``; raise :class:`CronError` saying which part is wrong and why."""
        if not isinstance(text, str):
            raise CronError(text, f"must be a string, got {type(text).__name__}")
        if text.strip().lower() == "@reboot":
            empty: frozenset[int] = frozenset()
            return cls(text, empty, empty, empty, empty, empty, is_reboot=True)
        fields = _split_fields(text)
        minutes, hours, days, months, weekdays = (
            _parse_field(f, spec, text) for f, spec in zip(fields, _SPECS, strict=True)
        )
        expression = cls(text, minutes, hours, days, months, weekdays)
        expression._check_satisfiable()
        return expression

    @property
    def days_restricted(self) -> bool:
        """Whether day-of-month is narrower than 1-31."""
        return len(self.days) < 31

    @property
    def weekdays_restricted(self) -> bool:
        """Whether day-of-week is narrower than every day."""
        return len(self.weekdays) < 7

    def matches(self, dt: datetime) -> bool:
        """Whether the minute of ``dt`` (its own wall-clock fields) is a scheduled minute."""
        if self.is_reboot:
            return False
        return (
            dt.minute in self.minutes
            and dt.hour in self.hours
            and dt.month in self.months
            and self.matches_day(dt.date())
        )

    def matches_day(self, day: date) -> bool:
        """The day-of-month / day-of-week rule (either one when both are restricted)."""
        in_days = day.day in self.days
        in_weekdays = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, dt: datetime) -> datetime:
        """The first scheduled minute strictly after ``dt``.

        A naive ``dt`` gives a naive result in the same wall clock. An aware ``dt`` gives the
        first matching instant after it in its zone (skipped DST wall times never match,
        repeated ones match twice). Raises :class:`CronNeverMatchesError` for ``@reboot``.
        """
        if self.is_reboot:
            raise CronNeverMatchesError("@reboot runs once at start and has no next minute")
        if dt.tzinfo is None or dt.utcoffset() is None:
            return self._next_wall(dt)
        return self._next_aware(dt, dt.tzinfo)

    # -- helpers -------------------------------------------------------------------------

    def _check_satisfiable(self) -> None:
        """Refuse expressions that can never fire, such as ``0 0 30 2 *``."""
        if self.weekdays_restricted and self.days_restricted:
            return  # any selected weekday occurs every week
        if not any(min(self.days) <= _MAX_DAYS[m] for m in self.months):
            days = ",".join(map(str, sorted(self.days)))
            months = ",".join(map(str, sorted(self.months)))
            raise CronError(
                self.text, f"day-of-month {days} never occurs in month {months}; it never runs"
            )

    def _next_wall(self, dt: datetime) -> datetime:
        """Next matching naive wall time strictly after ``dt`` (tzinfo ignored and dropped)."""
        start = dt.replace(second=0, microsecond=0, tzinfo=None) + timedelta(minutes=1)
        earliest = start.time()
        for day in _days_from(start.date()):
            found = self._first_time_on(day, earliest)
            if found is not None:
                return datetime.combine(day, found)
            earliest = time(0, 0)
        raise AssertionError("unreachable: satisfiable expressions match within 28 years")

    def _first_time_on(self, day: date, earliest: time) -> time | None:
        """The first scheduled time of ``day`` at or after ``earliest``, if any."""
        if day.month not in self.months or not self.matches_day(day):
            return None
        for hour in sorted(h for h in self.hours if h >= earliest.hour):
            low = earliest.minute if hour == earliest.hour else 0
            minute = next((m for m in sorted(self.minutes) if m >= low), None)
            if minute is not None:
                return time(hour, minute)
        return None

    def _next_aware(self, dt: datetime, zone: tzinfo) -> datetime:
        """Earliest matching instant after ``dt``, trying both folds of each wall time.

        Wall order and instant order differ only within a DST shift, so the search starts a
        few hours of wall time early and keeps going a few hours past the first hit.
        """
        after = dt.astimezone(UTC)
        wall = dt.replace(tzinfo=None) - _DST_WINDOW
        best: datetime | None = None
        horizon = datetime.max - _DST_WINDOW
        while wall <= horizon:
            wall = self._next_wall(wall)
            for instant in _instants(wall, zone):
                # Compare in UTC: same-zone comparisons ignore ``fold``.
                utc = instant.astimezone(UTC)
                if utc > after and (best is None or utc < best.astimezone(UTC)):
                    best = instant
                    horizon = wall + _DST_WINDOW
        if best is None:
            raise AssertionError("unreachable: the loop only ends after finding a match")
        return best


#: Largest wall-clock shift assumed for DST changes (real ones are 30 minutes to 2 hours).
_DST_WINDOW = timedelta(hours=3)


def _days_from(start: date) -> Iterator[date]:
    """Consecutive days from ``start``, for at most 28 years (one full calendar cycle + leap)."""
    for offset in range(366 * 29):
        yield start + timedelta(days=offset)


def _instants(wall: datetime, zone: tzinfo) -> list[datetime]:
    """The real instants showing wall time ``wall`` in ``zone`` (0 in a gap, 2 in an overlap)."""
    found: list[datetime] = []
    for fold in (0, 1):
        candidate = wall.replace(tzinfo=zone, fold=fold)
        round_trip = candidate.astimezone(UTC).astimezone(zone)
        if round_trip.replace(tzinfo=None) == wall and candidate.utcoffset() not in {
            c.utcoffset() for c in found
        }:
            found.append(round_trip)
    return found


# ------------------------------------------------------------------------------ entries

_OPT_KEYS = frozenset({"queue", "priority", "max_attempts", "tags", "meta", "unique"})


class _DefaultZone(str):
    """The zone of an entry that named none: UTC, unless the node's ``cron_timezone`` (Oban.py's
    ``scheduler.timezone``) says otherwise (see :func:`with_default_timezone`)."""

    __slots__ = ()


DEFAULT_TIMEZONE = _DefaultZone("Etc/UTC")


@dataclass(frozen=True)
class CronEntry:
    """One crontab line: enqueue ``worker`` with ``args`` whenever ``expression`` matches.

    ``name`` defaults to ``"<worker> <expression>"``; ``timezone`` (an IANA name) is the zone
    the expression is read in; ``opts`` holds job options: ``queue``, ``priority`` (0-9),
    ``max_attempts`` (>= 1), ``tags`` (list of str), ``meta`` (dict) and ``unique`` (a dict,
    bool or None; checked by the job builder, and replaced by the cron scheduler's own rule).
    """

    expression: str
    worker: str
    args: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    timezone: str = DEFAULT_TIMEZONE
    opts: dict[str, Any] = field(default_factory=dict)
    parsed: CronExpression = field(init=False, repr=False, compare=False)
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed", CronExpression.parse(self.expression))
        validate_name("worker", self.worker)
        _check_args(self.args)
        object.__setattr__(self, "zone", _zone(self.timezone))
        _check_opts(self.opts)
        if not self.name:
            object.__setattr__(self, "name", f"{self.worker} {self.expression.strip()}")

    @property
    def is_reboot(self) -> bool:
        """Whether this entry runs once at start (``@reboot``) rather than on a schedule."""
        return self.parsed.is_reboot

    def matches(self, now_utc: datetime) -> bool:
        """Whether the entry is due at ``now_utc`` (naive values are taken as UTC)."""
        return self.parsed.matches(self.local(now_utc))

    def next_after(self, now_utc: datetime) -> datetime:
        """The next time the entry is due after ``now_utc``, as an aware UTC datetime."""
        return self.parsed.next_after(self.local(now_utc)).astimezone(UTC)

    def local(self, now_utc: datetime) -> datetime:
        """``now_utc`` in the entry's timezone (naive values are taken as UTC)."""
        if now_utc.tzinfo is None:
            now_utc = now_utc.replace(tzinfo=UTC)
        return now_utc.astimezone(self.zone)


def with_default_timezone(entries: Sequence[CronEntry], timezone: str | None) -> list[CronEntry]:
    """``entries``, those that named no timezone read in ``timezone`` (None/UTC: unchanged)."""
    if not timezone or timezone == DEFAULT_TIMEZONE:
        return list(entries)
    return [
        dataclasses.replace(entry, timezone=timezone)
        if isinstance(entry.timezone, _DefaultZone)
        else entry
        for entry in entries
    ]


def cron_meta(entry: CronEntry) -> dict[str, Any]:
    """The ``meta`` keys a cron-inserted job carries (read by Oban Web and Elixir Oban)."""
    return {
        "cron": True,
        "cron_expr": entry.expression,
        "cron_name": entry.name,
        "cron_tz": str(entry.timezone),
    }


def _zone(name: object) -> ZoneInfo:
    """Load an IANA timezone or raise :class:`ValidationError` on field ``timezone``."""
    if not isinstance(name, str) or not name:
        raise ValidationError("timezone", f"must be an IANA zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValidationError(
            "timezone", f"unknown zone {name!r}; use an IANA name such as 'Europe/Paris'"
        ) from error


def _check_args(args: object) -> None:
    """``args`` must be a dict with string keys (a JSON object)."""
    if not isinstance(args, dict):
        raise ValidationError("args", f"must be a dict, got {type(args).__name__}")
    bad = [key for key in args if not isinstance(key, str)]
    if bad:
        raise ValidationError("args", f"keys must be strings, got {bad[0]!r}")


def _check_opts(opts: object) -> None:
    """Only known job options, each of the right type and range."""
    if not isinstance(opts, dict):
        raise ValidationError("opts", f"must be a dict, got {type(opts).__name__}")
    unknown = sorted(set(opts) - _OPT_KEYS)
    if unknown:
        raise ValidationError("opts", f"unknown option(s) {unknown}; allowed {sorted(_OPT_KEYS)}")
    for key, value in opts.items():
        _OPT_CHECKS[key](value)


def _check_queue(value: object) -> None:
    validate_name("queue", value)


def _check_priority(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ValidationError("priority", f"must be an integer 0-9, got {value!r}")


def _check_max_attempts(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("max_attempts", f"must be an integer >= 1, got {value!r}")


def _check_tags(value: object) -> None:
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise ValidationError("tags", f"must be a list of strings, got {value!r}")


def _check_meta(value: object) -> None:
    if not isinstance(value, dict):
        raise ValidationError("meta", f"must be a dict, got {type(value).__name__}")


def _check_unique(value: object) -> None:
    if value is not None and not isinstance(value, dict | bool):
        raise ValidationError("unique", f"must be a dict, bool or None, got {value!r}")


_OPT_CHECKS = {
    "queue": _check_queue,
    "priority": _check_priority,
    "max_attempts": _check_max_attempts,
    "tags": _check_tags,
    "meta": _check_meta,
    "unique": _check_unique,
}
