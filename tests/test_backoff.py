"""Tests for oban_pro.backoff: Oban's default retry backoff and helpers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from oban_pro.backoff import (
    MAX_EXPONENT,
    add_jitter,
    clamp_attempt,
    default_backoff,
    exponential,
)


class Fixed:
    """A random source that always returns the same draw."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 16), (1, 17), (2, 19), (3, 23), (5, 47), (10, 1039), (20, 15 + 2**20)],
)
def test_without_jitter_is_15_plus_power_of_two(attempt: int, expected: int) -> None:
    assert default_backoff(attempt, 20, jitter=0) == expected
    assert default_backoff(attempt, 20, rng=Fixed(0.0)) == expected


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "exponent"),
    [
        (1, 20, 1),
        (20, 20, 20),
        (1, 21, 1),  # 0.95 rounds to 1
        (10, 40, 5),
        (40, 40, 20),
        (1, 100, 0),  # 0.2 rounds to 0
        (3, 100, 1),  # 0.6 rounds to 1
        (50, 100, 10),
        (99, 100, 20),  # 19.8 rounds to 20
        (1000, 1000, 20),
    ],
)
def test_attempt_is_scaled_when_max_attempts_over_20(
    attempt: int, max_attempts: int, exponent: int
) -> None:
    assert clamp_attempt(attempt, max_attempts) == exponent
    assert default_backoff(attempt, max_attempts, jitter=0) == 15 + 2**exponent


def test_jitter_adds_at_most_ten_percent() -> None:
    base = 15 + 2**10
    assert default_backoff(10, 20, rng=Fixed(0.999999)) == base + int(0.999999 * 0.1 * base)
    assert default_backoff(10, 20, rng=Fixed(0.5)) == base + int(0.05 * base)


def test_seeded_rng_is_deterministic_and_bounded() -> None:
    first = [default_backoff(a, 20, rng=random.Random(42)) for a in range(21)]
    again = [default_backoff(a, 20, rng=random.Random(42)) for a in range(21)]
    assert first == again
    rng = random.Random(7)
    for attempt in range(21):
        base = 15 + 2**attempt
        for _ in range(50):
            delay = default_backoff(attempt, 20, rng=rng)
            assert base <= delay <= base + base // 10


def test_jitter_actually_varies() -> None:
    rng = random.Random(3)
    delays = {default_backoff(12, 20, rng=rng) for _ in range(100)}
    assert len(delays) > 50


def test_custom_jitter_fraction() -> None:
    assert default_backoff(4, 20, jitter=0.5, rng=Fixed(1.0)) == 31 + 15
    with pytest.raises(ValueError, match="jitter multiplier"):
        default_backoff(4, 20, jitter=-0.1)


def test_huge_attempts_are_capped() -> None:
    delay = default_backoff(10**9, 10**9 + 1, jitter=0)
    assert delay == 15 + 2**20
    capped = default_backoff(5000, 20, jitter=0)  # nonsensical, but must not explode
    assert capped == 15 + 2**MAX_EXPONENT
    datetime.now(UTC) + timedelta(seconds=capped * 1.1)  # still representable


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        default_backoff(-1, 20)
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        default_backoff(1, 0)


def test_exponential_helper() -> None:
    assert exponential(3) == 8
    assert exponential(3, min_pad=15, mult=2) == 31
    assert exponential(50, max_pow=10) == 1024
    assert exponential(-3) == 1


@pytest.mark.parametrize(
    ("mode", "draw", "expected"),
    [
        ("inc", 0.5, 105),
        ("dec", 0.5, 95),
        ("both", 0.75, 107),
        ("both", 0.25, 98),
        ("inc", 0.0, 100),
    ],
)
def test_add_jitter_modes(mode: str, draw: float, expected: int) -> None:
    assert add_jitter(100, mode=mode, rng=Fixed(draw)) == expected  # type: ignore[arg-type]


def test_add_jitter_never_negative() -> None:
    assert add_jitter(10, mode="dec", mult=5.0, rng=Fixed(0.9)) == 0


def test_add_jitter_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="jitter mode"):
        add_jitter(10, mode="sideways")  # type: ignore[arg-type]
