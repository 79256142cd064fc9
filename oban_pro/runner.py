"""The job runner: resolve the worker, build the :class:`~oban_pro.job.Job`, classify the result.

Used by every worker process (:mod:`oban_pro.pool.child`, which decides *where* a job runs: a
task on its event loop or a thread) and by :mod:`oban_pro.testing` (``perform_job``,
``process_job``, ``drain_queue``, the inline mode), so a job behaves the same in a test as in
production. Nothing here touches pipes or processes.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import os
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from .backoff import default_backoff
from .errors import JobTimeoutError, UnknownWorkerError
from .job import Cancel, Job, Record, Snooze
from .pool.messages import Done, Run
from .registry import resolve_worker

__all__ = ["Executed", "JobInterrupted", "JobRunner", "Prepared"]

_json_decoder = msgspec.json.Decoder()


class JobInterrupted(BaseException):  # noqa: N818 - named like asyncio.CancelledError
    """Raised inside a sync job's thread to stop it (its timeout passed, or it was cancelled).

    A ``BaseException``, like ``asyncio.CancelledError``, so a job's ``except Exception`` does
    not swallow the request to stop.
    """


@dataclass(slots=True)
class Prepared:
    """A job ready to run: its worker instance and the bound ``process`` call."""

    run: Run
    job: Job
    instance: Any
    #: True when ``process`` is a coroutine function (it runs as a task, not on a thread).
    is_async: bool


@dataclass(slots=True)
class Executed:
    """A job run in the caller's own process (tests, draining, inline mode).

    ``done`` is the outcome a child would report; ``result`` and ``error`` are what ``process``
    returned or raised, which never cross a pipe but which Oban.py's test helpers hand back.
    """

    done: Done
    result: Any = None
    error: BaseException | None = None


class JobRunner:
    """Imports the worker modules once, then prepares jobs and turns outcomes into ``Done``."""

    def __init__(self, imports: list[str]) -> None:
        self.import_errors: dict[str, str] = {}
        for module in imports:
            try:
                importlib.import_module(module)
            except BaseException as exc:  # noqa: BLE001 - a module may even call sys.exit()
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self.import_errors[module] = text
        self._workers: dict[str, type | str] = {}
        self._async_process: dict[type, bool] = {}

    # -- preparing ----------------------------------------------------------------------------

    def prepare(self, run: Run) -> Prepared | Done:
        """The job with its worker instance, or the ``Done`` that says why it cannot run."""
        prepared = self._prepare(run)
        return prepared if isinstance(prepared, Prepared) else prepared.done

    def _prepare(self, run: Run) -> Prepared | Executed:
        """:meth:`prepare`, keeping the exception of a job that cannot run."""
        cls = self._worker(run.worker)
        if isinstance(cls, str):
            done = Done(run.job_id, "error", error=cls, delay=self.backoff(run))
            return Executed(done, error=UnknownWorkerError(cls))
        try:
            job = self._job(run)
        except Exception as exc:  # noqa: BLE001 - bad input fails the job, not the child
            text = f"job {run.job_id} could not be built from its row: {exc}"
            done = Done(run.job_id, "error", error=text, delay=self.backoff(run))
            return Executed(done, error=exc)
        try:
            instance = cls()
        except BaseException as exc:  # noqa: BLE001 - a broken constructor fails the job
            done = Done(run.job_id, "error", error=traceback.format_exc(), delay=self.backoff(run))
            return Executed(done, error=exc)
        return Prepared(run, job, instance, self._is_async(cls, instance))

    def _is_async(self, cls: type, instance: Any) -> bool:
        """Whether the instance's ``process`` is a coroutine function: known per class (the
        check costs ~1 us a job), unless the instance sets a ``process`` of its own."""
        own = getattr(instance, "__dict__", None)
        if own and "process" in own:
            return inspect.iscoroutinefunction(own["process"])
        found = self._async_process.get(cls)
        if found is None:
            found = inspect.iscoroutinefunction(getattr(instance, "process", None))
            self._async_process[cls] = found
        return found

    # -- outcomes -------------------------------------------------------------------------------

    def classify(self, job_id: int, result: Any) -> Done:
        """The ``Done`` for what ``process`` returned."""
        if isinstance(result, Snooze):
            return Done(job_id, "snooze", delay=float(result.seconds), meta=result.meta)
        if isinstance(result, Cancel):
            return Done(job_id, "cancel", reason=str(result.reason))
        if isinstance(result, Record):
            return Done(job_id, "record", recorded=result.encoded)
        return Done(job_id, "completed")

    def failure(self, prepared: Prepared, error: str, exc: BaseException | None = None) -> Done:
        """The ``Done`` for a job whose ``process`` raised ``exc`` (``error`` is the traceback
        text)."""
        delay, note = self._worker_backoff(prepared)
        if note:
            error = f"{error}\n{note}"
        done = Done(prepared.run.job_id, "error", error=error, delay=delay)
        if exc is not None:  # what telemetry's exception event reports
            done.error_type, done.error_message = type(exc).__name__, str(exc)
        return done

    def backoff(self, run: Run) -> float:
        """The default backoff for ``run``'s attempt."""
        try:
            return float(default_backoff(max(run.attempt, 0), max(run.max_attempts, 1)))
        except Exception:  # noqa: BLE001 - never let a backoff bug kill the child
            return 15.0

    def _worker_backoff(self, prepared: Prepared) -> tuple[float, str | None]:
        custom = getattr(prepared.instance, "backoff", None)
        if custom is None or not callable(custom):
            return self.backoff(prepared.run), None
        try:
            value = custom(prepared.job)
            seconds = float(value)
            if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"backoff must return seconds >= 0, got {value!r}")
            return seconds, None
        except Exception:  # noqa: BLE001
            note = (
                "note: the worker's backoff() raised, so the default backoff was used:\n"
                + traceback.format_exc()
            )
            return self.backoff(prepared.run), note

    # -- running in the caller's process (tests, drain, inline mode) -------------------------

    def run(self, run: Run) -> Done:
        """Run one job to its end in this thread (async ones on a private event loop)."""
        started = time.perf_counter()
        prepared = self.prepare(run)
        if isinstance(prepared, Done):
            return prepared
        try:
            result = prepared.instance.process(prepared.job)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            done = self.classify(run.job_id, result)
        except BaseException:  # noqa: BLE001 - SystemExit in a job fails the job only
            done = self.failure(prepared, traceback.format_exc())
        done.duration = time.perf_counter() - started
        return done

    async def run_here(self, run: Run) -> Executed:
        """Run one job to its end on the caller's event loop, as a child runs it: an async
        ``process`` awaited on this loop (so it can use the caller's connections and
        ``Oban.get_instance()``), a sync one on a thread. ``run.timeout`` applies to async jobs
        (a thread cannot be stopped from here; in a node the child interrupts it).
        """
        started = time.perf_counter()
        prepared = self._prepare(run)
        if isinstance(prepared, Executed):
            return prepared
        try:
            result = await self._process_here(prepared)
            executed = Executed(self.classify(run.job_id, result), result)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - SystemExit fails the job only
            executed = Executed(self.failure(prepared, traceback.format_exc()), error=exc)
        executed.done.duration = time.perf_counter() - started
        return executed

    async def _process_here(self, prepared: Prepared) -> Any:
        if not prepared.is_async:
            result = await asyncio.to_thread(prepared.instance.process, prepared.job)
            return await result if inspect.isawaitable(result) else result
        timeout = prepared.run.timeout or None
        try:
            async with asyncio.timeout(timeout) as deadline:
                return await prepared.instance.process(prepared.job)
        except TimeoutError as exc:
            if deadline.expired():
                raise JobTimeoutError(
                    f"{prepared.run.worker} (job {prepared.run.job_id}) timed out after "
                    f"{timeout:g}s"
                ) from exc
            raise

    # -- resolving ----------------------------------------------------------------------------

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

    def _job(self, run: Run) -> Job:
        return job_from_run(run)


def job_from_run(run: Run, state: str = "executing") -> Job:
    """The :class:`Job` a worker is given, built from its :class:`Run` message."""
    return Job(
        worker=run.worker,
        id=run.job_id,
        args=_document(run.args, "args"),
        meta=_document(run.meta, "meta"),
        queue=run.queue,
        attempt=run.attempt,
        max_attempts=run.max_attempts,
        priority=run.priority,
        tags=list(run.tags),
        errors=_errors(run.errors),
        inserted_at=_stamp(run.inserted_at),
        scheduled_at=_stamp(run.scheduled_at),
        attempted_at=_stamp(run.attempted_at),
        attempted_by=run.attempted_by,
        state=state,
        _validate=False,
    )


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
