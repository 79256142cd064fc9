"""The article's Badge Forge example (examples/badge_forge) end to end.

Elixir's part is played in SQL exactly as Elixir Oban writes and reads rows
(``badge_forge.elixir_side``, compat.md §2); the Python part is the example's own worker, run
on a real node's worker processes and through ``python -m badge_forge``. The PDFs are opened with
pypdf. WeasyPrint and pypdf come with the ``examples`` extra (part of ``dev``); a machine without
Pango gets a failure saying what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from helpers import wait_until
from psycopg.conninfo import make_conninfo

from oban_pro import Cancel, Oban
from oban_pro.migrations import migrate_up
from oban_pro.testing import drain_queue, process_job

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# The example's package is imported as the Elixir side names it, ``badge_forge.generator``, by
# this process and by the node's worker processes.
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH", "")) if p
)

from badge_forge import elixir_side  # noqa: E402
from badge_forge.badge import (  # noqa: E402
    Attendee,
    RenderUnavailableError,
    render_badge,
    require_weasyprint,
)
from badge_forge.generator import GenerateBadge  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def pdf_tools():
    """WeasyPrint with the system's Pango, and pypdf; the failure says what to install."""
    try:
        import pypdf
    except ImportError:
        pytest.fail("pypdf is not installed: pip install -e '.[examples]'")
    try:
        require_weasyprint()
    except RenderUnavailableError as exc:
        pytest.fail(str(exc))
    return pypdf


@pytest.fixture
def output(tmp_path, monkeypatch):
    folder = tmp_path / "badges"
    monkeypatch.setenv("BADGE_FORGE_OUTPUT", str(folder))
    return folder


def pdf_text(pypdf, path: Path) -> tuple[int, str]:
    """The PDF's page count and its text without whitespace (long names wrap)."""
    reader = pypdf.PdfReader(path)
    return len(reader.pages), "".join("".join(p.extract_text() for p in reader.pages).split())


def squeezed(text: str) -> str:
    return "".join(text.split())


def rows(dsn: str, sql: str, params=None) -> list[dict]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def check_confirmations(pypdf, dsn: str, prefix: str, attendees: list[dict], folder: Path):
    """One ``BadgeForge.PrintCenter`` job per badge, in the shape an Elixir node needs, for a
    one-page PDF with the attendee's name; then an Elixir node fetches and completes them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        jobs = elixir_side.print_jobs(conn, [a["id"] for a in attendees], prefix=prefix)
    assert len(jobs) == len(attendees)
    for attendee, job in zip(attendees, sorted(jobs, key=lambda j: j["args"]["path"]), strict=True):
        # Elixir fetches `available` rows due now, of attempt < max_attempts, and casts args
        # (string keys) into the map PrintCenter matches: %{"id" => id, "path" => path}.
        assert (job["state"], job["attempt"], job["max_attempts"], job["priority"]) == (
            "available", 0, 20, 0,
        )  # fmt: skip
        assert job["due"] and job["attempted_by"] is None and job["to_jsonb"] == []
        assert job["args"] == {"id": attendee["id"], "path": job["args"]["path"]}
        assert isinstance(job["meta"], dict) and isinstance(job["tags"], list)
        path = Path(job["args"]["path"])
        assert path.is_absolute() and path.parent == folder.resolve()
        pages, text = pdf_text(pypdf, path)
        assert pages == 1 and squeezed(attendee["name"]) in text
    with psycopg.connect(dsn, autocommit=True) as conn:
        taken = elixir_side.take_print_jobs(conn, prefix=prefix)
        assert sorted(worker for _, worker, _ in taken) == ["BadgeForge.PrintCenter"] * len(jobs)
        assert elixir_side.complete_print_jobs(conn, [i for i, _, _ in taken], prefix=prefix) == (
            len(jobs)
        )


def sorted_by_name(attendees: list[dict]) -> list[dict]:
    """In the order of their PDFs' paths (the file name starts with the name)."""
    return sorted(attendees, key=lambda a: Attendee.from_args(a).file_name)


# -- the Elixir side's rows -------------------------------------------------------------------


def test_the_elixir_side_writes_the_rows_elixir_oban_writes(oban_dsn, oban_prefix):
    with psycopg.connect(oban_dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{oban_prefix}.oban_insert"')
        with psycopg.connect(oban_dsn, autocommit=True) as conn:
            ids = elixir_side.insert_badge_jobs(
                conn,
                [{"id": 7, "name": "Ada Lovelace"}, {"id": str(uuid.uuid4()), "name": "José"}],
                prefix=oban_prefix,
            )
        notices = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    assert notices == [{"queue": "badges"}]
    jobs = rows(
        oban_dsn,
        f"SELECT state::text, queue, worker, args, meta, tags, to_jsonb(errors) AS errors, "
        f"attempt, max_attempts, priority, attempted_by, attempted_at, inserted_at, scheduled_at "
        f'FROM "{oban_prefix}".oban_jobs WHERE id = ANY(%s) ORDER BY id',
        (ids,),
    )
    assert [j["args"]["name"] for j in jobs] == ["Ada Lovelace", "José"]
    assert jobs[0]["args"] == {"id": 7, "name": "Ada Lovelace"}
    now = datetime.now(UTC).replace(tzinfo=None)
    for job in jobs:
        assert (job["state"], job["queue"], job["worker"]) == (
            "available", "badges", "badge_forge.generator.GenerateBadge",
        )  # fmt: skip
        assert (job["meta"], job["tags"], job["errors"]) == ({}, [], [])
        assert (job["attempt"], job["max_attempts"], job["priority"]) == (0, 20, 0)
        assert job["attempted_by"] is None and job["attempted_at"] is None
        # No scheduled_at in the changeset: both timestamps are the columns' default (UTC).
        assert job["scheduled_at"] == job["inserted_at"]
        assert abs((now - job["inserted_at"]).total_seconds()) < 60


# -- the badge --------------------------------------------------------------------------------


def test_a_badge_is_a_one_page_pdf_with_the_name(pdf_tools, tmp_path):
    path = render_badge(Attendee(42, "José Valim"), tmp_path)
    assert path == tmp_path / "jose-valim-42.pdf"
    pages, text = pdf_text(pdf_tools, path)
    assert pages == 1 and "JoséValim" in text and "#42" in text
    marked_up = "Dr. <b>&amp;</b> Wolfeschlegelsteinhausenbergerdorff Sr."
    pages, text = pdf_text(pdf_tools, render_badge(Attendee("x", marked_up), tmp_path))
    assert pages == 1 and squeezed(marked_up) in text  # escaped, drawn as text
    endless = "Wolfeschlegelsteinhausenbergerdorff " * 30
    assert pdf_text(pdf_tools, render_badge(Attendee("y", endless), tmp_path))[0] == 1
    sneaky = render_badge(Attendee("../../etc/passwd", "/root"), tmp_path)
    assert sneaky.parent == tmp_path and sneaky.name == "root-etc-passwd.pdf"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partials


def test_args_that_name_no_attendee_cancel_the_job(output):
    for args, key in (({"id": 1}, '"name"'), ({"name": "Ada"}, '"id"'), ({"id": True}, '"id"')):
        result = process_job(GenerateBadge.new(args))
        assert isinstance(result, Cancel) and key in result.reason
    assert not output.exists()


# -- the worker end to end --------------------------------------------------------------------


async def test_drained_here_the_worker_renders_and_enqueues_for_elixir(
    pdf_tools, oban_dsn, oban_prefix, output
):
    attendees = sorted_by_name([
        {"id": str(uuid.uuid4()), "name": "Grace Hopper"},
        {"id": 1815, "name": "Ada Lovelace"},
    ])  # fmt: skip
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        elixir_side.insert_badge_jobs(conn, attendees, prefix=oban_prefix)
    oban = Oban(dsn=oban_dsn, prefix=oban_prefix)
    try:
        with psycopg.connect(oban_dsn, autocommit=True) as listener:
            listener.execute(f'LISTEN "{oban_prefix}.oban_insert"')
            result = await drain_queue(queue="badges")
            notices = {n.payload for n in listener.notifies(timeout=5, stop_after=1)}
    finally:
        await oban.stop()
    assert result["completed"] == 2 and result["retryable"] == result["discarded"] == 0
    assert {"queue": "printing"} in [json.loads(n) for n in notices]  # Elixir's producer wakes
    check_confirmations(pdf_tools, oban_dsn, oban_prefix, attendees, output)


async def test_a_node_renders_on_its_worker_processes(pdf_tools, oban_dsn, oban_prefix, output):
    attendees = sorted_by_name(
        [{"id": str(uuid.uuid4()), "name": name} for name in ("Alan Turing", "Joe Armstrong")]
    )
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        ids = elixir_side.insert_badge_jobs(conn, attendees, prefix=oban_prefix)
    node = Oban(
        dsn=oban_dsn, prefix=oban_prefix, queues={"badges": 2}, processes=2,
        imports=["badge_forge.generator"], poll_interval=0.2,
    )  # fmt: skip
    sql = (
        f"SELECT state::text, attempted_by, to_jsonb(errors) AS errors "
        f'FROM "{oban_prefix}".oban_jobs WHERE id = ANY(%s)'
    )

    async def first_attempts_done():
        found = rows(oban_dsn, sql, (ids,))
        return all(r["state"] not in ("available", "executing") for r in found) and found

    async with node:
        found = await wait_until(first_attempts_done, timeout=90, message="the first attempts")
    assert [r["state"] for r in found] == ["completed", "completed"], found
    assert {r["attempted_by"][0] for r in found} == {node.node}
    check_confirmations(pdf_tools, oban_dsn, oban_prefix, attendees, output)


# -- the one command --------------------------------------------------------------------------


@pytest.fixture
def database(oban_dsn):
    """A database of its own: the command uses the default prefix, as the Elixir app does."""
    name = "bf_" + uuid.uuid4().hex[:10]
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(oban_dsn, dbname=name)
    try:
        yield dsn
    finally:
        with psycopg.connect(oban_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_command(args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBAN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXAMPLES), str(REPO)) if p)
    return subprocess.run(
        [sys.executable, "-m", "badge_forge", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_the_command_explains_itself(tmp_path):
    result = run_command(["--help"], tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--serve" in result.stdout and "embedded" in result.stdout


def test_the_one_command_forges_the_badges(pdf_tools, database, tmp_path):
    out = tmp_path / "out"
    result = run_command(
        ["--dsn", database, "--out", str(out), "--timeout", "90", "Ada Lovelace", "José Valim"],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2 badges forged" in result.stdout
    assert "2 BadgeForge.PrintCenter jobs in queue printing" in result.stdout
    pdfs = sorted(out.glob("*.pdf"))
    assert [p.name.split("-")[0] for p in pdfs] == ["ada", "jose"]
    assert all(pdf_text(pdf_tools, p)[0] == 1 for p in pdfs)
    migrate_up(database)  # idempotent: the command migrated the database it was given
