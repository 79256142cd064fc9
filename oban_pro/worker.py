"""Workers: the ``@worker`` class decorator, the ``@job`` function decorator, and name lookup.

A worker's name (what goes in ``oban_jobs.worker``) is ``"<module>.<QualName>"`` unless the
decorator is given ``name=...`` (compat.md §2). Any process can turn that string back into the
class with :func:`resolve_worker`, which is how child processes find the code to run.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from .errors import JobTimeoutError, UnknownWorkerError, ValidationError
from .job import Job, running_job

log = logging.getLogger(__name__)

T = TypeVar("T", bound=type)

#: Options a worker (or ``new()``) may set for the jobs it builds: the keyword arguments of
#: :class:`~oban_pro.job.Job` (Oban.py's job fields plus ``unique``).
JOB_OPTIONS = frozenset(
    name
    for name in inspect.signature(Job.__init__).parameters
    if name not in ("self", "worker", "args", "extra", "_validate")
)
#: The job options a cron entry carries from its worker's defaults.
CRON_JOB_OPTIONS = frozenset({"queue", "priority", "max_attempts", "tags", "meta", "unique"})
#: Options that describe how the worker runs rather than its jobs.
RUN_OPTIONS = frozenset({"timeout"})

#: Oban.py's name for the error raised when a job's worker cannot be found.
WorkerResolutionError = UnknownWorkerError

__all__ = [
    "JOB_OPTIONS",
    "JobTimeoutError",
    "RUN_OPTIONS",
    "Worker",
    "WorkerResolutionError",
    "cron_entries",
    "job",
    "register",
    "register_worker",
    "resolve_worker",
    "worker",
    "worker_name",
]

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
        cls, args: Mapping[str, Any] | None = None, /, conn: Any = None, **overrides: Any
    ) -> Job: ...

    # Optional: ``backoff(self, job) -> seconds`` replaces the default backoff.


def worker_name(cls: type) -> str:
    """The default worker name of a class: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_options(opts: Mapping[str, Any]) -> None:
    # Options that are neither job fields nor run options go to each job's ``extra`` (as in
    # Oban.py, where extensions read them); the job fields are checked by ``Job`` itself.
    if "extra" in opts and not isinstance(opts["extra"], Mapping):
        raise ValidationError("extra", f"must be a dict, got {type(opts['extra']).__name__}")
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
    defaults; any :class:`~oban_pro.job.Job` field may be given) and ``timeout`` (seconds; the
    child running a job is killed past it). Any other option is kept, as in Oban.py, in the
    ``extra`` dict of every job the worker builds (not stored in the row). ``cron``
    schedules the worker (an expression, or ``{"expr": ..., "args": ..., "timezone": ...}``).
    The class gains ``new(args, **overrides) -> Job`` and ``await enqueue(args, **overrides)``.
    A class may define ``backoff(self, job) -> seconds`` to replace the default backoff.
    """
    _check_options(options)

    def decorate(cls: T) -> T:
        if not callable(getattr(cls, "process", None)):
            raise ValidationError("worker", f"{cls.__qualname__} must define process(self, job)")
        _wrap_process(cls)
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
    """Make a plain (sync or async) function a worker; the job's args are its arguments.

    The decorated function keeps working as a function and gains ``.new(...)`` and
    ``await .enqueue(...)``, which take the function's own arguments as Oban.py's do:
    ``send_email.new("a@b", "Hi")`` or ``send_email.new(to="a@b", subject="Hi")``. Job options
    that are not parameters of the function (``schedule_in``, ``priority``, ``queue``, ...) may be
    given alongside; ``enqueue`` also takes ``conn=``. One dict of keyword arguments
    (``send_email.new({"to": "a@b", "subject": "Hi"})``) is accepted too, when its keys are
    the function's parameter names. :func:`~oban_pro.current_job` gives the running job.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        def process(self: Any, job: Job) -> Any:
            return func(**job.args)

        attrs = {"process": process, "__module__": func.__module__, "__doc__": func.__doc__}
        if inspect.iscoroutinefunction(func):

            async def aprocess(self: Any, job: Job) -> Any:
                return await func(**job.args)

            attrs["process"] = aprocess
        cls: Any = type(func.__name__, (), attrs)
        cls.__qualname__ = func.__qualname__
        cls = worker(oban=oban, name=name, cron=cron, **options)(cls)
        signature = inspect.signature(func)

        def new(*args: Any, **kwargs: Any) -> Job:
            job_args, overrides = _bind_call(func, signature, args, kwargs)
            return cls.new(job_args, **overrides)

        async def enqueue(*args: Any, conn: Any = None, **kwargs: Any) -> Job:
            job_args, overrides = _bind_call(func, signature, args, kwargs)
            return await cls.enqueue(job_args, conn=conn, **overrides)

        func.new = new  # type: ignore[attr-defined]
        func.enqueue = enqueue  # type: ignore[attr-defined]
        func._worker_class = cls  # type: ignore[attr-defined]
        func._worker_name = cls._worker_name  # type: ignore[attr-defined]
        func._opts = cls._opts  # type: ignore[attr-defined]
        func._oban_name = cls._oban_name  # type: ignore[attr-defined]
        return func

    return decorate


def _bind_call(
    func: Callable[..., Any],
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A function job's call -> (job args, job options)."""
    params = signature.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
        given = args[0]
        if all(isinstance(k, str) for k in given) and (
            takes_kwargs or all(k in params for k in given)
        ):
            try:
                signature.bind(**given)
            except TypeError:
                pass
            else:  # oban_pro's dict form: the keyword arguments themselves
                return dict(given), {}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in JOB_OPTIONS and k not in params}
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError("args", f"{func.__qualname__}{signature}: {exc}") from None
    bound.apply_defaults()
    job_args: dict[str, Any] = {}
    for key, value in bound.arguments.items():
        kind = params[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            job_args.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ValidationError(
                    "args", f"{func.__qualname__} takes *{key}; job args are keyword arguments"
                )
        elif kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ValidationError(
                "args",
                f"{func.__qualname__}'s parameter {key!r} is positional-only; a job calls its "
                "function with keyword arguments",
            )
        else:
            job_args[key] = value
    return job_args, options


def _wrap_process(cls: Any) -> None:
    """Make ``cls.process`` set :func:`~oban_pro.current_job` while it runs."""
    process = cls.__dict__.get("process")
    if not inspect.isfunction(process) or getattr(process, "_sets_current_job", False):
        return
    if inspect.iscoroutinefunction(process):

        @functools.wraps(process)
        async def wrapped(self: Any, job: Job, *args: Any, **kwargs: Any) -> Any:
            with running_job(job):
                return await process(self, job, *args, **kwargs)

    else:

        @functools.wraps(process)
        def wrapped(self: Any, job: Job, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            with running_job(job):
                return process(self, job, *args, **kwargs)

    wrapped._sets_current_job = True  # type: ignore[attr-defined]
    cls.process = wrapped


def _new(cls: Any, args: Mapping[str, Any] | None = None, /, **overrides: Any) -> Job:
    if args is not None and not isinstance(args, Mapping):
        raise ValidationError(
            "args", f"must be a JSON object (a dict), got {type(args).__name__}: {args!r:.80}"
        )
    opts = cls._opts
    params = {k: v for k, v in opts.items() if k in JOB_OPTIONS}
    extra = {k: v for k, v in opts.items() if k not in JOB_OPTIONS and k not in RUN_OPTIONS}
    for key, value in overrides.items():
        if key in JOB_OPTIONS:
            params[key] = value
        else:
            extra[key] = value
    nested = extra.pop("extra", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise ValidationError("extra", f"must be a dict, got {type(nested).__name__}")
        extra = {**extra, **nested}
    return Job(cls._worker_name, args=dict(args or {}), extra=extra, **params)


async def _enqueue(
    cls: Any, args: Mapping[str, Any] | None = None, /, conn: Any = None, **overrides: Any
) -> Job:
    from .oban import Oban

    return await Oban.get_instance(cls._oban_name).enqueue(cls.new(args, **overrides), conn=conn)


def register(cls: type, name: str | None = None) -> None:
    """Make ``cls`` resolvable by its worker name in this process."""
    _registry[name or getattr(cls, "_worker_name", None) or worker_name(cls)] = cls


def register_worker(cls: type) -> None:
    """Make ``cls`` resolvable by its worker name in this process (Oban.py's name)."""
    register(cls)


def _register_cron(cls: Any, spec: str | Mapping[str, Any]) -> None:
    from .cron import CronEntry

    if isinstance(spec, str):
        spec = {"expr": spec}
    spec = dict(spec)
    expr = spec.pop("expr", None) or spec.pop("expression", None)
    if not expr:
        raise ValidationError("cron", "needs an expression, e.g. cron='*/5 * * * *'")
    opts = {k: v for k, v in cls._opts.items() if k in CRON_JOB_OPTIONS}
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
