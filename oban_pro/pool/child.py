"""The worker process: import worker modules once, then run jobs one at a time.

The child reads frames of :class:`~oban_pro.pool.messages.Run` messages from the parent, runs
each job (sync ``process`` directly, coroutines on one persistent event loop), and answers each
with a :class:`~oban_pro.pool.messages.Done` that classifies the outcome and reports the child's
RSS. Jobs run in the order they arrive, so the parent always knows which one is running: the
oldest it has not heard back about.

Signals are the parent's business: the child ignores SIGINT (a terminal's Ctrl-C reaches the
whole process group) and puts itself in its own process group so the parent can kill it together
with anything the job started. A watchdog thread exits the child when the parent dies, so an
orphaned child never keeps running a job that the database will hand to another node.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..backoff import default_backoff
from ..job import Cancel, Job, Record, Snooze
from ..worker import resolve_worker
from .framing import FrameReader, write_frame
from .messages import Done, Ready, Run, Skip, Stop, decode_to_child, encode_to_parent

__all__ = ["child_main", "read_rss"]

#: Exit code of a child whose parent died while it was running a job.
ORPHAN_EXIT_CODE = 70

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_json_decoder = msgspec.json.Decoder()


def read_rss(pid: int | str = "self") -> int:
    """Resident set size of a process in bytes (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class _SelfRss:
    """Reads this process' RSS with one pread on a descriptor kept open (~1 us)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def __call__(self) -> int:
        if self._fd is None:
            return 0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            return 0


def child_main(
    read_conn: Any,
    write_conn: Any,
    imports: list[str],
    close_fds: list[int] | None = None,
) -> None:
    """Entry point of a worker process.

    ``read_conn``/``write_conn`` are :class:`multiprocess.connection.Connection` objects (they
    survive every start method) or plain descriptors; only their descriptors are used, with the
    raw framing of :mod:`oban_pro.pool.framing`. ``close_fds`` are descriptors inherited through
    ``fork`` that belong to the parent or to sibling children.
    """
    _reset_process_state(close_fds or [])
    read_fd = read_conn if isinstance(read_conn, int) else read_conn.fileno()
    write_fd = write_conn if isinstance(write_conn, int) else write_conn.fileno()
    for fd in (read_fd, write_fd):
        try:
            os.set_inheritable(fd, False)  # subprocesses of jobs must not hold our pipes
        except OSError:
            pass
    runner = _Runner(imports)
    _start_orphan_watchdog(read_fd, runner)
    try:
        write_frame(write_fd, encode_to_parent([Ready(os.getpid(), runner.import_errors)]))
        _serve(FrameReader(read_fd), write_fd, runner)
    except BrokenPipeError:
        pass  # the parent is gone: nobody is left to tell
    finally:
        runner.close()
    # Keep the Connection objects alive until here: collecting them would close our pipes.
    del read_conn, write_conn


def _serve(reader: FrameReader, write_fd: int, runner: _Runner) -> None:
    queue: deque[Run] = deque()
    skipped: set[int] = set()
    stopping = False
    worker_pid = os.getpid()

    def take(payload: bytes) -> None:
        nonlocal stopping
        for message in decode_to_child(payload):
            if isinstance(message, Run):
                queue.append(message)
            elif isinstance(message, Skip):
                skipped.add(message.job_id)
            elif isinstance(message, Stop):
                stopping = True

    while True:
        if not queue:
            if stopping:
                return
            payload = reader.read_frame()
            if payload is None:
                return  # the parent closed our pipe (or died): nothing left to do
            take(payload)
            continue
        run = queue.popleft()
        if run.job_id in skipped:
            skipped.discard(run.job_id)
            done = Done(run.job_id, "skipped")
        else:
            done = runner.run(run)
            if os.getpid() != worker_pid:
                # Job code called fork() and this is the copy returning: only the real worker
                # may report and take jobs, so the copy leaves without touching the pipes.
                os._exit(0)
        write_frame(write_fd, encode_to_parent([done]))
        # With a window > 1 more jobs may wait here; look for a Skip/Stop before the next one.
        while queue and reader.has_frame():
            payload = reader.read_frame()
            if payload is None:
                return
            take(payload)


def _reset_process_state(close_fds: list[int]) -> None:
    """Undo what a ``fork`` copied from the parent that a worker must not use."""
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.setpgid(0, 0)  # own process group: the parent kills the job's subprocesses with us
    except OSError:
        pass
    if threading.current_thread() is threading.main_thread():
        try:
            signal.set_wakeup_fd(-1)  # a forked asyncio parent's wakeup socket is not ours
        except (ValueError, OSError):
            pass
        for sig in signal.valid_signals():
            try:
                handler = signal.getsignal(sig)
            except (ValueError, OSError):
                continue
            if callable(handler) and sig != signal.SIGINT:
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (ValueError, OSError):
                    pass
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A fork inside a running event loop leaves that loop marked as running in this thread.
    asyncio.events._set_running_loop(None)
    # The parent starts us as a daemon (so it reaps us at exit even if never stopped); jobs
    # that use multiprocess themselves must still be allowed to start processes.
    try:
        from multiprocess import process as mp_process

        mp_process.current_process()._config.pop("daemon", None)
    except Exception:  # noqa: BLE001
        pass


def _start_orphan_watchdog(read_fd: int, runner: _Runner) -> None:
    """Exit when the parent dies mid-job (our read pipe hangs up), without reading from it."""

    def watch() -> None:
        poller = select.poll()
        poller.register(read_fd, 0)  # POLLHUP is always reported, data is left alone
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            except OSError:
                return
            if any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events):
                break
        # An idle child sees EOF and exits by itself; a busy one is running a job that nobody
        # will ever ack: stop now rather than race the node that will run it again.
        if runner.busy:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(ORPHAN_EXIT_CODE)

    threading.Thread(target=watch, name="oban-orphan-watchdog", daemon=True).start()


class _Runner:
    """Resolves workers (cached), runs jobs and classifies their outcome."""

    def __init__(self, imports: list[str]) -> None:
        self.busy = False
        self.import_errors: dict[str, str] = {}
        for module in imports:
            try:
                importlib.import_module(module)
            except BaseException as exc:  # noqa: BLE001 - a module may even call sys.exit()
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self.import_errors[module] = text
        self._workers: dict[str, type | str] = {}
        self._rss = _SelfRss()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- running --------------------------------------------------------------------------

    def run(self, run: Run) -> Done:
        self.busy = True
        started = time.perf_counter()
        try:
            done = self._run(run)
        finally:
            self.busy = False
        done.duration = time.perf_counter() - started
        done.rss = self._rss()
        return done

    def _run(self, run: Run) -> Done:
        cls = self._worker(run.worker)
        if isinstance(cls, str):
            return Done(run.job_id, "error", error=cls, delay=self._backoff(run))
        try:
            job = self._job(run)
        except Exception as exc:  # noqa: BLE001 - bad input fails the job, not the child
            return Done(
                run.job_id,
                "error",
                error=f"job {run.job_id} could not be built from its row: {exc}",
                delay=self._backoff(run),
            )
        instance = None
        try:
            instance = cls()
            result = instance.process(job)
            if inspect.isawaitable(result):
                result = self._event_loop().run_until_complete(_await(result))
            return self._classify(run.job_id, result)
        except BaseException:  # noqa: BLE001 - SystemExit in a job fails the job, not the child
            error = traceback.format_exc()
            delay, note = self._worker_backoff(instance, job, run)
            if note:
                error = f"{error}\n{note}"
            return Done(run.job_id, "error", error=error, delay=delay)

    def _classify(self, job_id: int, result: Any) -> Done:
        if isinstance(result, Snooze):
            return Done(job_id, "snooze", delay=float(result.seconds), meta=result.meta)
        if isinstance(result, Cancel):
            return Done(job_id, "cancel", reason=str(result.reason))
        if isinstance(result, Record):
            return Done(job_id, "record", recorded=result.encoded)
        return Done(job_id, "completed")

    def _worker_backoff(self, instance: Any, job: Any, run: Run) -> tuple[float, str | None]:
        custom = getattr(instance, "backoff", None) if instance is not None else None
        if custom is None or not callable(custom):
            return self._backoff(run), None
        try:
            value = custom(job)
            seconds = float(value)
            if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"backoff must return seconds >= 0, got {value!r}")
            return seconds, None
        except Exception:  # noqa: BLE001
            note = (
                "note: the worker's backoff() raised, so the default backoff was used:\n"
                + traceback.format_exc()
            )
            return self._backoff(run), note

    def _backoff(self, run: Run) -> float:
        try:
            return float(default_backoff(max(run.attempt, 0), max(run.max_attempts, 1)))
        except Exception:  # noqa: BLE001 - never let a backoff bug kill the child
            return 15.0

    # -- resolving ------------------------------------------------------------------------

    def _worker(self, name: str) -> type | str:
        """The worker class, or the error text saying why it cannot be had (cached)."""
        found = self._workers.get(name)
        if found is None:
            found = self._workers[name] = self._resolve(name)
        return found

    def _resolve(self, name: str) -> type | str:
        for module, text in self.import_errors.items():
            if name == module or name.startswith(module + "."):
                return (
                    f"unknown worker {name!r}: its module {module!r} failed to import in the "
                    f"worker process (pid {os.getpid()}): {text}"
                )
        try:
            return resolve_worker(name)
        except Exception as exc:  # noqa: BLE001 - includes errors raised while importing
            if type(exc).__name__ == "UnknownWorkerError":
                text = str(exc)
            else:
                text = (
                    f"unknown worker {name!r}: importing it raised "
                    + "".join(traceback.format_exception_only(type(exc), exc)).strip()
                )
            if self.import_errors:
                failed = "; ".join(f"{m!r}: {t}" for m, t in self.import_errors.items())
                text += f" (these worker modules failed to import in this process: {failed})"
            return text

    # -- building the job -----------------------------------------------------------------

    def _job(self, run: Run) -> Any:
        args = _document(run.args, "args")
        meta = _document(run.meta, "meta")
        errors = _errors(run.errors)
        return Job(
            worker=run.worker,
            id=run.job_id,
            args=args,
            meta=meta,
            queue=run.queue,
            attempt=run.attempt,
            max_attempts=run.max_attempts,
            priority=run.priority,
            tags=list(run.tags),
            errors=errors,
            inserted_at=_stamp(run.inserted_at),
            scheduled_at=_stamp(run.scheduled_at),
            attempted_at=_stamp(run.attempted_at),
            attempted_by=run.attempted_by,
            state="executing",
            _validate=False,
        )

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _document(value: Any, field: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    try:
        decoded = _json_decoder.decode(value)
    except (msgspec.DecodeError, TypeError) as exc:
        raise ValueError(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise ValueError(f"{field} must be a JSON object, got {type(decoded).__name__}")
    return decoded


def _errors(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if not value:
        return []
    try:
        decoded = _json_decoder.decode(value)
    except (msgspec.DecodeError, TypeError):
        return []  # informational only: a malformed history must not fail the job
    return decoded if isinstance(decoded, list) else []


def _stamp(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None
