"""Workers: the ``@worker`` class decorator, the ``@job`` function decorator, and name lookup.

A worker's name (what goes in ``oban_jobs.worker``) is ``"<module>.<QualName>"`` unless the
decorator is given ``name=...`` (compat.md §2). Any process can turn that string back into the
class with :func:`resolve_worker`, which is how child processes find the code to run.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from .errors import UnknownWorkerError, ValidationError
from .job import Job

T = TypeVar("T", bound=type)

#: Options a worker may set as defaults for the jobs it builds.
JOB_OPTIONS = frozenset({"queue", "priority", "max_attempts", "tags", "meta", "unique"})
#: Options that describe how the worker runs rather than its jobs.
RUN_OPTIONS = frozenset({"timeout"})

_registry: dict[str, type] = {}
_cron_entries: list[Any] = []


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


def worker_name(cls: type) -> str:
    """The default worker name of a class: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_options(opts: Mapping[str, Any]) -> None:
    unknown = set(opts) - JOB_OPTIONS - RUN_OPTIONS
    if unknown:
        known = ", ".join(sorted(JOB_OPTIONS | RUN_OPTIONS))
        raise ValidationError(sorted(unknown)[0], f"unknown worker option; known: {known}")
    timeout = opts.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValidationError("timeout", f"must be seconds > 0, got {timeout!r}")


def worker(
    *,
    oban: str = "Oban",
    name: str | None = None,
    cron: str | Mapping[str, Any] | None = None,
    **options: Any,
) -> Callable[[T], T]:
    """Make a class with ``process(self, job)`` a worker.

    Options: ``queue``, ``priority``, ``max_attempts``, ``tags``, ``meta``, ``unique`` (job
    defaults) and ``timeout`` (seconds; the child running a job is killed past it). ``cron``
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


def register(cls: type, name: str | None = None) -> None:
    """Make ``cls`` resolvable by its worker name in this process."""
    _registry[name or getattr(cls, "_worker_name", None) or worker_name(cls)] = cls


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
    _cron_entries.append(entry)


def cron_entries() -> list[Any]:
    """Cron entries declared by ``@worker(cron=...)`` / ``@job(cron=...)`` in this process."""
    return list(_cron_entries)


def resolve_worker(name: str) -> type:
    """The worker class called ``name``: registered here, or importable as ``module.QualName``."""
    found = _registry.get(name)
    if found is not None:
        return found
    if name.startswith("__main__."):
        raise UnknownWorkerError(
            f"unknown worker {name!r}: it was defined in a script run as __main__, which worker "
            f"processes cannot import; move it to a module and list that module in --import"
        )
    cls = _import_by_path(name)
    if cls is None or not callable(getattr(cls, "process", None)):
        raise UnknownWorkerError(
            f"unknown worker {name!r}: no worker of that name is registered in this process and "
            f"it is not an importable module.QualName with a process() method; check --import "
            f"lists the module that defines it"
        )
    _registry[name] = cls
    return cls


def _import_by_path(name: str) -> Any:
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        if hasattr(obj, "_worker_class"):  # an @job function
            obj = obj._worker_class
        return obj
    return None


def worker_timeout(name: str, default: float = 0.0) -> float:
    """The timeout a registered worker declares, or ``default``.

    Only this process's registry is consulted: the coordinator must never import a module
    because a job row names it (that would run arbitrary import-time code in the parent).
    Workers from the node's ``imports`` are registered when those modules are imported.
    """
    cls = _registry.get(name)
    if cls is None:
        return default
    return float(getattr(cls, "_opts", {}).get("timeout") or default)
