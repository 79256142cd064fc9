"""Validation and safe quoting of names that reach SQL: prefixes (schemas), queues, workers.

Prefixes are spliced into SQL as quoted identifiers, so they are validated strictly. Queue and
worker names only ever travel as bound parameters, so they may hold any printable text.
"""

from __future__ import annotations

import re

from .errors import InvalidPrefixError, ValidationError

_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

#: Oban's check constraints: char_length > 0 and < 128.
MAX_NAME_LENGTH = 127


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a safe schema name, else raise :class:`InvalidPrefixError`."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidPrefixError(prefix)
    return prefix


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (doubling any embedded quote)."""
    return '"' + name.replace('"', '""') + '"'


def quoted_prefix(prefix: object) -> str:
    """Validate ``prefix`` and return it quoted, ready to splice before ``.oban_jobs``."""
    return quote_ident(validate_prefix(prefix))


def validate_name(field: str, value: object) -> str:
    """Validate a queue or worker name: non-blank text of 1-127 characters, no control chars."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError(field, "must not be blank")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(
            field, f"is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    if _CONTROL_RE.search(value):
        raise ValidationError(field, "must not contain control characters")
    return value


def channel(prefix: str, event: str) -> str:
    """The notification channel for ``event`` (compat.md §3), e.g. ``public.oban_insert``."""
    return f"{validate_prefix(prefix)}.oban_{event}"
