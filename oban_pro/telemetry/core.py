"""Events with handlers, in Oban.py's shape: ``attach``, ``detach``, ``execute``, ``span``.

Handlers are plain callables ``handler(name, metadata)`` run synchronously where the event
happens (in oban_pro that is the node's coordinator process: job events are emitted when a
child reports a job's start and end). A handler that raises is logged and never breaks the
engine. Emitting an event nobody listens to costs one dictionary lookup, so the engine may emit
on hot paths: callers check :func:`listening` before building expensive metadata.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import RLock
from typing import Any

Handler = Callable[[str, dict[str, Any]], None]
Metadata = dict[str, Any]

log = logging.getLogger(__name__)

# event name -> [(handler id, handler)]; replaced, never mutated in place, so ``execute`` can
# read it without the lock.
_handlers: dict[str, tuple[tuple[str, Handler], ...]] = {}
_lock = RLock()


class Collector:
    """Yielded by :func:`span`: metadata added here goes into the stop or exception event."""

    def __init__(self) -> None:
        self._metadata: dict[str, Any] = {}

    def add(self, metadata: dict[str, Any]) -> None:
        self._metadata.update(metadata)

    def get_all(self) -> dict[str, Any]:
        return dict(self._metadata)


class _Unheard(Collector):
    """The collector of a span nobody listens to: what is added goes nowhere."""

    def add(self, metadata: dict[str, Any]) -> None:
        pass


_UNHEARD = _Unheard()


def attach(id: str, events: list[str], handler: Handler) -> None:
    """Call ``handler(name, metadata)`` for each of ``events``; ``id`` names it for
    :func:`detach`."""
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {handler!r}")
    if isinstance(events, str):
        raise TypeError(f"events must be a list of event names, got the string {events!r}")
    with _lock:
        for name in events:
            _handlers[name] = (*_handlers.get(name, ()), (id, handler))


def detach(id: str) -> None:
    """Remove every handler attached under ``id``."""
    with _lock:
        for name, entries in list(_handlers.items()):
            kept = tuple(entry for entry in entries if entry[0] != id)
            if kept:
                _handlers[name] = kept
            else:
                del _handlers[name]


def listening(name: str) -> bool:
    """True when some handler is attached to ``name``."""
    return name in _handlers


def execute(name: str, metadata: Metadata) -> None:
    """Run every handler of ``name`` with a copy of ``metadata``."""
    for _id, handler in _handlers.get(name, ()):
        try:
            handler(name, dict(metadata))
        except Exception:
            log.exception("telemetry handler for %r raised", name)


@contextmanager
def span(prefix: str, start_metadata: Metadata) -> Iterator[Collector]:
    """Emit ``{prefix}.start``, then ``{prefix}.stop`` or ``{prefix}.exception`` (which
    re-raises), with ``duration`` in nanoseconds and ``system_time``."""
    start, stop, failed = f"{prefix}.start", f"{prefix}.stop", f"{prefix}.exception"
    if start not in _handlers and stop not in _handlers and failed not in _handlers:
        # Nobody listens: the engine wraps per-batch work in spans, so skip the metadata.
        yield _UNHEARD
        return
    started = time.monotonic_ns()
    execute(start, {"system_time": started, **start_metadata})
    collector = Collector()
    try:
        yield collector
    except Exception as error:
        ended = time.monotonic_ns()
        execute(
            failed,
            {
                "system_time": ended,
                "duration": ended - started,
                "error_message": str(error),
                "error_type": type(error).__name__,
                "traceback": traceback.format_exc(),
                **start_metadata,
                **collector.get_all(),
            },
        )
        raise
    ended = time.monotonic_ns()
    execute(
        stop,
        {"system_time": ended, "duration": ended - started, **start_metadata,
         **collector.get_all()},
    )  # fmt: skip
