"""Tests for oban_pro.cron: parsing, matching, next_after, entries and meta."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from oban_pro.cron import (
    CronEntry,
    CronError,
    CronExpression,
    CronNeverMatchesError,
    cron_meta,
)
from oban_pro.errors import ObanError, ValidationError

ALL_MINUTES = frozenset(range(60))
NEW_YORK = ZoneInfo("America/New_York")


def parse(text: str) -> CronExpression:
    return CronExpression.parse(text)


# ---------------------------------------------------------------------------- syntax


def test_star_means_every_value() -> None:
    expr = parse("* * * * *")
    assert expr.minutes == ALL_MINUTES
    assert expr.hours == frozenset(range(24))
    assert expr.days == frozenset(range(1, 32))
    assert expr.months == frozenset(range(1, 13))
    assert expr.weekdays == frozenset(range(7))
    assert not expr.is_reboot


def test_numbers_ranges_lists() -> None:
    expr = parse("5 1-3 1,15,31 2,4-5 1")
    assert expr.minutes == {5}
    assert expr.hours == {1, 2, 3}
    assert expr.days == {1, 15, 31}
    assert expr.months == {2, 4, 5}
    assert expr.weekdays == {1}


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("*/15", {0, 15, 30, 45}),
        ("10-30/10", {10, 20, 30}),
        ("10-31/10", {10, 20, 30}),
        ("50/5", {50, 55}),
        ("*/1", set(range(60))),
        ("0-59/59", {0, 59}),
        ("1,*/30", {0, 1, 30}),
        ("7-9/5,58", {7, 58}),
    ],
)
def test_steps(field: str, expected: set[int]) -> None:
    assert parse(f"{field} * * * *").minutes == expected


def test_month_names_case_insensitive() -> None:
    assert parse("0 0 1 JAN,jun,Dec *").months == {1, 6, 12}
    assert parse("0 0 1 feb-APR *").months == {2, 3, 4}
    assert parse("0 0 1 JAN-DEC/3 *").months == {1, 4, 7, 10}


def test_weekday_names_case_insensitive() -> None:
    assert parse("0 0 * * MON-FRI").weekdays == {1, 2, 3, 4, 5}
    assert parse("0 0 * * sun,Sat").weekdays == {0, 6}
    assert parse("0 0 * * tue-thu").weekdays == {2, 3, 4}


def test_weekday_zero_and_seven_are_sunday() -> None:
    assert parse("0 0 * * 0").weekdays == {0}
    assert parse("0 0 * * 7").weekdays == {0}
    assert parse("0 0 * * 5-7").weekdays == {5, 6, 0}
    assert parse("0 0 * * */2").weekdays == {0, 2, 4, 6}


def test_extra_whitespace_is_ignored() -> None:
    assert parse("  0\t12  *  *   * ").hours == {12}


@pytest.mark.parametrize(
    ("nickname", "equivalent"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_nicknames(nickname: str, equivalent: str) -> None:
    expr, other = parse(nickname), parse(equivalent)
    assert expr.text == nickname
    fields = ("minutes", "hours", "days", "months", "weekdays")
    assert [getattr(expr, f) for f in fields] == [getattr(other, f) for f in fields]


def test_reboot_never_matches_a_minute() -> None:
    expr = parse("@reboot")
    assert expr.is_reboot
    assert not expr.matches(datetime(2024, 1, 1, 0, 0))
    with pytest.raises(CronNeverMatchesError):
        expr.next_after(datetime(2024, 1, 1))
    assert issubclass(CronNeverMatchesError, ObanError)


# ---------------------------------------------------------------------------- matching


def test_matches_minute_resolution_ignores_seconds() -> None:
    expr = parse("30 14 * * *")
    assert expr.matches(datetime(2024, 5, 6, 14, 30, 59, 999_999))
    assert not expr.matches(datetime(2024, 5, 6, 14, 31))
    assert not expr.matches(datetime(2024, 5, 6, 15, 30))


def test_matches_month_and_weekday() -> None:
    expr = parse("0 9 * JUN MON-FRI")
    assert expr.matches(datetime(2024, 6, 3, 9, 0))  # Monday
    assert not expr.matches(datetime(2024, 6, 1, 9, 0))  # Saturday
    assert not expr.matches(datetime(2024, 7, 1, 9, 0))  # Monday in July


def test_dom_and_dow_both_restricted_match_either() -> None:
    expr = parse("0 0 13 * FRI")
    assert expr.matches(datetime(2024, 9, 13))  # Friday the 13th
    assert expr.matches(datetime(2024, 5, 13))  # Monday the 13th: day-of-month
    assert expr.matches(datetime(2024, 5, 17))  # Friday the 17th: day-of-week
    assert not expr.matches(datetime(2024, 5, 14))  # Tuesday the 14th


def test_only_day_of_month_restricted() -> None:
    expr = parse("0 0 1 * *")
    assert expr.matches(datetime(2024, 5, 1))
    assert not expr.matches(datetime(2024, 5, 2))


def test_only_day_of_week_restricted() -> None:
    expr = parse("0 0 * * SUN")
    assert expr.matches(datetime(2024, 5, 5))
    assert not expr.matches(datetime(2024, 5, 1))


def test_star_step_covering_every_value_is_unrestricted() -> None:
    # '*/1' in day-of-month is the whole range, so the weekday alone decides.
    expr = parse("0 0 */1 * MON")
    assert not expr.days_restricted
    assert expr.matches(datetime(2024, 5, 6))
    assert not expr.matches(datetime(2024, 5, 7))


def test_star_step_that_narrows_is_restricted() -> None:
    expr = parse("0 0 */2 * MON")
    assert expr.days_restricted and expr.weekdays_restricted
    assert expr.matches(datetime(2024, 5, 7))  # 7th (odd day): day-of-month
    assert expr.matches(datetime(2024, 5, 6))  # Monday the 6th: day-of-week
    assert not expr.matches(datetime(2024, 5, 8))


def test_matches_aware_datetime_in_its_own_zone() -> None:
    expr = parse("0 9 * * *")
    assert expr.matches(datetime(2024, 1, 1, 9, 0, tzinfo=NEW_YORK))
    assert not expr.matches(datetime(2024, 1, 1, 9, 0, tzinfo=NEW_YORK).astimezone(UTC))


# ---------------------------------------------------------------------------- next_after


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        ("* * * * *", datetime(2024, 1, 1, 0, 0, 30), datetime(2024, 1, 1, 0, 1)),
        ("* * * * *", datetime(2024, 1, 1, 0, 0), datetime(2024, 1, 1, 0, 1)),
        ("*/15 * * * *", datetime(2024, 1, 1, 0, 14, 59), datetime(2024, 1, 1, 0, 15)),
        ("0 * * * *", datetime(2024, 1, 1, 23, 0), datetime(2024, 1, 2, 0, 0)),
        ("@monthly", datetime(2024, 1, 31, 12), datetime(2024, 2, 1)),
        ("@yearly", datetime(2024, 12, 31, 23, 59), datetime(2025, 1, 1)),
        ("0 0 31 * *", datetime(2024, 1, 31), datetime(2024, 3, 31)),
        ("0 0 30 * *", datetime(2024, 1, 30), datetime(2024, 3, 30)),
        ("0 12 29 2 *", datetime(2024, 1, 1), datetime(2024, 2, 29, 12)),
        ("0 12 29 2 *", datetime(2024, 2, 29, 12), datetime(2028, 2, 29, 12)),
        ("0 0 29 2 *", datetime(2096, 3, 1), datetime(2104, 2, 29)),  # 2100 is no leap year
        ("0 9 * * MON-FRI", datetime(2024, 5, 3, 9, 0), datetime(2024, 5, 6, 9, 0)),
        ("0 0 13 * FRI", datetime(2024, 5, 13), datetime(2024, 5, 17)),
        ("30 23 31 * *", datetime(2024, 4, 1), datetime(2024, 5, 31, 23, 30)),
        ("5 4 * DEC *", datetime(2024, 12, 31, 4, 5), datetime(2025, 12, 1, 4, 5)),
        ("59 23 31 12 *", datetime(2024, 12, 31, 23, 59), datetime(2025, 12, 31, 23, 59)),
    ],
)
def test_next_after(text: str, after: datetime, expected: datetime) -> None:
    assert parse(text).next_after(after) == expected


def test_next_after_agrees_with_matches() -> None:
    expr = parse("*/7 1-3,22 */3 * MON,WED")
    moment = datetime(2024, 2, 27, 21, 0)
    for _ in range(40):
        nxt = expr.next_after(moment)
        assert expr.matches(nxt) and nxt > moment
        probe = moment.replace(second=0) + timedelta(minutes=1)
        while probe < nxt:
            assert not expr.matches(probe)
            probe += timedelta(minutes=1)
        moment = nxt


def test_next_after_keeps_aware_zone() -> None:
    after = datetime(2024, 1, 1, 8, 0, tzinfo=NEW_YORK)
    result = parse("0 9 * * *").next_after(after)
    assert result == datetime(2024, 1, 1, 9, 0, tzinfo=NEW_YORK)
    assert result.utcoffset() == timedelta(hours=-5)


def test_next_after_skips_wall_time_lost_to_dst() -> None:
    # 2024-03-10 02:00-03:00 does not exist in New York.
    result = parse("30 2 * * *").next_after(datetime(2024, 3, 10, 0, 0, tzinfo=NEW_YORK))
    assert result.replace(tzinfo=None) == datetime(2024, 3, 11, 2, 30)


def test_next_after_visits_repeated_wall_time_twice() -> None:
    # 2024-11-03 01:00-02:00 happens twice in New York (EDT, then EST).
    expr = parse("30 1 * * *")
    first = expr.next_after(datetime(2024, 11, 3, 0, 0, tzinfo=NEW_YORK))
    second = expr.next_after(first)
    third = expr.next_after(second)
    from_fold0 = expr.next_after(datetime(2024, 11, 3, 1, 45, tzinfo=NEW_YORK))
    assert from_fold0.fold == 1
    assert from_fold0.astimezone(UTC) == second.astimezone(UTC)
    assert (first.fold, second.fold) == (0, 1)
    assert first.utcoffset() == timedelta(hours=-4)
    assert second.utcoffset() == timedelta(hours=-5)
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    assert third.replace(tzinfo=None) == datetime(2024, 11, 4, 1, 30)


# ---------------------------------------------------------------------------- invalid


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["expected 5 fields", "got 0"]),
        ("* * * *", ["expected 5 fields", "got 4"]),
        ("* * * * * *", ["expected 5 fields", "got 6"]),
        ("60 * * * *", ["minute", "'60'", "0-59"]),
        ("* 24 * * *", ["hour", "'24'", "0-23"]),
        ("* * 0 * *", ["day-of-month", "'0'", "1-31"]),
        ("* * 32 * *", ["day-of-month", "'32'", "1-31"]),
        ("* * * 13 *", ["month", "'13'", "1-12 or JAN-DEC"]),
        ("* * * * 8", ["day-of-week", "'8'", "0-7 or SUN-SAT"]),
        ("* * * FOO *", ["month", "'FOO'", "JAN-DEC"]),
        ("* * * * MONDAY", ["day-of-week", "'MONDAY'", "SUN-SAT"]),
        ("*/0 * * * *", ["minute", "'*/0'", "positive"]),
        ("*/ * * * *", ["minute", "'*/'", "positive"]),
        ("5-1 * * * *", ["minute", "'5-1'", "reversed"]),
        ("1,,2 * * * *", ["minute", "'1,,2'", "empty"]),
        ("1/2/3 * * * *", ["minute", "'1/2/3'", "malformed"]),
        ("a * * * *", ["minute", "'a'", "0-59"]),
        ("-5 * * * *", ["minute", "''", "0-59"]),
        ("1-2-3 * * * *", ["minute", "'2-3'"]),
        ("\u0663 * * * *", ["minute", "0-59"]),  # Arabic-Indic digit three
        ("@fortnightly", ["unknown nickname", "@fortnightly", "@hourly"]),
        ("0 0 30 2 *", ["never", "30", "2"]),
        ("0 0 31 4,6,9,11 *", ["never"]),
    ],
)
def test_invalid_expressions(text: str, fragments: list[str]) -> None:
    with pytest.raises(CronError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"cron: invalid expression {text!r}")
    for fragment in fragments:
        assert fragment in message


def test_cron_error_is_a_validation_error_on_field_cron() -> None:
    with pytest.raises(ValidationError) as caught:
        parse("bad")
    assert caught.value.field == "cron"
    assert isinstance(caught.value, ValueError)


def test_non_string_expression() -> None:
    with pytest.raises(CronError, match="must be a string"):
        CronExpression.parse(5)  # type: ignore[arg-type]


def test_impossible_day_is_fine_when_weekday_also_restricted() -> None:
    # Feb 30 never exists, but with both fields restricted any Monday matches.
    expr = parse("0 0 30 2 MON")
    assert expr.next_after(datetime(2024, 1, 1)) == datetime(2024, 2, 5)


# ---------------------------------------------------------------------------- entries


def test_entry_defaults_and_meta() -> None:
    entry = CronEntry("*/5 * * * *", "MyApp.Workers.Report")
    assert entry.args == {} and entry.opts == {}
    assert entry.timezone == "Etc/UTC"
    assert entry.name == "MyApp.Workers.Report */5 * * * *"
    assert cron_meta(entry) == {
        "cron": True,
        "cron_expr": "*/5 * * * *",
        "cron_name": "MyApp.Workers.Report */5 * * * *",
        "cron_tz": "Etc/UTC",
    }


def test_entry_explicit_name_and_opts() -> None:
    opts = {
        "queue": "reports",
        "priority": 3,
        "max_attempts": 5,
        "tags": ["a"],
        "meta": {"k": 1},
        "unique": {"period": 60},
    }
    entry = CronEntry("@daily", "w.W", {"id": 1}, name="nightly", opts=opts)
    assert entry.name == "nightly"
    assert cron_meta(entry)["cron_name"] == "nightly"
    assert entry.opts == opts


def test_entry_matches_in_its_timezone() -> None:
    entry = CronEntry("0 9 * * *", "w.W", timezone="America/New_York")
    assert entry.matches(datetime(2024, 1, 15, 14, 0, tzinfo=UTC))  # 09:00 EST
    assert entry.matches(datetime(2024, 7, 15, 13, 0, tzinfo=UTC))  # 09:00 EDT
    assert not entry.matches(datetime(2024, 1, 15, 9, 0, tzinfo=UTC))
    assert entry.matches(datetime(2024, 1, 15, 14, 0))  # naive is taken as UTC


def test_entry_day_boundary_depends_on_timezone() -> None:
    entry = CronEntry("0 0 * * MON", "w.W", timezone="Asia/Tokyo")
    # Sunday 15:00 UTC is Monday 00:00 in Tokyo.
    assert entry.matches(datetime(2024, 5, 5, 15, 0, tzinfo=UTC))
    assert not entry.matches(datetime(2024, 5, 6, 0, 0, tzinfo=UTC))


def test_entry_fires_twice_in_repeated_dst_hour() -> None:
    entry = CronEntry("30 1 * * *", "w.W", timezone="America/New_York")
    assert entry.matches(datetime(2024, 11, 3, 5, 30, tzinfo=UTC))  # 01:30 EDT
    assert entry.matches(datetime(2024, 11, 3, 6, 30, tzinfo=UTC))  # 01:30 EST
    assert entry.next_after(datetime(2024, 11, 3, 5, 30, tzinfo=UTC)) == datetime(
        2024, 11, 3, 6, 30, tzinfo=UTC
    )


def test_entry_never_fires_in_skipped_dst_hour() -> None:
    entry = CronEntry("30 2 * * *", "w.W", timezone="America/New_York")
    start = datetime(2024, 3, 10, 5, 0, tzinfo=UTC)  # 00:00 EST
    assert not any(entry.matches(start + timedelta(minutes=m)) for m in range(24 * 60))
    assert entry.next_after(start) == datetime(2024, 3, 11, 6, 30, tzinfo=UTC)


def test_entry_next_after_is_utc() -> None:
    entry = CronEntry("0 9 * * *", "w.W", timezone="Europe/Paris")
    nxt = entry.next_after(datetime(2024, 6, 1, 12, 0, tzinfo=UTC))
    assert nxt == datetime(2024, 6, 2, 7, 0, tzinfo=UTC)
    assert nxt.tzinfo is UTC


def test_entry_reboot() -> None:
    entry = CronEntry("@reboot", "w.W")
    assert entry.is_reboot
    assert not entry.matches(datetime(2024, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"expression": "* * *"}, "cron"),
        ({"worker": ""}, "worker"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"timezone": "../etc/passwd"}, "timezone"),
        ({"args": [1]}, "args"),
        ({"args": {1: "x"}}, "args"),
        ({"opts": {"bogus": True}}, "opts"),
        ({"opts": {"priority": 10}}, "priority"),
        ({"opts": {"priority": True}}, "priority"),
        ({"opts": {"max_attempts": 0}}, "max_attempts"),
        ({"opts": {"queue": " "}}, "queue"),
        ({"opts": {"tags": "a"}}, "tags"),
        ({"opts": {"meta": []}}, "meta"),
        ({"opts": {"unique": "yes"}}, "unique"),
    ],
)
def test_entry_validation(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"expression": "* * * * *", "worker": "w.W"}
    with pytest.raises(ValidationError) as caught:
        CronEntry(**{**base, **kwargs})  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_a_leading_node_runs_cron_through_its_plugins_with_reboot_once(
    oban_dsn, oban_prefix, monkeypatch
):
    """The node's cron is one of its plugins: evaluated (here on demand instead of at the next
    minute boundary) only once it leads, it inserts the due entry and the @reboot one; a second
    evaluation in the same minute inserts nothing, and @reboot never again."""
    from helpers import query, wait_until

    from oban_pro import Oban
    from oban_pro.plugins.scheduler import Scheduler

    monkeypatch.setattr(Scheduler, "seconds_to_next_run", lambda self, now=None: 600.0)
    evaluated: list[list[str]] = []
    real_step = Scheduler.step

    async def step(self, now=None):
        inserted = await real_step(self, now)
        evaluated.append([job.worker for job in inserted])
        return inserted

    monkeypatch.setattr(Scheduler, "step", step)
    crontab = [CronEntry("@reboot", "app.Boot"), CronEntry("* * * * *", "app.Every")]
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix, queues={"other": 1}, processes=1,
                crontab=crontab)  # fmt: skip
    async with oban:
        await wait_until(lambda: oban.is_leader, message="leadership")
        runner = oban._runtime._plugins
        assert "cron" in [p.name for p in runner.plugins]

        def workers() -> list[str]:
            rows = query(oban_dsn, f'SELECT worker FROM "{oban_prefix}".oban_jobs ORDER BY id')
            return [w for (w,) in rows]

        runner.trigger("cron")
        await wait_until(lambda: len(evaluated) == 1, message="cron's first evaluation")
        assert sorted(evaluated[0]) == ["app.Boot", "app.Every"]
        runner.trigger("cron")  # the same minute (or the next one): no second @reboot
        await wait_until(lambda: len(evaluated) == 2, message="cron's second evaluation")
        assert "app.Boot" not in evaluated[1]
    assert workers().count("app.Boot") == 1
