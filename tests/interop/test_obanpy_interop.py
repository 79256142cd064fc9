"""Oban.py and oban_pro nodes on one database: each runs the other's jobs.

Needs a Python >= 3.12 (Oban.py's minimum): the test builds (once, cached) a virtual environment
with the open-source ``oban`` package from PyPI, as ``oban-pro bench peer`` does, and skips when
no such Python exists on the machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import job_row, wait_until

from oban_pro import Job, Oban
from oban_pro.term import decode_recorded

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def obanpy_python() -> Path:
    from bench.peer import ensure_venv, find_python, venv_dir

    found = find_python()
    if found is None:
        pytest.skip("no Python >= 3.12 on this machine for Oban.py")
    exe, version = found
    try:
        return ensure_venv(exe, venv_dir(version), log=lambda s: None)
    except subprocess.CalledProcessError as exc:  # no package registry here: not our failure
        pytest.skip(f"could not build the Oban.py venv (pip install oban failed): {exc}")


async def test_oban_py_and_oban_pro_run_each_others_jobs(oban_dsn, oban_prefix, obanpy_python):
    from bench.peer import clean_env

    peer = subprocess.Popen(
        [str(obanpy_python), "-m", "obanpy_side", oban_dsn, oban_prefix],
        cwd=HERE, env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = peer.stdout.readline()  # type: ignore[union-attr]
        assert line, peer.stderr.read()  # type: ignore[union-attr]
        from_obanpy = json.loads(line)["enqueued"]
        oban = Oban(dsn=oban_dsn, prefix=oban_prefix, queues={"default": 2}, processes=1,
                    imports=["engine_workers"], name=f"interop-{oban_prefix}",
                    poll_interval=0.2)  # fmt: skip
        async with oban:
            # oban_pro runs the job Oban.py enqueued ...
            row = await wait_until(
                lambda: (r := job_row(oban_dsn, oban_prefix, from_obanpy))["state"] == "completed"
                and r, timeout=30, message="oban_pro to run Oban.py's job",
            )  # fmt: skip
            assert decode_recorded(row["meta"]["return"]) == {"sum": 42, "label": "done"}
            # ... and Oban.py runs the job oban_pro enqueued, recording a value oban_pro reads.
            job = await oban.enqueue(Job("obanpy_side.Echo", args={"hi": 1}, queue="py"))
            row = await wait_until(
                lambda: (r := job_row(oban_dsn, oban_prefix, job.id))["state"] == "completed"
                and r, timeout=30, message="Oban.py to run oban_pro's job",
            )  # fmt: skip
            assert decode_recorded(row["meta"]["return"]) == {
                "echo": {"hi": 1},
                "engine": "oban.py",
            }
            assert row["attempted_by"][0] == "obanpy-node"
    finally:
        peer.stdin.close()  # type: ignore[union-attr]
        try:
            peer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            peer.kill()
