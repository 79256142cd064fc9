"""The worker registry of one process: names -> classes, their run options, cron entries.

Deliberately a leaf: it imports nothing of the runtime (no ``Oban``, coordinator or pool), so
the decorators in :mod:`oban_pro.worker`, the coordinator's dispatcher and the job runner in
child processes can all use it without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import UnknownWorkerError

__all__ = [
    "register",
    "register_cron",
    "cron_entries",
    "resolve_worker",
    "worker_name",
    "worker_timeout",
    "worker_isolated",
]

_registry: dict[str, type] = {}
_cron_entries: list[Any] = []


def worker_name(cls: type) -> str:
    """The default worker name of a class: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type, name: str | None = None) -> None:
    """Make ``cls`` resolvable by its worker name in this process."""
    _registry[name or getattr(cls, "_worker_name", None) or worker_name(cls)] = cls


def register_cron(entry: Any) -> None:
    """Remember a cron entry declared by ``@worker(cron=...)`` in this process."""
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


def _registered_option(name: str, option: str) -> Any:
    # Only this process's registry is consulted: the coordinator must never import a module
    # because a job row names it (that would run arbitrary import-time code in the parent).
    # Workers from the node's ``imports`` are registered when those modules are imported.
    cls = _registry.get(name)
    if cls is None:
        return None
    return getattr(cls, "_opts", {}).get(option)


def worker_timeout(name: str, default: float = 0.0) -> float:
    """The timeout a registered worker declares, or ``default``."""
    return float(_registered_option(name, "timeout") or default)


def worker_isolated(name: str) -> bool:
    """True when a registered worker asks to run each job alone in a child (``isolated=True``)."""
    return bool(_registered_option(name, "isolated"))
