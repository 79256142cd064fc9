"""Unique jobs: at most one job per key within a period and a set of states.

The key hashes the chosen fields (worker, queue, args — or only some ``keys`` of args — and
meta). Inserts take a transaction-scoped advisory lock on the key before looking for an existing
job, so concurrent oban_pro inserters of the same key serialize and exactly one row is written.
The key is stored as ``meta.uniq_key`` (a name Oban tools read), found through the GIN index on
meta.

Elixir's open-source engine writes no ``uniq_key``, so the lookup also matches rows the way that
engine does (same fields, args/meta by containment, states, period): a job Elixir inserted first
is found. Between languages the check is not race-free: Elixir locks on an Erlang ``phash2`` of
its options, which Python cannot reproduce, so an Elixir and an oban_pro insert of the same job
at the same instant may both write a row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ValidationError

ALL_STATES = (
    "available",
    "suspended",
    "scheduled",
    "executing",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
)
# Oban's "successful" states, its default for unique jobs.
DEFAULT_STATES = ("available", "suspended", "scheduled", "executing", "retryable", "completed")
FIELDS = ("worker", "queue", "args", "meta")
DEFAULT_FIELDS = ("worker", "queue", "args")
DEFAULT_PERIOD = 60.0


@dataclass(frozen=True)
class UniqueOptions:
    """Parsed ``unique=`` option. ``period=None`` means forever."""

    period: float | None = DEFAULT_PERIOD
    fields: tuple[str, ...] = DEFAULT_FIELDS
    keys: tuple[str, ...] | None = None
    states: tuple[str, ...] = DEFAULT_STATES

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | bool) -> UniqueOptions:
        if spec is True:  # as in Elixir Oban: the default fields and states, for ever
            return cls(period=None)
        if not isinstance(spec, Mapping):
            raise ValidationError("unique", f"must be True or a dict, got {spec!r}")
        unknown = set(spec) - {"period", "fields", "keys", "states"}
        if unknown:
            raise ValidationError(
                "unique", f"unknown option {sorted(unknown)[0]!r}; use period, fields, keys, states"
            )
        return cls(
            period=_period(spec.get("period", DEFAULT_PERIOD)),
            fields=_subset("unique.fields", spec.get("fields", DEFAULT_FIELDS), FIELDS),
            keys=tuple(spec["keys"]) if spec.get("keys") is not None else None,
            states=_subset("unique.states", spec.get("states", DEFAULT_STATES), ALL_STATES),
        )

    def key_for(
        self, worker: str, queue: str, args: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> str:
        """The uniqueness key of a job: a hash of the selected fields."""
        values: dict[str, Any] = {"worker": worker, "queue": queue, "args": args, "meta": meta}
        if self.keys is not None:
            values["args"] = {k: args.get(k) for k in self.keys}
            values["meta"] = {k: meta.get(k) for k in self.keys if k in meta}
        chosen = {f: values[f] for f in self.fields}
        text = json.dumps(chosen, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def lookup(
        self, worker: str, queue: str, args: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Parameters of the field-based lookup (``unique_find``): each field that takes part,
        restricted to ``keys`` when given (then only those values must be contained)."""
        fields = set(self.fields)
        if self.keys is not None:
            args = {k: args[k] for k in self.keys if k in args}
            meta = {k: meta[k] for k in self.keys if k in meta}
        return {
            "worker": worker if "worker" in fields else None,
            "queue": queue if "queue" in fields else None,
            "args": json.dumps(dict(args)) if "args" in fields else None,
            "meta": json.dumps(dict(meta)) if "meta" in fields else None,
            "exact": self.keys is None,
        }


def lock_key(uniq_key: str) -> int:
    """A signed 64-bit advisory-lock key derived from the uniqueness key."""
    return int.from_bytes(bytes.fromhex(uniq_key[:16]), "big", signed=True)


def _period(value: Any) -> float | None:
    if value in (None, "infinity", float("inf")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValidationError("unique.period", f"must be seconds > 0 or 'infinity', got {value!r}")
    return float(value)


def _subset(name: str, values: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValidationError(name, f"must be a non-empty list drawn from {', '.join(allowed)}")
    return values
