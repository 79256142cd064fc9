"""Workers: the ``@worker`` class decorator, the ``@job`` function decorator, and name lookup.

A worker's name (what goes in ``oban_jobs.worker``) is ``"<module>.<QualName>"`` unless the
decorator is given ``name=...`` (compat.md §2). Any process can turn that string back into the
class with :func:`resolve_worker`, which is how child processes find the code to run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from .errors import ValidationError
from .job import Job
from .registry import (  # noqa: F401 - re-exported: the public names used to live here
    cron_entries,
    register,
    register_cron,
    resolve_worker,
    worker_isolated,
    worker_name,
    worker_timeout,
)

T = TypeVar("T", bound=type)

#: Options a worker may set as defaults for the jobs it builds.
JOB_OPTIONS = frozenset({"queue", "priority", "max_attempts", "tags", "meta", "unique"})
#: Options that describe how the worker runs rather than its jobs.
RUN_OPTIONS = frozenset({"timeout", "isolated"})


class Worker(Protocol):
    """What ``@worker`` gives a class (for type checkers)."""

    _opts: dict[str, Any]
    _worker_name: str

    def process(self, job: Job) -> Any: ...

    @classmethod
    def new(cls, args: Mapping[str, Any] | None = None, /, **overrides: Any) -> Job: ...

    @classmethod
    async def enqueue(
        cls, args: Mapping[str, Any] | None = None, /, *, conn: Any = None, **overrides: Any
    ) -> Job: ...


def _check_options(opts: Mapping[str, Any]) -> None:
    unknown = set(opts) - JOB_OPTIONS - RUN_OPTIONS
    if unknown:
        known = ", ".join(sorted(JOB_OPTIONS | RUN_OPTIONS))
        raise ValidationError(sorted(unknown)[0], f"unknown worker option; known: {known}")
    timeout = opts.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValidationError("timeout", f"must be seconds > 0, got {timeout!r}")
    isolated = opts.get("isolated")
    if isolated is not None and not isinstance(isolated, bool):
        raise ValidationError("isolated", f"must be True or False, got {isolated!r}")


def worker(
    *,
    oban: str = "Oban",
    name: str | None = None,
    cron: str | Mapping[str, Any] | None = None,
    **options: Any,
) -> Callable[[T], T]:
    """Make a class with ``process(self, job)`` a worker.

    Options: ``queue``, ``priority``, ``max_attempts``, ``tags``, ``meta``, ``unique`` (job
    defaults), ``timeout`` (seconds; past it the job is interrupted, and its child killed if it
    does not stop within the kill grace) and ``isolated`` (run each job alone in a child:
    for CPU-heavy, memory-hungry or crash-prone jobs). ``cron``
    schedules the worker (an expression, or ``{"expr": ..., "args": ..., "timezone": ...}``).
    The class gains ``new(args, **overrides) -> Job`` and ``await enqueue(args, **overrides)``.
    A class may define ``backoff(self, job) -> seconds`` to replace the default backoff.
    """
    _check_options(options)

    def decorate(cls: T) -> T:
        if not callable(getattr(cls, "process", None)):
            raise ValidationError("worker", f"{cls.__qualname__} must define process(self, job)")
        cls._opts = dict(options)  # type: ignore[attr-defined]
        cls._oban_name = oban  # type: ignore[attr-defined]
        cls._worker_name = name or worker_name(cls)  # type: ignore[attr-defined]
        cls.new = classmethod(_new)  # type: ignore[attr-defined]
        cls.enqueue = classmethod(_enqueue)  # type: ignore[attr-defined]
        register(cls)
        if cron is not None:
            _register_cron(cls, cron)
        return cls

    return decorate


def job(
    *,
    oban: str = "Oban",
    name: str | None = None,
    cron: str | Mapping[str, Any] | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """Make a plain (sync or async) function a worker; the job's args are its keyword arguments.

    The decorated function keeps working as a function and gains ``.new`` and ``.enqueue``.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        def process(self: Any, job: Job) -> Any:
            return func(**job.args)

        attrs = {"process": process, "__module__": func.__module__, "__doc__": func.__doc__}
        if inspect.iscoroutinefunction(func):

            async def aprocess(self: Any, job: Job) -> Any:
                return await func(**job.args)

            attrs["process"] = aprocess
        cls = type(func.__name__, (), attrs)
        cls.__qualname__ = func.__qualname__
        cls = worker(oban=oban, name=name, cron=cron, **options)(cls)
        func.new = cls.new  # type: ignore[attr-defined]
        func.enqueue = cls.enqueue  # type: ignore[attr-defined]
        func._worker_class = cls  # type: ignore[attr-defined]
        func._worker_name = cls._worker_name  # type: ignore[attr-defined]
        return func

    return decorate


def _new(cls: Any, args: Mapping[str, Any] | None = None, /, **overrides: Any) -> Job:
    if args is not None and not isinstance(args, Mapping):
        raise ValidationError(
            "args", f"must be a JSON object (a dict), got {type(args).__name__}: {args!r:.80}"
        )
    params = {k: v for k, v in cls._opts.items() if k in JOB_OPTIONS}
    params.update(overrides)
    return Job(cls._worker_name, args=dict(args or {}), **params)


async def _enqueue(
    cls: Any, args: Mapping[str, Any] | None = None, /, *, conn: Any = None, **overrides: Any
) -> Job:
    from .oban import Oban

    return await Oban.get_instance(cls._oban_name).enqueue(cls.new(args, **overrides), conn=conn)


def _register_cron(cls: Any, spec: str | Mapping[str, Any]) -> None:
    from .cron import CronEntry

    if isinstance(spec, str):
        spec = {"expr": spec}
    spec = dict(spec)
    expr = spec.pop("expr", None) or spec.pop("expression", None)
    if not expr:
        raise ValidationError("cron", "needs an expression, e.g. cron='*/5 * * * *'")
    opts = {k: v for k, v in cls._opts.items() if k in JOB_OPTIONS}
    opts.update(spec.pop("opts", {}))
    entry = CronEntry(
        expression=expr,
        worker=cls._worker_name,
        args=spec.pop("args", {}),
        **({"name": spec.pop("name")} if "name" in spec else {}),
        **({"timezone": spec.pop("timezone")} if "timezone" in spec else {}),
        opts=opts,
    )
    if spec:
        raise ValidationError("cron", f"unknown cron keys: {', '.join(sorted(spec))}")
    register_cron(entry)
