"""A small Erlang External Term Format codec, for recorded job results (compat.md §2).

Oban Pro, Oban.py and Oban Web store a recorded result in ``meta.return`` as standard base64
(no ``=`` padding) of ``:erlang.term_to_binary(value)``. This module encodes and decodes the
subset of terms that maps naturally onto Python values.

Encoding (Python -> term):

========================  =====================================================================
``None``                  atom ``nil`` (SMALL_ATOM_UTF8_EXT, as OTP 26+ emits atoms)
``True`` / ``False``      atoms ``true`` / ``false``
``int``                   SMALL_INTEGER_EXT (0..255), INTEGER_EXT (32-bit signed),
                          SMALL_BIG_EXT / LARGE_BIG_EXT beyond that
``float``                 NEW_FLOAT_EXT (NaN and infinities have no Erlang form: ValueError)
``str``                   BINARY_EXT holding UTF-8 (an Elixir string)
``bytes``/``bytearray``   BINARY_EXT
``list``                  LIST_EXT with a NIL_EXT tail; ``[]`` is NIL_EXT
``tuple``                 SMALL_TUPLE_EXT (LARGE_TUPLE_EXT over 255 elements)
``dict``                  MAP_EXT (keys may be any encodable value)
========================  =====================================================================

Decoding (term -> Python) reverses that, with these conventions:

* a binary becomes ``str`` when it is valid UTF-8 and ``bytes`` otherwise, so ``b"abc"``
  round-trips as ``"abc"`` (Elixir itself does not distinguish the two);
* atoms ``nil``/``true``/``false`` become ``None``/``True``/``False``; any other atom becomes a
  ``str`` holding its name (ATOM_UTF8_EXT, SMALL_ATOM_UTF8_EXT, and the legacy Latin-1
  ATOM_EXT/SMALL_ATOM_EXT are all read);
* STRING_EXT (Erlang's compact form of a list of bytes, e.g. a charlist) becomes a list of ints;
* old-style FLOAT_EXT is read; zlib-compressed terms (tag 80) are inflated.

Anything else (pids, references, functions, improper lists, bitstrings ...) raises
:class:`TermDecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import zlib
from collections.abc import Callable
from typing import Any

from .errors import ObanError

VERSION = 131

NEW_FLOAT_EXT = 70
COMPRESSED = 80
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
SMALL_ATOM_EXT = 115
MAP_EXT = 116
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119

#: Default cap on the base64 text of a recorded result (and on inflated compressed terms).
DEFAULT_RECORD_LIMIT = 64_000_000

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_SPECIAL_ATOMS: dict[str, Any] = {"nil": None, "true": True, "false": False}


class TermDecodeError(ObanError, ValueError):
    """Bytes (or base64 text) that are not a supported Erlang external term."""


class RecordTooLargeError(ObanError, ValueError):
    """A recorded result encodes to more than the allowed size."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"recorded result encodes to {size} characters of base64, over the limit of "
            f"{limit}; return less data or raise the limit"
        )


# --------------------------------------------------------------------------------- encoding


def encode_term(value: Any) -> bytes:
    """Return ``term_to_binary(value)``: the version byte 131 followed by the term.

    Raises :class:`TypeError` naming the type of an unsupported value, and :class:`ValueError`
    for NaN/infinite floats, strings that are not encodable as UTF-8, and structures that are
    cyclic or nested too deeply.
    """
    out = bytearray([VERSION])
    try:
        _encode(value, out)
    except RecursionError as error:
        raise ValueError("value is cyclic or nested too deeply to encode as a term") from error
    return bytes(out)


def _encode(value: Any, out: bytearray) -> None:
    """Append the encoding of ``value`` (without version byte) to ``out``."""
    encoder = _encoder_for(value)
    if encoder is None:
        raise TypeError(
            f"cannot encode a value of type {type(value).__name__} as an Erlang term "
            "(supported: None, bool, int, float, str, bytes, list, tuple, dict)"
        )
    encoder(value, out)


def _encoder_for(value: Any) -> Callable[[Any, bytearray], None] | None:
    """Pick the encoder for ``value``; bool is checked before int (it is an int subclass)."""
    if value is None or isinstance(value, bool):
        return _encode_special_atom
    for kind, encoder in _ENCODERS:
        if isinstance(value, kind):
            return encoder
    return None


def _encode_special_atom(value: bool | None, out: bytearray) -> None:
    name = "nil" if value is None else ("true" if value else "false")
    _encode_atom(name, out)


def _encode_atom(name: str, out: bytearray) -> None:
    """SMALL_ATOM_UTF8_EXT (atoms of up to 255 bytes)."""
    data = name.encode("utf-8")
    out += bytes([SMALL_ATOM_UTF8_EXT, len(data)]) + data


def _encode_int(value: int, out: bytearray) -> None:
    if 0 <= value <= 255:
        out += bytes([SMALL_INTEGER_EXT, value])
    elif _INT32_MIN <= value <= _INT32_MAX:
        out.append(INTEGER_EXT)
        out += struct.pack(">i", value)
    else:
        _encode_big(value, out)


def _encode_big(value: int, out: bytearray) -> None:
    """SMALL_BIG_EXT / LARGE_BIG_EXT: sign byte then little-endian magnitude."""
    magnitude = abs(value)
    digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
    sign = 1 if value < 0 else 0
    if len(digits) <= 255:
        out += bytes([SMALL_BIG_EXT, len(digits), sign])
    else:
        out.append(LARGE_BIG_EXT)
        out += struct.pack(">I", len(digits))
        out.append(sign)
    out += digits


def _encode_float(value: float, out: bytearray) -> None:
    if not math.isfinite(value):
        raise ValueError(f"cannot encode {value!r}: Erlang floats cannot be NaN or infinite")
    out.append(NEW_FLOAT_EXT)
    out += struct.pack(">d", value)


def _encode_str(value: str, out: bytearray) -> None:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"cannot encode str as UTF-8 ({error})") from error
    _encode_binary(data, out)


def _encode_binary(value: bytes | bytearray | memoryview, out: bytearray) -> None:
    data = bytes(value)
    out.append(BINARY_EXT)
    out += struct.pack(">I", len(data))
    out += data


def _encode_list(value: list[Any], out: bytearray) -> None:
    if not value:
        out.append(NIL_EXT)
        return
    out.append(LIST_EXT)
    out += struct.pack(">I", len(value))
    for item in value:
        _encode(item, out)
    out.append(NIL_EXT)


def _encode_tuple(value: tuple[Any, ...], out: bytearray) -> None:
    if len(value) <= 255:
        out += bytes([SMALL_TUPLE_EXT, len(value)])
    else:
        out.append(LARGE_TUPLE_EXT)
        out += struct.pack(">I", len(value))
    for item in value:
        _encode(item, out)


def _encode_map(value: dict[Any, Any], out: bytearray) -> None:
    out.append(MAP_EXT)
    out += struct.pack(">I", len(value))
    for key, item in value.items():
        _encode(key, out)
        _encode(item, out)


_ENCODERS: tuple[tuple[type | tuple[type, ...], Callable[[Any, bytearray], None]], ...] = (
    (int, _encode_int),
    (float, _encode_float),
    (str, _encode_str),
    ((bytes, bytearray, memoryview), _encode_binary),
    (list, _encode_list),
    (tuple, _encode_tuple),
    (dict, _encode_map),
)


# --------------------------------------------------------------------------------- decoding


class _Reader:
    """A cursor over the bytes of a term; every read checks for truncation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise TermDecodeError(
                f"term is truncated: needed {count} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def count(self, minimum_each: int = 1) -> int:
        """Read a u32 element count and reject counts the remaining bytes cannot hold."""
        count = self.u32()
        if count * minimum_each > len(self.data) - self.pos:
            raise TermDecodeError(
                f"term is truncated: claims {count} elements at offset {self.pos - 4} "
                f"but only {len(self.data) - self.pos} bytes remain"
            )
        return count


def decode_term(data: bytes, *, max_size: int = DEFAULT_RECORD_LIMIT) -> Any:
    """Decode ``binary_to_term(data)`` (version byte 131 first) into Python values.

    ``max_size`` caps the inflated size of a compressed term. Raises :class:`TermDecodeError`
    for truncated, trailing, unsupported or malformed data.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode_term expects bytes, got {type(data).__name__}")
    reader = _Reader(bytes(data))
    version = reader.u8()
    if version != VERSION:
        raise TermDecodeError(f"not an Erlang term: version byte is {version}, expected 131")
    if reader.data[reader.pos : reader.pos + 1] == bytes([COMPRESSED]):
        reader = _Reader(_inflate(reader, max_size))
    try:
        value = _decode(reader)
    except RecursionError as error:
        raise TermDecodeError("term is nested too deeply to decode") from error
    if reader.pos != len(reader.data):
        raise TermDecodeError(f"{len(reader.data) - reader.pos} unexpected bytes after the term")
    return value


def _inflate(reader: _Reader, max_size: int) -> bytes:
    """Inflate a COMPRESSED term: tag 80, u32 uncompressed size, zlib stream."""
    reader.u8()
    size = reader.u32()
    if size > max_size:
        raise TermDecodeError(f"compressed term claims {size} bytes, over the limit {max_size}")
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(reader.take(len(reader.data) - reader.pos), size + 1)
    except zlib.error as error:
        raise TermDecodeError(f"compressed term is not valid zlib data: {error}") from error
    if len(inflated) != size or not inflater.eof:
        raise TermDecodeError(
            f"compressed term inflates to a different size than the {size} bytes it claims"
        )
    return inflated


def _decode(reader: _Reader) -> Any:
    tag = reader.u8()
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise TermDecodeError(f"unsupported term tag {tag} at offset {reader.pos - 1}")
    return decoder(reader)


def _decode_small_int(reader: _Reader) -> int:
    return reader.u8()


def _decode_int(reader: _Reader) -> int:
    return int(struct.unpack(">i", reader.take(4))[0])


def _decode_small_big(reader: _Reader) -> int:
    return _big(reader, reader.u8())


def _decode_large_big(reader: _Reader) -> int:
    return _big(reader, reader.count())


def _big(reader: _Reader, length: int) -> int:
    sign = reader.u8()
    magnitude = int.from_bytes(reader.take(length), "little")
    return -magnitude if sign else magnitude


def _decode_new_float(reader: _Reader) -> float:
    return float(struct.unpack(">d", reader.take(8))[0])


def _decode_old_float(reader: _Reader) -> float:
    text = reader.take(31).rstrip(b"\x00").decode("ascii", errors="replace")
    try:
        return float(text)
    except ValueError as error:
        raise TermDecodeError(f"bad FLOAT_EXT text {text!r}") from error


def _atom(name: bytes, encoding: str) -> Any:
    try:
        text = name.decode(encoding)
    except UnicodeDecodeError as error:
        raise TermDecodeError(f"atom name is not valid {encoding}: {name!r}") from error
    return _SPECIAL_ATOMS.get(text, text)


def _decode_atom_utf8(reader: _Reader) -> Any:
    return _atom(reader.take(reader.u16()), "utf-8")


def _decode_small_atom_utf8(reader: _Reader) -> Any:
    return _atom(reader.take(reader.u8()), "utf-8")


def _decode_atom_latin1(reader: _Reader) -> Any:
    return _atom(reader.take(reader.u16()), "latin-1")


def _decode_small_atom_latin1(reader: _Reader) -> Any:
    return _atom(reader.take(reader.u8()), "latin-1")


def _decode_binary(reader: _Reader) -> str | bytes:
    data = reader.take(reader.count(0))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _decode_nil(reader: _Reader) -> list[Any]:
    return []


def _decode_string(reader: _Reader) -> list[int]:
    return list(reader.take(reader.u16()))


def _decode_list(reader: _Reader) -> list[Any]:
    items = [_decode(reader) for _ in range(reader.count())]
    if reader.u8() != NIL_EXT:
        raise TermDecodeError("improper lists (a tail other than []) are not supported")
    return items


def _decode_small_tuple(reader: _Reader) -> tuple[Any, ...]:
    return tuple(_decode(reader) for _ in range(reader.u8()))


def _decode_large_tuple(reader: _Reader) -> tuple[Any, ...]:
    return tuple(_decode(reader) for _ in range(reader.count()))


def _decode_map(reader: _Reader) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    for _ in range(reader.count(2)):
        key = _decode(reader)
        value = _decode(reader)
        try:
            result[key] = value
        except TypeError as error:
            raise TermDecodeError(
                f"map key of type {type(key).__name__} cannot be a Python dict key"
            ) from error
    return result


_DECODERS: dict[int, Callable[[_Reader], Any]] = {
    SMALL_INTEGER_EXT: _decode_small_int,
    INTEGER_EXT: _decode_int,
    SMALL_BIG_EXT: _decode_small_big,
    LARGE_BIG_EXT: _decode_large_big,
    NEW_FLOAT_EXT: _decode_new_float,
    FLOAT_EXT: _decode_old_float,
    ATOM_UTF8_EXT: _decode_atom_utf8,
    SMALL_ATOM_UTF8_EXT: _decode_small_atom_utf8,
    ATOM_EXT: _decode_atom_latin1,
    SMALL_ATOM_EXT: _decode_small_atom_latin1,
    BINARY_EXT: _decode_binary,
    NIL_EXT: _decode_nil,
    STRING_EXT: _decode_string,
    LIST_EXT: _decode_list,
    SMALL_TUPLE_EXT: _decode_small_tuple,
    LARGE_TUPLE_EXT: _decode_large_tuple,
    MAP_EXT: _decode_map,
}


# ------------------------------------------------------------------------- recorded results


def encode_recorded(value: Any, limit: int = DEFAULT_RECORD_LIMIT) -> str:
    """Encode a recorded result for ``meta.return``: base64 (standard alphabet, no padding).

    Same as Elixir's ``Base.encode64(:erlang.term_to_binary(value), padding: false)``. Raises
    :class:`RecordTooLargeError` when the text would be longer than ``limit`` characters, and
    the errors of :func:`encode_term` for unsupported values.
    """
    term = encode_term(value)
    size = 4 * ((len(term) + 2) // 3) - (-len(term) % 3)
    if size > limit:
        raise RecordTooLargeError(size, limit)
    return base64.b64encode(term).decode("ascii").rstrip("=")


def decode_recorded(text: str | bytes, *, max_size: int = DEFAULT_RECORD_LIMIT) -> Any:
    """Decode a ``meta.return`` value written by any Oban (padding optional).

    The URL-safe alphabet (``-``/``_``) is accepted too. Raises :class:`TermDecodeError` for
    text that is not base64 or not a supported term.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not isinstance(text, str):
        raise TermDecodeError(f"recorded value must be str, got {type(text).__name__}")
    return decode_term(_b64decode(text.strip()), max_size=max_size)


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, with or without ``=`` padding."""
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        preview = text if len(text) <= 40 else text[:40] + "..."
        raise TermDecodeError(
            f"recorded value is not valid base64 ({error}): {preview!r}"
        ) from error
