"""Tests for oban_pro.term: Erlang External Term Format and recorded results."""

from __future__ import annotations

import base64
import math
import random
import struct
import zlib
from typing import Any

import pytest

from oban_pro.errors import ObanError
from oban_pro.term import (
    RecordTooLargeError,
    TermDecodeError,
    decode_recorded,
    decode_term,
    encode_recorded,
    encode_term,
)


def b(*parts: int | bytes | str) -> bytes:
    """Build bytes from ints, bytes and ASCII strings."""
    out = bytearray()
    for part in parts:
        if isinstance(part, int):
            out.append(part)
        elif isinstance(part, str):
            out += part.encode()
        else:
            out += part
    return bytes(out)


# ------------------------------------------------------------------------ exact bytes

EXACT = [
    (1, b(131, 97, 1)),
    (0, b(131, 97, 0)),
    (255, b(131, 97, 255)),
    (256, b(131, 98, 0, 0, 1, 0)),
    (-1, b(131, 98, 255, 255, 255, 255)),
    (2**31 - 1, b(131, 98, 127, 255, 255, 255)),
    (-(2**31), b(131, 98, 128, 0, 0, 0)),
    (2**31, b(131, 110, 4, 0, 0, 0, 0, 128)),
    (-(2**31) - 1, b(131, 110, 4, 1, 1, 0, 0, 128)),
    (2**64, b(131, 110, 9, 0, bytes(8), 1)),
    (-(2**64), b(131, 110, 9, 1, bytes(8), 1)),
    (1.5, b(131, 70, 63, 248, bytes(6))),
    (None, b(131, 119, 3, "nil")),
    (True, b(131, 119, 4, "true")),
    (False, b(131, 119, 5, "false")),
    ("hi", b(131, 109, 0, 0, 0, 2, "hi")),
    ("", b(131, 109, 0, 0, 0, 0)),
    ("é", b(131, 109, 0, 0, 0, 2, 0xC3, 0xA9)),
    ([], b(131, 106)),
    ([1, "a"], b(131, 108, 0, 0, 0, 2, 97, 1, 109, 0, 0, 0, 1, "a", 106)),
    ((1, 2), b(131, 104, 2, 97, 1, 97, 2)),
    ((), b(131, 104, 0)),
    ({"a": 1}, b(131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 1, "a", 97, 1)),
    ({}, b(131, 116, 0, 0, 0, 0)),
]


@pytest.mark.parametrize(("value", "encoded"), EXACT, ids=[repr(v) for v, _ in EXACT])
def test_exact_encodings(value: Any, encoded: bytes) -> None:
    assert encode_term(value) == encoded
    assert decode_term(encoded) == value


def test_bytes_encode_as_binary() -> None:
    assert encode_term(b"hi") == encode_term("hi")
    assert encode_term(bytearray(b"\x00\xff")) == b(131, 109, 0, 0, 0, 2, 0, 255)


def test_large_big_ext() -> None:
    value = 2 ** (8 * 256)  # needs 257 bytes of magnitude
    encoded = encode_term(value)
    assert encoded[:7] == b(131, 111, 0, 0, 1, 1, 0)
    assert decode_term(encoded) == value
    assert decode_term(encode_term(-value)) == -value
    assert encode_term(-value)[6] == 1


def test_large_tuple_ext() -> None:
    value = tuple(range(300))
    encoded = encode_term(value)
    assert encoded[:6] == b(131, 105, 0, 0, 1, 44)
    assert decode_term(encoded) == value


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "value",
    [
        0,
        -256,
        10**40,
        -(10**40),
        2**2100 + 12345,
        -(2**2100) - 1,
        0.0,
        -0.0,
        1e308,
        -2.5e-308,
        math.pi,
        "naïve ☃ 𝄞 日本",
        "\x00",
        [None, True, False],
        [[], [[]], [[[1]]]],
        {"nested": {"list": [1, 2.5, "x", None, {"deep": (1, "two", [3])}]}},
        {1: "int key", (1, 2): "tuple key", None: "nil key", "s": [True]},
        (1, (2, (3, ()))),
        list(range(1000)),
    ],
)
def test_round_trip(value: Any) -> None:
    assert decode_term(encode_term(value)) == value
    assert decode_recorded(encode_recorded(value)) == value


def test_negative_zero_keeps_sign() -> None:
    assert math.copysign(1.0, decode_term(encode_term(-0.0))) == -1.0


def test_binary_that_is_not_utf8_decodes_to_bytes() -> None:
    assert decode_term(encode_term(b"\xff\xfe")) == b"\xff\xfe"
    assert decode_term(encode_term(b"plain")) == "plain"


def test_random_round_trips() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        value = _random_value(rng, depth=3)
        assert decode_recorded(encode_recorded(value)) == value


def _random_value(rng: random.Random, depth: int) -> Any:
    kinds = ["int", "big", "float", "str", "none", "bool"]
    if depth:
        kinds += ["list", "tuple", "dict"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(2**32), 2**32)
    if kind == "big":
        return rng.choice([-1, 1]) * rng.getrandbits(rng.randint(33, 3000))
    if kind == "float":
        return rng.uniform(-1e9, 1e9)
    if kind == "str":
        return "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(160, 0x2FFF)]))
            for _ in range(rng.randint(0, 8))
        )
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    items = [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    return {f"k{i}": item for i, item in enumerate(items)}


# ------------------------------------------------------------------------ decode-only forms


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b(131, 118, 0, 3, "nil"), None),  # ATOM_UTF8_EXT
        (b(131, 118, 0, 2, "ok"), "ok"),
        (b(131, 119, 5, "error"), "error"),  # SMALL_ATOM_UTF8_EXT
        (b(131, 100, 0, 4, "true"), True),  # legacy ATOM_EXT
        (b(131, 100, 0, 5, "false"), False),
        (b(131, 100, 0, 5, "hello"), "hello"),
        (b(131, 115, 3, "nil"), None),  # SMALL_ATOM_EXT (Latin-1)
        (b(131, 100, 0, 1, 0xE9), "é"),  # Latin-1 atom
        (b(131, 119, 2, 0xC3, 0xA9), "é"),  # UTF-8 atom
        (b(131, 107, 0, 3, 1, 2, 3), [1, 2, 3]),  # STRING_EXT
        (b(131, 99, b"1.50000000000000000000e+00".ljust(31, b"\0")), 1.5),  # FLOAT_EXT
        (b(131, 104, 2, 119, 2, "ok", 97, 7), ("ok", 7)),  # {:ok, 7}
    ],
)
def test_decode_only_forms(encoded: bytes, expected: Any) -> None:
    assert decode_term(encoded) == expected


def test_decode_compressed_term() -> None:
    inner = encode_term(["x" * 500] * 10)[1:]
    compressed = b(131, 80, struct.pack(">I", len(inner)), zlib.compress(inner))
    assert len(compressed) < len(inner)
    assert decode_term(compressed) == ["x" * 500] * 10
    text = base64.b64encode(compressed).decode().rstrip("=")
    assert decode_recorded(text) == ["x" * 500] * 10


# ------------------------------------------------------------------------ recorded text


def test_encode_recorded_is_standard_base64_without_padding() -> None:
    text = encode_recorded({"a": 1})
    raw = b(131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 1, "a", 97, 1)
    assert text == base64.b64encode(raw).decode().rstrip("=")
    assert text == "g3QAAAABbQAAAAFhYQE"
    assert "=" not in encode_recorded(1)  # 3 bytes: no padding either way
    assert "=" not in encode_recorded(None)  # 6 bytes
    assert "=" not in encode_recorded("ab")  # 8 bytes, would need "="


def test_standard_alphabet_is_used() -> None:
    text = encode_recorded(b"\xfb\xff\xfe")
    assert "+" in text or "/" in text
    assert "-" not in text and "_" not in text


def test_decode_recorded_accepts_padding_or_not() -> None:
    one_pad = encode_recorded("ab")  # 8 bytes -> 11 characters, 1 "=" when padded
    two_pad = encode_recorded("abcd")  # 10 bytes -> 14 characters, 2 "=" when padded
    assert len(one_pad) % 4 == 3
    assert decode_recorded(one_pad) == decode_recorded(one_pad + "=") == "ab"
    assert len(encode_recorded(None)) % 4 == 0  # 6 bytes -> 8 characters, no padding at all
    assert len(two_pad) % 4 == 2
    assert decode_recorded(two_pad) == decode_recorded(two_pad + "==") == "abcd"
    assert decode_recorded(f"  {one_pad}\n") == "ab"


def test_decode_recorded_accepts_urlsafe_and_bytes() -> None:
    raw = encode_term(b"\xfb\xff\xfe")
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert decode_recorded(urlsafe) == b"\xfb\xff\xfe"
    assert decode_recorded(encode_recorded([1]).encode()) == [1]


def test_size_limit() -> None:
    value = "x" * 1000
    text = encode_recorded(value, limit=len(encode_recorded(value)))
    assert decode_recorded(text) == value
    with pytest.raises(RecordTooLargeError) as caught:
        encode_recorded(value, limit=len(text) - 1)
    assert caught.value.size == len(text)
    assert caught.value.limit == len(text) - 1
    assert "over the limit" in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ObanError)


def test_default_limit_is_64mb() -> None:
    with pytest.raises(RecordTooLargeError):
        encode_recorded(b"\0" * 48_000_010)


# ------------------------------------------------------------------------ encode errors


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (object(), "object"),
        (1 + 2j, "complex"),
        ([1, {"a": frozenset()}], "frozenset"),
    ],
)
def test_unsupported_types_raise_type_error(value: Any, type_name: str) -> None:
    with pytest.raises(TypeError, match=f"type {type_name} as an Erlang term"):
        encode_term(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_raise(value: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_term(value)


def test_lone_surrogate_raises() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        encode_term("\ud800")


def test_cyclic_value_raises() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="cyclic"):
        encode_term(cyclic)


# ------------------------------------------------------------------------ decode errors


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "truncated"),
        (b(131), "truncated"),
        (b(130, 97, 1), "version byte is 130"),
        (b"hello", "version byte is 104"),
        (b(131, 97), "truncated"),
        (b(131, 98, 0, 0), "truncated"),
        (b(131, 109, 0, 0, 0, 5, "ab"), "truncated"),
        (b(131, 108, 255, 255, 255, 255, 97, 1), "claims 4294967295 elements"),
        (b(131, 116, 0, 0, 0, 9, 97, 1), "claims 9 elements"),
        (b(131, 108, 0, 0, 0, 1, 97, 1, 97, 2), "improper"),
        (b(131, 97, 1, 0), "1 unexpected bytes"),
        (b(131, 88, 0), "unsupported term tag 88"),  # a pid
        (b(131, 77, 0, 0, 0, 1, 3, 255), "unsupported term tag 77"),  # a bitstring
        (b(131, 116, 0, 0, 0, 1, 106, 97, 1), "map key of type list"),
        (b(131, 119, 1, 0xFF), "atom name is not valid utf-8"),
        (b(131, 99, b"not a float".ljust(31, b"\0")), "FLOAT_EXT"),
        (b(131, 80, 0, 0, 0, 3, "garbage"), "not valid zlib"),
        (b(131, 80, 0, 0, 0, 9, zlib.compress(b(97, 1))), "different size"),
        (b(131, 80, 255, 255, 255, 255, zlib.compress(b(97, 1))), "over the limit"),
    ],
)
def test_decode_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(TermDecodeError) as caught:
        decode_term(data)
    assert fragment in str(caught.value)


def test_compressed_bomb_is_refused() -> None:
    inner = b(109, struct.pack(">I", 10_000_000), bytes(10_000_000))
    bomb = b(131, 80, struct.pack(">I", len(inner)), zlib.compress(inner))
    with pytest.raises(TermDecodeError, match="over the limit"):
        decode_term(bomb, max_size=1_000_000)


def test_deep_nesting_is_a_clear_error() -> None:
    depth = 100_000
    data = b(131, b(108, 0, 0, 0, 1) * depth, 106, b(106) * depth)
    with pytest.raises(TermDecodeError, match="nested too deeply"):
        decode_term(data)


@pytest.mark.parametrize("text", ["!!!!", "g3Q*", "a", "g2EB====x", "g 2EB"])
def test_decode_recorded_bad_base64(text: str) -> None:
    with pytest.raises(TermDecodeError, match="base64"):
        decode_recorded(text)


def test_decode_recorded_garbage_term() -> None:
    with pytest.raises(TermDecodeError, match="version byte"):
        decode_recorded(base64.b64encode(b"garbage!").decode())


def test_decode_recorded_rejects_non_text() -> None:
    with pytest.raises(TermDecodeError, match="must be str"):
        decode_recorded(123)  # type: ignore[arg-type]


def test_errors_are_value_errors() -> None:
    assert issubclass(TermDecodeError, ValueError)
    assert issubclass(TermDecodeError, ObanError)
