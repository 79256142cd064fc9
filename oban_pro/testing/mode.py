"""Testing modes (Oban.py's ``oban.testing.mode``): where an enqueued job goes.

- ``"manual"`` (the default): jobs are inserted into the database, where a test can look for
  them (:func:`~oban_pro.testing.assert_enqueued`) and run them when it wants
  (:func:`~oban_pro.testing.drain_queue`).
- ``"inline"``: :meth:`oban_pro.Oban.enqueue` runs each job at once, in the calling process,
  without touching the database, and returns it with the state it ended in.

The mode is a context variable, so it follows the task or thread that set it (tasks started
inside the ``with`` block inherit it) and never leaks into other tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..errors import ConfigError

__all__ = ["MODES", "current_mode", "mode"]

#: The testing modes :func:`mode` accepts.
MODES = ("inline", "manual")

_mode: ContextVar[str | None] = ContextVar("oban_pro_testing_mode", default=None)


@contextmanager
def mode(testing_mode: str) -> Iterator[None]:
    """Use ``testing_mode`` ("inline" or "manual") for every Oban instance inside the block::

        with oban_pro.testing.mode("inline"):
            job = await send_email.enqueue("a@b", "Hi")   # ran here, no database
            assert job.state == "completed"

    Raises :class:`~oban_pro.errors.ConfigError` for another value.
    """
    if testing_mode not in MODES:
        raise ConfigError("testing mode", testing_mode, "'inline' or 'manual'")
    token = _mode.set(testing_mode)
    try:
        yield
    finally:
        _mode.reset(token)


def current_mode() -> str | None:
    """The mode set by the innermost :func:`mode` block here, or ``None`` (manual)."""
    return _mode.get()
