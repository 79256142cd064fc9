"""The benchmarks still run: each scenario at a tiny size against the test database, checked for
completing and writing its JSON (and PNG). No timing is asserted: the machines are noisy, and
benchmarks are programs (bench/README.md), not timed tests.

The peer scenario runs only when a Python >= 3.12 with Oban.py's ``oban`` package is already set
up (``python -m bench peer`` creates it once); the finder and the venv creation are unit-tested
here either way, without touching the network.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import import_bench

peer = import_bench("peer")
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench_smoke


def run_bench(tmp_path: Path, dsn: str, scenario: str, *args: str, timeout: float = 60) -> dict:
    out = tmp_path / f"{scenario}.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [
        sys.executable,
        "-m",
        "bench",
        scenario,
        "--dsn",
        dsn,
        "--repeat",
        "1",
        "--json",
        str(out),
        "--plot",
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"bench {scenario} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    assert out.exists(), done.stdout
    assert out.with_suffix(".png").stat().st_size > 0
    data = json.loads(out.read_text())
    assert data["scenario"] == scenario
    assert data["machine"]["cores"] >= 1
    assert "|" in done.stdout  # a table was printed
    return data


def test_throughput(tmp_path, oban_dsn):
    data = run_bench(
        tmp_path,
        oban_dsn,
        "throughput",
        "--size",
        "150",
        "--limits",
        "10",
        "--processes",
        "1",
    )
    assert {r["processes"] for r in data["results"]} == {1, 2}
    for r in data["results"]:
        assert all(run["completed"] == 150 for run in r["runs"])
    assert data["ceiling"][0]["runs"][0]["completed"] == 150


def test_cpu(tmp_path, oban_dsn):
    data = run_bench(tmp_path, oban_dsn, "cpu", "--size", "8", "--job-ms", "5")
    assert [r["processes"] for r in data["results"]][:2] == [1, 2]
    assert all(run["completed"] == 8 for r in data["results"] for run in r["runs"])


def test_latency(tmp_path, oban_dsn):
    data = run_bench(tmp_path, oban_dsn, "latency", "--size", "8", "--gap", "0.01")
    run = data["runs"][0]
    assert len(run["to_start_ms"]) == len(run["to_complete_ms"]) == len(run["floor_ms"]) == 8


def test_insert(tmp_path, oban_dsn):
    data = run_bench(tmp_path, oban_dsn, "insert", "--size", "200", "--single", "20")
    assert {r["method"] for r in data["results"]} >= {"Oban.enqueue_many", "bare COPY"}
    # `bench plot` redraws the PNG from the JSON alone.
    png = tmp_path / "insert.png"
    png.unlink()
    from bench.cli import main

    assert main(["plot", str(tmp_path / "insert.json")]) == 0
    assert png.stat().st_size > 0


def test_rescue(tmp_path, oban_dsn):
    data = run_bench(
        tmp_path,
        oban_dsn,
        "rescue",
        "--size",
        "1",
        "--cases",
        "follower",
        "--heartbeat-interval",
        "0.25",
        "--heartbeat-ttl",
        "1",
        "--lifeline-interval",
        "0.25",
        "--job-seconds",
        "3",
        timeout=80,
    )
    (trial,) = data["trials"]
    assert trial["duplicates_on_live_node"] == 0  # correctness, not timing
    assert trial["extra_runs_of_rescued_jobs"] == 0
    assert len(trial["rescue_seconds"]) == 1


def _peer_python() -> tuple[str, tuple[int, int]] | None:
    found = peer.find_python()
    if found and peer.has_oban(peer.venv_python(peer.venv_dir(found[1]))):
        return found
    return None


@pytest.mark.skipif(
    _peer_python() is None,
    reason="no Python >= 3.12 with Oban.py set up yet (run `python -m bench peer` "
    "once to create it)",
)
def test_peer(tmp_path, oban_dsn):
    data = run_bench(
        tmp_path,
        oban_dsn,
        "peer",
        "--size",
        "100",
        "--limits",
        "10",
        "--cpu-jobs",
        "4",
        "--samples",
        "5",
        "--rescue-job-seconds",
        "3",
        "--io-jobs",
        "20",
        timeout=85,
    )
    names = [r["workload"] for r in data["results"]]
    assert any("no-op" in n for n in names) and any("enqueue_many" in n for n in names)
    assert any("async I/O" in n for n in names) and any("sync blocking I/O" in n for n in names)
    assert any("plain processes" in n for n in names)  # the CPU-bound row's ceiling
    assert data["machine"]["peer"]["oban_py_version"]


def test_plain_processes_share_the_jobs():
    plain_cpu = import_bench("plain_cpu")
    got = plain_cpu.ceiling(2, 200, 5)
    assert got["one"] > 0 and got["many"] > 0
    assert got["ratio"] == pytest.approx(got["many"] / got["one"])


# -- the Python finder and the venv (no network, no database) --------------------------------


def _fake_python(path: Path, prints: str, code: int = 0) -> str:
    path.write_text(f"#!/bin/sh\necho '{prints}'\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_probe_version_runs_the_interpreter(tmp_path):
    assert peer.probe_version(_fake_python(tmp_path / "py312", "3 12")) == (3, 12)
    assert peer.probe_version(_fake_python(tmp_path / "shim", "pyenv: not found", 127)) is None
    assert peer.probe_version(str(tmp_path / "missing")) is None
    assert peer.probe_version(sys.executable) == tuple(sys.version_info[:2])


def test_candidates_cover_env_path_and_pyenv(tmp_path):
    for version in ("3.11.7", "3.12.1", "3.13.0"):
        bin_dir = tmp_path / ".pyenv" / "versions" / version / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python").write_text("")
    found = peer.candidate_pythons(
        environ={"OBAN_BENCH_PYTHON": "/opt/py/bin/python3"},
        which=lambda name: f"/usr/bin/{name}" if name == "python3.13" else None,
        home=tmp_path,
    )
    pyenv = str(tmp_path / ".pyenv" / "versions")
    assert found == [
        "/opt/py/bin/python3",
        "/usr/bin/python3.13",
        f"{pyenv}/3.12.1/bin/python",
        f"{pyenv}/3.13.0/bin/python",
    ]


def test_find_python_skips_old_and_broken(tmp_path):
    old = _fake_python(tmp_path / "old", "3 11")
    broken = _fake_python(tmp_path / "broken", "", 1)
    good = _fake_python(tmp_path / "good", "3 12")
    assert peer.find_python([old, broken, good]) == (good, (3, 12))
    assert peer.find_python([old, broken]) is None


def test_peer_without_python_says_how_and_exits_2(monkeypatch, capsys):
    from bench.common import Options

    monkeypatch.setattr(peer, "find_python", lambda: None)
    assert peer.run(Options(scenario="peer")) == 2
    assert "pyenv install 3.12" in capsys.readouterr().err


def test_ensure_venv_creates_then_installs_oban(tmp_path):
    commands: list[list[str]] = []
    venv = tmp_path / "venv"
    got = peer.ensure_venv(
        "/usr/bin/python3.12", venv, run=lambda cmd: commands.append(list(cmd)), log=lambda s: None
    )
    assert got == venv / "bin" / "python"
    assert commands[0] == ["/usr/bin/python3.12", "-m", "venv", "--clear", str(venv)]
    assert commands[1][:4] == [str(venv / "bin" / "python"), "-m", "pip", "install"]
    assert commands[1][-1] == "oban"
    assert peer.venv_dir((3, 12), {"OBAN_BENCH_PEER_VENV": "/x/v"}) == Path("/x/v")
    assert peer.venv_dir((3, 12), {"XDG_CACHE_HOME": "/c"}) == Path(
        "/c/oban-pro/bench/oban-py-venv-3.12"
    )


def test_oban_pro_cli_delegates_to_bench():
    from oban_pro.cli import build_parser

    args = build_parser().parse_args(["bench", "throughput", "--size", "5", "--limits", "10"])
    assert args.scenario == "throughput" and args.size == 5 and args.limits == "10"
    assert args.func.__module__ == "bench.cli"


def test_workflow(tmp_path, oban_dsn):
    data = run_bench(tmp_path, oban_dsn, "workflow", "--size", "50", "--processes", "2")
    assert data["seconds"]["plain"]["n"] == data["seconds"]["workflow"]["n"] == 1
    assert data["ratio_workflow_over_plain"]["median"] > 0
    assert data["release_us_per_step"]["median"] > 0


def test_table_size(tmp_path, oban_dsn):
    data = run_bench(
        tmp_path, oban_dsn, "table_size", "--size", "300", "--other-rows", "30000",
        "--processes", "1",
    )  # fmt: skip
    assert data["params"]["other_rows"] == 30000
    for side in ("small", "big"):
        assert all(run["completed"] == 300 for run in data[side]["runs"])
    # 30,000 other rows: the fetch reads the state/queue index, never the whole table
    assert data["plans"]["big"]["uses_index"] and not data["plans"]["big"]["seq_scan"]
