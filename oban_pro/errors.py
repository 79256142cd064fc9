"""The exceptions oban_pro raises.

Every error derives from :class:`ObanError`; each message says what was wrong and what to do.
"""

from __future__ import annotations


class ObanError(Exception):
    """Base class of every oban_pro error."""


class ConfigError(ObanError, ValueError):
    """A configuration field has a bad value. ``field`` names it."""

    def __init__(self, field: str, value: object, expected: str, *, why: str | None = None):
        self.field = field
        self.value = value
        # ``why`` replaces "expected ..." when the check said more precisely what is wrong.
        super().__init__(
            f"invalid {field}: {why}" if why else f"invalid {field}={value!r}: expected {expected}"
        )


class ValidationError(ObanError, ValueError):
    """A job (or an option given to build one) is invalid. ``field`` names the bad field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class InvalidPrefixError(ConfigError):
    """A prefix (PostgreSQL schema name) is unsafe or malformed."""

    def __init__(self, prefix: object) -> None:
        super().__init__(
            "prefix",
            prefix,
            "a schema name of 1-63 characters: a letter or underscore, then letters, digits or "
            "underscores (quotes, dots, spaces and other characters are refused)",
        )


class DatabaseNotConfiguredError(ObanError):
    """No DSN was given and the embedded PostgreSQL is not installed."""


class SchemaNotReadyError(ObanError):
    """The database lacks tables a node needs (``missing`` names them): run the migrations."""

    def __init__(self, prefix: str, missing: list[str]) -> None:
        self.prefix = prefix
        self.missing = missing
        tables = ", ".join(f"{prefix}.{name}" for name in missing)
        super().__init__(
            f"the database has no {tables}: run `oban-pro migrate up --prefix {prefix}` (it adds "
            f"only what is missing to a schema made by Elixir Oban or Oban.py)"
        )


class MigrationError(ObanError):
    """A migration cannot run as asked (unknown layout, data in the way, ...)."""


class UnknownWorkerError(ObanError, LookupError):
    """A job names a worker this process cannot import or find."""


class JobNotFoundError(ObanError, LookupError, ValueError):
    """No job has the id an operation was given (a ``ValueError``, as Oban.py raises)."""


class JobTimeoutError(ObanError, TimeoutError):
    """A job ran longer than its timeout and its child process was killed."""


class ChildCrashedError(ObanError):
    """The child process running a job died (signal, segfault, ``os._exit``, OOM kill)."""


class PayloadError(ObanError, ValueError):
    """A notification payload could not be decoded."""


class NotRunningError(ObanError, RuntimeError):
    """An operation needs a started :class:`~oban_pro.Oban` instance."""


class CoordinatorOnlyError(ObanError, RuntimeError):
    """An :class:`~oban_pro.Oban` operation that needs the node's coordinator (its in-memory
    queues and running jobs) was called from job code in a worker process.

    ``operation`` names it; the message says why it cannot run there and what to use instead.
    """

    def __init__(self, operation: str, reason: str, instead: str) -> None:
        self.operation = operation
        super().__init__(
            f"{operation} is not available inside a job: {reason}, which job code in a worker "
            f"process cannot reach. {instead}"
        )


class BlockingCallOnLoopError(ObanError, RuntimeError):
    """A blocking instance method was called on the worker process' event loop, where it would
    wait for itself: async code awaits the coroutine methods instead."""


class WorkflowError(ObanError):
    """A workflow operation cannot be done as asked (e.g. no workflow has that id)."""


class WorkflowValidationError(WorkflowError, ValidationError):
    """A workflow is malformed. ``step`` names the step at fault (``field`` says which of its
    options): unknown deps, duplicate names, cycles, bad jobs. Raised before anything touches
    the database."""

    def __init__(self, step: str, field: str, message: str) -> None:
        self.step = step
        self.detail = message
        ValidationError.__init__(self, field, f"step {step!r}: {message}")
