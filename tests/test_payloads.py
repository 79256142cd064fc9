"""Tests for oban_pro.payloads: the NOTIFY payload codec (compat.md §3)."""

from __future__ import annotations

import base64
import gzip
import json
import random
import string
from typing import Any

import pytest

from oban_pro.errors import PayloadError
from oban_pro.payloads import (
    COMPRESS_THRESHOLD,
    MAX_DECOMPRESSED,
    NOTIFY_LIMIT,
    decode_payload,
    encode_payload,
)

SIGNAL = {"action": "pause", "queue": "default", "ident": "any"}


def gz64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(gzip.compress(raw)).decode()


def noise(size: int, seed: int = 7) -> str:
    """Text that gzip cannot shrink much."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))


# ---------------------------------------------------------------------------- decoding


def test_decode_plain_json() -> None:
    assert decode_payload('{"queue":"default"}') == {"queue": "default"}
    assert decode_payload(' {"queue": "q", "n": [1, 2.5, null, true]} ') == {
        "queue": "q",
        "n": [1, 2.5, None, True],
    }


def test_decode_gzip_base64() -> None:
    text = gz64(json.dumps(SIGNAL))
    assert text.startswith("H4sI")
    assert decode_payload(text) == SIGNAL


def test_decode_z_prefixed_gzip_base64() -> None:
    assert decode_payload("Z:" + gz64(json.dumps(SIGNAL))) == SIGNAL


def test_decode_gzip_base64_without_padding() -> None:
    text = gz64('{"queue":"a"}').rstrip("=")
    assert decode_payload(text) == {"queue": "a"}
    assert decode_payload("Z:" + text) == {"queue": "a"}


def test_decode_unicode() -> None:
    payload = {"queue": "täglich ☃", "node": "𝄞"}
    assert decode_payload(json.dumps(payload)) == payload
    assert decode_payload(json.dumps(payload, ensure_ascii=False)) == payload
    assert decode_payload(gz64(json.dumps(payload, ensure_ascii=False))) == payload


# ---------------------------------------------------------------------------- encoding


def test_encode_small_payload_is_compact_json() -> None:
    assert encode_payload({"queue": "default"}) == '{"queue":"default"}'
    assert encode_payload({"queue": "ü"}) == '{"queue":"ü"}'


def test_encode_large_payload_is_gzip_base64_without_prefix() -> None:
    payload = {"checks": [{"queue": f"q{i}", "running": list(range(50))} for i in range(60)]}
    assert len(json.dumps(payload, separators=(",", ":"))) >= COMPRESS_THRESHOLD
    text = encode_payload(payload)
    assert text.startswith("H4sI") and not text.startswith("Z:")
    assert len(text) < NOTIFY_LIMIT
    assert decode_payload(text) == payload


def test_threshold_boundary() -> None:
    def sized(n: int) -> dict[str, str]:
        return {"k": "x" * (n - len('{"k":""}'))}

    below, at = sized(COMPRESS_THRESHOLD - 1), sized(COMPRESS_THRESHOLD)
    assert encode_payload(below).startswith("{")
    assert len(encode_payload(below).encode()) == COMPRESS_THRESHOLD - 1
    assert encode_payload(at).startswith("H4sI")


def test_threshold_counts_utf8_bytes() -> None:
    payload = {"k": "é" * 3800}  # 3,808 characters but 7,608 UTF-8 bytes
    assert encode_payload(payload).startswith("H4sI")


def test_incompressible_payload_over_limit_raises() -> None:
    with pytest.raises(PayloadError, match="NOTIFY allows at most 7999"):
        encode_payload({"data": noise(9000)})


@pytest.mark.parametrize(
    "payload",
    [
        {},
        SIGNAL,
        {"action": "pkill", "job_id": 123},
        {"down": "oban.node-1"},
        {"nested": {"a": [1, {"b": None}], "f": 1.25, "t": True}},
        {"big": noise(7000)},
        {"repetitive": "abc" * 5000},
    ],
)
def test_round_trip(payload: dict[str, Any]) -> None:
    assert decode_payload(encode_payload(payload)) == payload


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"x": {1, 2}}, "cannot be encoded as JSON"),
        ({"x": float("nan")}, "cannot be encoded as JSON"),
        ([1, 2], "must be a dict"),
    ],
)
def test_encode_errors(payload: Any, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        encode_payload(payload)


# ---------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not JSON"),
        ("hello", "not JSON"),
        ('{"queue": ', "not JSON"),
        ("[1, 2]", "must be an object, got list"),
        ('"just a string"', "must be an object, got str"),
        ("42", "must be an object, got int"),
        ('{"n": NaN}', "NaN is not valid JSON"),
        ("H4sI!!!notbase64", "not valid base64"),
        ("Z:***", "not valid base64"),
        ("Z:" + base64.b64encode(b"not gzip at all").decode(), "not valid gzip"),
        ("H4sI" + "AAAA", "gzip"),
        (gz64('{"queue":"a"}')[:-12], "truncated"),
        (gz64(b"\xff\xfe{}"), "not valid UTF-8"),
        (gz64("not json"), "not JSON"),
        (gz64("[1]"), "must be an object"),
        ("Z:" + gz64("null"), "must be an object, got NoneType"),
        (base64.b64encode(gzip.compress(b"{}") + b"junk").decode(), "after the gzip data"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_payloads(text: str, fragment: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_payload(text)
    assert fragment in str(caught.value)


def test_gzip_bomb_is_refused() -> None:
    bomb = '{"a":"' + "0" * (MAX_DECOMPRESSED + 10) + '"}'
    text = gz64(bomb)
    assert len(text) < NOTIFY_LIMIT  # tiny on the wire
    with pytest.raises(PayloadError, match="decompresses to more than"):
        decode_payload(text)


def test_exactly_max_decompressed_is_accepted() -> None:
    body = '{"a":"' + "0" * (MAX_DECOMPRESSED - 8) + '"}'
    assert len(body) == MAX_DECOMPRESSED
    assert decode_payload(gz64(body)) == {"a": "0" * (MAX_DECOMPRESSED - 8)}


def test_non_str_input() -> None:
    with pytest.raises(PayloadError, match="must be str, got bytes"):
        decode_payload(b'{"a":1}')  # type: ignore[arg-type]


def test_payload_error_is_value_error() -> None:
    assert issubclass(PayloadError, ValueError)
