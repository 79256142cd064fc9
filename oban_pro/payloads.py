"""Codec for LISTEN/NOTIFY payloads shared with Elixir Oban and Oban.py (compat.md §3).

Three payload forms exist in the wild and all are decoded:

* plain JSON, e.g. ``{"queue":"default"}`` (what SQL-side notifications and every version send);
* ``base64(gzip(json))``: the text starts with ``H4sI`` (the base64 of gzip's magic bytes);
* ``"Z:" + base64(gzip(json))``.

Encoding sends plain compact JSON, which every version reads; only a payload whose JSON is near
PostgreSQL's 8000-byte NOTIFY limit is sent as ``base64(gzip(json))`` (without ``Z:``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from typing import Any

from .errors import PayloadError

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
NOTIFY_LIMIT = 8000

#: JSON of at least this many UTF-8 bytes is sent compressed.
COMPRESS_THRESHOLD = 7500

#: Largest decompressed payload accepted (guards against gzip bombs).
MAX_DECOMPRESSED = 1_000_000

_GZIP_B64_MAGIC = "H4sI"
_Z_PREFIX = "Z:"


def decode_payload(text: str) -> dict[str, Any]:
    """Decode a notification payload in any of the three forms into a dict.

    Raises :class:`~oban_pro.errors.PayloadError` for text that is none of them, bad base64,
    bad or truncated gzip, more than :data:`MAX_DECOMPRESSED` bytes once decompressed, invalid
    JSON, or JSON that is not an object.
    """
    if not isinstance(text, str):
        raise PayloadError(f"payload must be str, got {type(text).__name__}")
    if text.startswith(_Z_PREFIX):
        return _loads_object(_gunzip(_b64decode(text[len(_Z_PREFIX) :])))
    if text.startswith(_GZIP_B64_MAGIC):
        return _loads_object(_gunzip(_b64decode(text)))
    return _loads_object(text)


def encode_payload(obj: dict[str, Any]) -> str:
    """Encode ``obj`` for NOTIFY: compact JSON, or ``base64(gzip(json))`` near the size limit.

    Raises :class:`~oban_pro.errors.PayloadError` if ``obj`` is not a dict, cannot be
    serialized as JSON, or stays at or above PostgreSQL's 8000-byte limit even compressed.
    """
    if not isinstance(obj, dict):
        raise PayloadError(f"payload must be a dict, got {type(obj).__name__}")
    data = _dumps(obj).encode("utf-8")
    if len(data) < COMPRESS_THRESHOLD:
        return data.decode("utf-8")
    packed = base64.b64encode(gzip.compress(data, mtime=0)).decode("ascii")
    if len(packed) >= NOTIFY_LIMIT:
        raise PayloadError(
            f"payload is {len(data)} bytes of JSON and {len(packed)} bytes compressed; "
            f"PostgreSQL NOTIFY allows at most {NOTIFY_LIMIT - 1}: send less data"
        )
    return packed


def _dumps(obj: dict[str, Any]) -> str:
    """Compact JSON (no spaces, UTF-8 kept as is, NaN/Infinity refused)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise PayloadError(f"payload cannot be encoded as JSON: {error}") from error


def _b64decode(text: str) -> bytes:
    """Strict standard base64; missing ``=`` padding is tolerated."""
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise PayloadError(f"payload is not valid base64 ({error}): {_preview(text)}") from error


def _gunzip(data: bytes) -> bytes:
    """Decompress one gzip member, refusing truncated data and output over the size cap."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED + 1)
    except zlib.error as error:
        raise PayloadError(f"payload is not valid gzip data: {error}") from error
    if len(out) > MAX_DECOMPRESSED:
        raise PayloadError(
            f"payload decompresses to more than {MAX_DECOMPRESSED} bytes; refusing it"
        )
    if not inflater.eof:
        raise PayloadError("payload gzip data is truncated")
    if inflater.unused_data:
        raise PayloadError(f"payload has {len(inflater.unused_data)} bytes after the gzip data")
    return out


def _loads_object(data: str | bytes) -> dict[str, Any]:
    """Parse JSON that must be an object; NaN and Infinity literals are refused."""
    text = _utf8(data) if isinstance(data, bytes) else data
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as error:
        raise PayloadError("payload JSON is nested too deeply") from error
    except ValueError as error:
        raise PayloadError(
            f"payload is not JSON, base64(gzip(json)) or 'Z:'-prefixed base64(gzip(json)) "
            f"({error}): {_preview(text)}"
        ) from error
    if not isinstance(value, dict):
        raise PayloadError(f"payload JSON must be an object, got {type(value).__name__}")
    return value


def _utf8(data: bytes) -> str:
    """Decode decompressed bytes as UTF-8 (JSON's only encoding)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PayloadError(f"decompressed payload is not valid UTF-8: {error}") from error


def _reject_constant(name: str) -> Any:
    """``json.loads`` hook: NaN/Infinity are not JSON and Elixir cannot read them."""
    raise ValueError(f"{name} is not valid JSON")


def _preview(text: str, limit: int = 60) -> str:
    """A short repr of ``text`` for error messages."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
