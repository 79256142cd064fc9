"""Retry backoff: how long a failed job waits before its next attempt.

The default matches Elixir Oban and Oban.py (``Oban.Worker.backoff/1`` / ``jittery_clamped``)::

    a = attempt                                   if max_attempts <= 20
    a = round(attempt / max_attempts * 20)        otherwise
    delay = 15 + 2 ** a seconds, plus 0..10% random jitter (never negative)

``round`` is Python's (banker's) rounding; Elixir's ``round/1`` rounds halves away from zero.
The two only differ when ``attempt / max_attempts * 20`` is exactly ``x.5``, and then by one
power of two.  Because the check constraint keeps ``attempt <= max_attempts``, the exponent is
at most 20 (about 12 days) in practice; it is additionally capped at :data:`MAX_EXPONENT` so a
nonsensical attempt number cannot produce a delay that overflows ``datetime`` or a PostgreSQL
interval.
"""

from __future__ import annotations

import random
from typing import Literal, Protocol

#: Oban scales attempts onto 0..20 when ``max_attempts`` is larger than this.
CLAMPED_MAX = 20

#: Largest power of two ever used (2**30 s is about 34 years: absurd, but still representable).
MAX_EXPONENT = 30

#: Constant seconds added to every default backoff.
MIN_PAD = 15

JitterMode = Literal["inc", "dec", "both"]


class RandomSource(Protocol):
    """Anything with a ``random()`` method returning a float in ``[0, 1)``.

    The :mod:`random` module itself, a :class:`random.Random` instance, or a test stub.
    """

    def random(self) -> float: ...


def clamp_attempt(attempt: int, max_attempts: int, *, clamped_max: int = CLAMPED_MAX) -> int:
    """Scale ``attempt`` onto ``0..clamped_max`` when ``max_attempts`` exceeds ``clamped_max``."""
    _check_attempts(attempt, max_attempts)
    if max_attempts <= clamped_max:
        return attempt
    return round(attempt / max_attempts * clamped_max)


def exponential(
    attempt: int, *, max_pow: int = MAX_EXPONENT, min_pad: int = 0, mult: int = 1
) -> int:
    """Return ``min_pad + mult * 2 ** min(attempt, max_pow)`` seconds (negative counts as 0)."""
    exponent = min(max(attempt, 0), max_pow)
    return min_pad + mult * (1 << exponent)


def add_jitter(
    seconds: int,
    *,
    mode: JitterMode = "inc",
    mult: float = 0.1,
    rng: RandomSource = random,
) -> int:
    """Return ``seconds`` moved by a random amount of up to ``mult * seconds``.

    ``mode`` chooses the direction: ``"inc"`` only adds (the default, and what the default
    backoff uses), ``"dec"`` only subtracts, ``"both"`` does either with equal odds. The result
    is never negative.
    """
    if mode not in ("inc", "dec", "both"):
        raise ValueError(f"jitter mode must be 'inc', 'dec' or 'both', got {mode!r}")
    if mult < 0:
        raise ValueError(f"jitter multiplier must be >= 0, got {mult!r}")
    draw = rng.random()
    diff = int(draw * mult * seconds)
    if mode == "inc" or (mode == "both" and draw >= 0.5):
        return seconds + diff
    return max(seconds - diff, 0)


def default_backoff(
    attempt: int,
    max_attempts: int,
    *,
    jitter: float = 0.1,
    rng: RandomSource = random,
) -> int:
    """Seconds to wait before retrying a job that failed on ``attempt`` (Oban's default).

    ``jitter`` is the largest extra fraction added at random (0 disables it); ``rng`` is the
    random source, handy for deterministic tests (``random.Random(seed)``).
    """
    exponent = clamp_attempt(attempt, max_attempts)
    base = exponential(exponent, min_pad=MIN_PAD)
    return add_jitter(base, mode="inc", mult=jitter, rng=rng)


def _check_attempts(attempt: int, max_attempts: int) -> None:
    """Reject negative attempts and non-positive max_attempts with a clear message."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
