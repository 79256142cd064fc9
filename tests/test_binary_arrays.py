"""The ack's arrays, packed in PostgreSQL's binary format by hand, read back by the server as
the values they were made from (every type the ack sends, with NULLs, empty and extreme
values); a jsonb element that is not JSON is refused by the server, not stored."""

from __future__ import annotations

import psycopg
import pytest

from oban_pro.binary_arrays import (
    float8_array,
    int4_array,
    int8_array,
    jsonb_array,
    text_array,
)


def roundtrip(dsn: str, sql: str, *params):
    with psycopg.connect(dsn) as conn:
        cur = psycopg.RawCursor(conn)
        cur.execute(sql, list(params))
        return cur.fetchone()


def test_each_array_type_reads_back_as_the_values_it_was_made_from(oban_dsn):
    ints = [0, 1, -1, 2**63 - 1, -(2**63)]
    row = roundtrip(
        oban_dsn,
        "SELECT $1::bigint[], $2::int[], $3::float8[], $4::text[], $5::jsonb[], "
        "pg_typeof($1)::text, array_length($3, 1)",
        int8_array(ints),
        int4_array([2**31 - 1, -(2**31), 7]),
        float8_array([0.0, -1.5, 1e300, 5e-324]),
        text_array(["completed", None, "é ✓", ""]),
        jsonb_array(['{"a": [1, "x"]}', None, '"s"', "[]"]),
    )
    assert row == (
        ints,
        [2**31 - 1, -(2**31), 7],
        [0.0, -1.5, 1e300, 5e-324],
        ["completed", None, "é ✓", ""],
        [{"a": [1, "x"]}, None, "s", []],
        "bigint[]",
        4,
    )


def test_empty_arrays_are_empty_arrays_of_their_type(oban_dsn):
    row = roundtrip(
        oban_dsn,
        "SELECT $1::bigint[], $2::text[], $3::jsonb[], cardinality($1), pg_typeof($2)::text",
        int8_array([]),
        text_array([]),
        jsonb_array([]),
    )
    assert row == ([], [], [], 0, "text[]")


def test_a_jsonb_element_that_is_not_json_is_refused_by_the_server(oban_dsn):
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        roundtrip(oban_dsn, "SELECT $1::jsonb[]", jsonb_array(['{"ok": 1}', "{not json"]))
