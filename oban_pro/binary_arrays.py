"""One-dimensional PostgreSQL arrays in the binary wire format, packed in one call each.

The acker sends its batch as typed arrays (``unnest`` in ACK_JOBS). psycopg's generic list
dumper looks up a dumper for every element and writes them one by one; for the ack's eight
arrays that was the largest single cost of the coordinator's CPU per no-op job in a profile.
Here each array is one ``struct.pack`` (numbers) or one ``bytes.join`` (text, jsonb) over
values the caller guarantees are of the array's type.

A value is a :class:`BinaryArray`: ``bytes`` of a subclass per array type, which
:func:`register_binary_arrays` lets a cursor send as they are, typed by that OID.

The format (PostgreSQL's ``array_send``): ndim, has-nulls flag, element OID, then per
dimension its length and lower bound (1), then each element as a length (-1: NULL) and its
bytes. jsonb elements are a version byte (1) and the JSON text.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache

import psycopg
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

__all__ = [
    "BinaryArray",
    "register_binary_arrays",
    "float8_array",
    "int4_array",
    "int8_array",
    "jsonb_array",
    "text_array",
]

# Element type OID -> array type OID (PostgreSQL's built-in, fixed OIDs).
_INT4, _INT8, _FLOAT8, _TEXT, _JSONB = 23, 20, 701, 25, 3802
_ARRAY_OIDS = {_INT4: 1007, _INT8: 1016, _FLOAT8: 1022, _TEXT: 1009, _JSONB: 3807}

_HEADER = struct.Struct(">iiiii")  # ndim, has_nulls, element oid, length, lower bound
_EMPTY = struct.Struct(">iii")  # ndim 0, no nulls, element oid
_LENGTH = struct.Struct(">i")
_NULL = _LENGTH.pack(-1)


class BinaryArray(bytes):
    """An array already in PostgreSQL's binary format (one subclass per array type)."""

    oid = 0


def _array_type(name: str, element_oid: int) -> type[BinaryArray]:
    return type(name, (BinaryArray,), {"oid": _ARRAY_OIDS[element_oid], "__slots__": ()})


_ARRAY_TYPES = {oid: _array_type(f"Array{oid}", oid) for oid in _ARRAY_OIDS}


class BinaryArrayDumper(Dumper):
    """Sends a :class:`BinaryArray` as it is, in binary (subclassed per array type)."""

    format = Format.BINARY

    def dump(self, obj: bytes) -> bytes:  # type: ignore[override]
        return obj


def register_binary_arrays(adapters: AdaptersMap) -> None:
    """Let ``adapters`` (a cursor's, say) send the arrays made here."""
    for cls in _ARRAY_TYPES.values():
        dumper = type(f"{cls.__name__}Dumper", (BinaryArrayDumper,), {"oid": cls.oid})
        adapters.register_dumper(cls, dumper)


def _header(element_oid: int, n: int, has_nulls: bool = False) -> bytes:
    if n == 0:
        return _EMPTY.pack(0, 0, element_oid)
    return _HEADER.pack(1, 1 if has_nulls else 0, element_oid, n, 1)


@lru_cache(maxsize=256)
def _elements(code: str, n: int) -> struct.Struct:
    # Each element is its length and its value: one pack for the whole array.
    return struct.Struct(">" + ("i" + code) * n)


def _fixed(element_oid: int, code: str, size: int, values: Sequence[float]) -> BinaryArray:
    n = len(values)
    body = _elements(code, n).pack(*_interleave(size, values))
    return _ARRAY_TYPES[element_oid](_header(element_oid, n) + body)


def _interleave(size: int, values: Sequence[float]) -> list[float]:
    out: list[float] = [size] * (2 * len(values))
    out[1::2] = values
    return out


def int4_array(values: Sequence[int]) -> BinaryArray:
    """``int4[]`` of these ints (no NULLs)."""
    return _fixed(_INT4, "i", 4, values)


def int8_array(values: Sequence[int]) -> BinaryArray:
    """``int8[]`` of these ints (no NULLs)."""
    return _fixed(_INT8, "q", 8, values)


def float8_array(values: Sequence[float]) -> BinaryArray:
    """``float8[]`` of these numbers (no NULLs)."""
    return _fixed(_FLOAT8, "d", 8, values)


def _varlen(element_oid: int, items: Sequence[bytes | None]) -> BinaryArray:
    parts: list[bytes] = []
    has_nulls = False
    for item in items:
        if item is None:
            has_nulls = True
            parts.append(_NULL)
        else:
            parts.append(_LENGTH.pack(len(item)))
            parts.append(item)
    head = _header(element_oid, len(items), has_nulls)
    return _ARRAY_TYPES[element_oid](head + b"".join(parts))


def text_array(values: Sequence[str | None]) -> BinaryArray:
    """``text[]`` of these strings (None: NULL)."""
    return _varlen(_TEXT, [None if v is None else v.encode() for v in values])


def jsonb_array(values: Sequence[str | None]) -> BinaryArray:
    """``jsonb[]`` of these JSON texts (None: NULL). The texts are not parsed here: the
    server rejects one that is not JSON, and the whole statement with it."""
    return _varlen(_JSONB, [None if v is None else b"\x01" + v.encode() for v in values])


# On psycopg's global adapters, once: every connection (whoever made its pool) can send them,
# with no per-cursor registration on the ack's path. Only these private types are affected.
register_binary_arrays(psycopg.adapters)
