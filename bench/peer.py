"""peer: the same workloads on the open-source Oban.py and on oban_pro, alternating A B A B on the
same database (each in a schema of its own), printing each ratio measured side by side.

Oban.py needs Python >= 3.12. The first run finds one (``$OBAN_BENCH_PYTHON``, ``python3.12`` or
``python3.13`` on PATH, pyenv's ``~/.pyenv/versions/3.1x.*``), creates a virtual environment with
it in ``~/.cache/oban-pro/bench/`` (``$OBAN_BENCH_PEER_VENV`` to move it) and ``pip install
oban`` there; later runs reuse it. Oban.py runs in that interpreter (bench/peer_obanpy.py) and
installs its schema with its own installer (``oban.schema.install``). Exit code 2 when no such
Python is found (it says how to get one).

Workloads (``--workloads``), every one with oban_pro at its defaults: throughput (no-op jobs,
``async def process`` on both sides, queue limits 10/50/100), async_io (``--io-jobs`` jobs that
``await asyncio.sleep(0.05)``, limit 50), sync_io (the same with a blocking ``time.sleep(0.05)``:
oban_pro runs sync jobs on threads in its children, Oban.py on its event loop), cpu (CPU-bound
~20 ms jobs; oban_pro on N processes, Oban.py runs them on its one event loop; each repetition
also times the same jobs on N plain processes and on 1, without engine or database, which bounds
the ratio: bench/plain_cpu.py), latency (enqueue-to-start of single jobs on an idle node),
enqueue_many (one call with N jobs), rescue (kill -9 of a node holding long jobs: oban_pro's
heartbeat rescue with shortened settings vs Oban.py's time-based rescue with a shortened
rescue_after of 3 s; Oban.py's default is 300 s = 5 min, checked every 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from . import common, engine, measure, plain_cpu, rescue

DEFAULT_SIZE = 10_000
RUNNER = Path(__file__).resolve().parent / "peer_obanpy.py"
MIN_VERSION = (3, 12)
WORKLOADS = ("throughput", "async_io", "sync_io", "cpu", "latency", "enqueue_many", "rescue")
#: I/O workloads: (worker of oban_pro, worker of Oban.py), 50 ms jobs at limit 50.
IO_WORKLOADS = {
    "async_io": ("bench.workers.AsyncSleep", "async_sleep"),
    "sync_io": ("bench.workers.SyncSleep", "sync_sleep"),
}
IO_LIMIT = 50
IO_SECONDS = 0.05

HOW_TO_GET_PYTHON = """\
bench peer: no Python >= 3.12 found (Oban.py needs one). Looked for $OBAN_BENCH_PYTHON, python3.12
and python3.13 on PATH, and pyenv's ~/.pyenv/versions/3.12+/bin/python. Get one with, e.g.:
  pyenv install 3.12            (then rerun; pyenv's versions are found without activating them)
  sudo apt-get install python3.12 python3.12-venv     (Debian/Ubuntu with 3.12 packaged)
  uv python install 3.12        (then OBAN_BENCH_PYTHON=$(uv python find 3.12))
or point OBAN_BENCH_PYTHON at any Python >= 3.12 interpreter."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    parser.add_argument("--limits", default="10,50,100", help="queue limits for throughput")
    parser.add_argument(
        "--io-jobs", type=int, default=1000, help="jobs per run of async_io/sync_io (1000)"
    )
    parser.add_argument(
        "--cpu-jobs", type=int, default=400,
        help="CPU-bound jobs per run (400: about 4 s per run on 2 cores, so the ratio is the"
        " steady state, not the first jobs' start-up)",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=100, help="latency samples per run (100)")
    parser.add_argument(
        "--rescue-job-seconds",
        type=float,
        default=8.0,
        help="duration of the long jobs in the rescue workload (8)",
    )
    parser.add_argument("--python", default=None, help="the Python >= 3.12 to build the venv with")


# -- finding Python and the virtual environment ----------------------------------------------


def probe_version(exe: str, timeout: float = 15.0) -> tuple[int, int] | None:
    """(major, minor) of the interpreter ``exe``, or None when it does not run (pyenv shims of
    versions that are not active fail here, which is why every candidate is probed)."""
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        major, minor = (int(x) for x in out.stdout.split()[:2])
    except ValueError:
        return None
    return major, minor


def candidate_pythons(
    environ: dict[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    home: Path | None = None,
) -> list[str]:
    """Interpreters to try, best first (not yet probed)."""
    env = os.environ if environ is None else environ
    out: list[str] = []
    if env.get("OBAN_BENCH_PYTHON"):
        out.append(env["OBAN_BENCH_PYTHON"])
    for name in ("python3.12", "python3.13", "python3.14"):
        found = which(name)
        if found:
            out.append(found)
    roots = [env.get("PYENV_ROOT"), str((home or Path.home()) / ".pyenv")]
    for root in filter(None, roots):
        versions = sorted(glob.glob(os.path.join(root, "versions", "3.1[2-9]*", "bin", "python")))
        out.extend(versions)
    return list(dict.fromkeys(out))  # first occurrence wins


def find_python(
    candidates: Iterable[str] | None = None,
    probe: Callable[[str], tuple[int, int] | None] = probe_version,
) -> tuple[str, tuple[int, int]] | None:
    """The first candidate that runs and is Python >= 3.12, with its version."""
    for exe in candidates if candidates is not None else candidate_pythons():
        version = probe(exe)
        if version is not None and version >= MIN_VERSION:
            return exe, version
    return None


def venv_dir(version: tuple[int, int], environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("OBAN_BENCH_PEER_VENV"):
        return Path(env["OBAN_BENCH_PEER_VENV"])
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "oban-pro" / "bench" / f"oban-py-venv-{version[0]}.{version[1]}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def clean_env() -> dict[str, str]:
    """The environment for Oban.py processes: no PYTHONPATH, so this repository (and its
    ``oban_pro``, which Oban.py would import as its extension hook) stays out of sight."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def has_oban(python: Path) -> str | None:
    """The installed ``oban`` version in that interpreter, or None."""
    if not python.exists():
        return None
    out = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version; import oban; print(version('oban'))",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_venv(
    python: str,
    venv: Path,
    run: Callable[[Sequence[str]], Any] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Path:
    """Create ``venv`` with ``python`` and ``pip install oban`` into it, unless it already has
    Oban.py. Returns the venv's interpreter. ``run`` executes one command (tests replace it)."""
    runner = run or _run_quietly
    target = venv_python(venv)
    if run is None and has_oban(target):
        return target
    log(f"bench peer: creating {venv} with {python} and installing oban from PyPI (once)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    runner([python, "-m", "venv", "--clear", str(venv)])
    runner([str(target), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "oban"])
    return target


def _run_quietly(cmd: Sequence[str]) -> None:
    """Run a setup command; show its output only when it fails."""
    done = subprocess.run(list(cmd), capture_output=True, text=True, env=clean_env())
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise subprocess.CalledProcessError(done.returncode, list(cmd))


# -- running Oban.py ---------------------------------------------------------------------------


def obanpy(
    py: Path, mode: str, dsn: str, prefix: str, timeout: float = 900.0, **options: Any
) -> dict[str, Any]:
    """Run one mode of bench/peer_obanpy.py in the venv and return its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [str(py), str(RUNNER), mode, "--dsn", dsn, "--prefix", prefix, "--out", out]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=timeout,
            cwd=tempfile.gettempdir(),
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"Oban.py {mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        return json.loads(Path(out).read_text())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)


def obanpy_engine(
    py: Path, dsn: str, prefix: str, rescue_after: float, lifeline: float, workdir: str
) -> rescue.Engine:
    def start(name: str, limit: int) -> rescue.NodeProc:
        cmd = [
            str(py),
            str(RUNNER),
            "node",
            "--dsn",
            dsn,
            "--prefix",
            prefix,
            "--node",
            name,
            "--queue",
            rescue.QUEUE,
            "--limit",
            str(limit),
            "--rescue-after",
            str(rescue_after),
            "--lifeline-interval",
            str(lifeline),
        ]
        return rescue.NodeProc(cmd, f"obanpy-{name}", env=clean_env(), log_dir=workdir)

    def enqueue(count: int, args: dict[str, Any]) -> None:
        p = measure.qp(prefix)
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            for _ in range(count):
                conn.execute(
                    f"INSERT INTO {p}.oban_jobs (state, queue, worker, args, max_attempts) "
                    f"VALUES ('available', %s, '__main__.Long', %s, 5)",
                    (rescue.QUEUE, json.dumps(args)),
                )
            conn.execute(
                "SELECT pg_notify(%s, %s)",
                (f"{prefix}.oban_insert", json.dumps({"queue": rescue.QUEUE})),
            )

    return rescue.Engine("Oban.py", start, enqueue, "__main__.Long")


# -- oban_pro side -----------------------------------------------------------------------------


async def pro_throughput(
    dsn: str,
    prefix: str,
    n: int,
    limit: int,
    processes: int,
    queue: str = "bench",
    worker: str = "bench.workers.Noop",
    args: str = "{}",
) -> dict[str, Any]:
    async def start() -> Any:
        return await engine.start_node(dsn, prefix, {queue: limit}, processes=processes)

    return await measure.drain(
        dsn,
        prefix,
        queue,
        worker,
        n,
        args=args,
        start_node=start,
        stop_node=engine.stop_node,
        notify=common.insert_notice(prefix, queue),
    )


async def pro_latency(dsn: str, prefix: str, n: int, processes: int) -> dict[str, Any]:
    from .latency import engine_series

    conn = await measure.connect(dsn)
    await measure.truncate(conn, prefix)
    await conn.close()
    return await engine_series(dsn, prefix, n, 0.02, processes, common.Progress(1, "", True))


async def pro_enqueue_many(dsn: str, prefix: str, n: int) -> dict[str, Any]:
    from oban_pro import Oban

    from .workers import Noop

    conn = await measure.connect(dsn)
    await measure.truncate(conn, prefix)
    oban = Oban(dsn=dsn, prefix=prefix, name=f"bench-peer-client-{time.time_ns()}")
    await oban.open_pool()
    try:
        jobs = [Noop.new({"i": i}) for i in range(n)]  # type: ignore[attr-defined]
        started = time.perf_counter()
        await oban.enqueue_many(jobs)
        elapsed = time.perf_counter() - started
    finally:
        await oban.stop()
        await conn.close()
    return {"jobs": n, "seconds": elapsed, "rate": n / elapsed}


# -- the scenario ------------------------------------------------------------------------------


def run(opts: common.Options) -> int:
    ex = opts.extra
    found = (ex.get("python"), probe_version(ex["python"])) if ex.get("python") else find_python()
    if not found or not found[1] or found[1] < MIN_VERSION:
        print(HOW_TO_GET_PYTHON, file=sys.stderr)
        return 2
    exe, version = found[0], found[1]
    assert exe is not None and version is not None
    try:
        py = ensure_venv(exe, venv_dir(version))
    except (subprocess.CalledProcessError, OSError) as exc:
        print(
            f"bench peer: could not build the Oban.py environment with {exe}: {exc}",
            file=sys.stderr,
        )
        return 2
    oban_version = has_oban(py)
    if not oban_version:
        print(f"bench peer: {py} cannot import oban after installing it", file=sys.stderr)
        return 2
    return asyncio.run(_run(opts, py, f"{version[0]}.{version[1]}", oban_version))


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Paired ratios of two series measured side by side (A B A B)."""
    return [_ratio(x, y) for x, y in zip(a, b, strict=True)]


async def _run(opts: common.Options, py: Path, py_version: str, oban_version: str) -> int:
    engine.quiet_logs()
    ex = opts.extra
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    info["peer"] = {
        "oban_py_version": oban_version,
        "oban_py_python": py_version,
        "venv": str(py.parent.parent),
    }
    n = opts.size_or(DEFAULT_SIZE)
    workloads = [w for w in str(ex.get("workloads", ",".join(WORKLOADS))).split(",") if w]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        print(f"bench peer: unknown workloads {sorted(unknown)}", file=sys.stderr)
        return 2
    limits = [int(x) for x in str(ex.get("limits", "10,50,100")).split(",") if x]
    io_jobs = int(ex.get("io_jobs", 1000))
    cpu_jobs = int(ex.get("cpu_jobs", 400))
    samples = int(ex.get("samples", 100))
    processes = opts.processes or opts.cores
    rounds = measure.calibrate_rounds(0.020)
    common.header(
        opts,
        info,
        f"oban_pro vs Oban.py {oban_version} (Python {py_version}), "
        f"A B A B, median of {opts.repeat}",
    )
    steps = 0
    steps += len(limits) * 2 if "throughput" in workloads else 0
    steps += 2 * sum(w in workloads for w in IO_WORKLOADS)
    steps += 2 * sum(w in workloads for w in ("cpu", "latency", "enqueue_many", "rescue"))
    steps += "cpu" in workloads  # the plain processes beside the engines' CPU-bound drains
    progress = common.Progress(steps * opts.repeat, "peer", opts.quiet)
    raw: dict[str, list[dict[str, Any]]] = {}

    def add(key: str, value: dict[str, Any]) -> None:
        raw.setdefault(key, []).append(value)

    py_prefix = common.new_prefix("obanpy")
    workdir = tempfile.mkdtemp(prefix="oban-bench-peer-")
    with common.oban_pro_schema(dsn, "peer") as prefix:
        try:
            obanpy(py, "install", dsn, py_prefix)
            for rep in range(opts.repeat):
                r = f"rep {rep + 1}"
                if "throughput" in workloads:
                    for lim in limits:
                        progress.step(f"{r}: throughput limit {lim}: oban_pro")
                        # The job Oban.py's side runs: `async def process` returning None
                        # (a sync one would run on the children's threads: measured 11% fewer
                        # jobs/s, 65 vs 44 us of worker CPU per job).
                        tp = await pro_throughput(
                            dsn, prefix, n, lim, processes, worker="bench.workers.AsyncNoop"
                        )
                        add(f"tp{lim}_pro", tp)
                        progress.advance()
                        progress.step(f"{r}: throughput limit {lim}: Oban.py")
                        add(
                            f"tp{lim}_py",
                            obanpy(py, "throughput", dsn, py_prefix, size=n, limit=lim),
                        )
                        progress.advance()
                for name, (pro_worker, py_worker) in IO_WORKLOADS.items():
                    if name not in workloads:
                        continue
                    job_args = json.dumps({"seconds": IO_SECONDS})
                    progress.step(f"{r}: {name}: oban_pro")
                    add(
                        f"{name}_pro",
                        await pro_throughput(
                            dsn, prefix, io_jobs, IO_LIMIT, processes,
                            queue="bench_io", worker=pro_worker, args=job_args,
                        ),
                    )  # fmt: skip
                    progress.advance()
                    progress.step(f"{r}: {name}: Oban.py")
                    add(
                        f"{name}_py",
                        obanpy(
                            py, "throughput", dsn, py_prefix, size=io_jobs, limit=IO_LIMIT,
                            queue="bench_io", worker=py_worker, job_args=job_args,
                        ),
                    )  # fmt: skip
                    progress.advance()
                if "cpu" in workloads:
                    job_args = json.dumps({"rounds": rounds})
                    progress.step(f"{r}: cpu: oban_pro")
                    add(
                        "cpu_pro",
                        await pro_throughput(
                            dsn,
                            prefix,
                            cpu_jobs,
                            10,
                            processes,
                            queue="bench_cpu",
                            worker="bench.workers.Cpu",
                            args=job_args,
                        ),
                    )
                    progress.advance()
                    progress.step(f"{r}: cpu: Oban.py")
                    add(
                        "cpu_py",
                        obanpy(
                            py,
                            "throughput",
                            dsn,
                            py_prefix,
                            size=cpu_jobs,
                            limit=10,
                            queue="bench_cpu",
                            worker="cpu",
                            job_args=job_args,
                        ),
                    )
                    progress.advance()
                    progress.step(f"{r}: cpu: plain processes, no engine")
                    add(
                        "cpu_plain",
                        await asyncio.to_thread(
                            plain_cpu.ceiling, processes, rounds, max(cpu_jobs // 2, processes)
                        ),
                    )
                    progress.advance()
                if "latency" in workloads:
                    progress.step(f"{r}: latency: oban_pro")
                    add("lat_pro", await pro_latency(dsn, prefix, samples, processes))
                    progress.advance()
                    progress.step(f"{r}: latency: Oban.py")
                    add("lat_py", obanpy(py, "latency", dsn, py_prefix, size=samples))
                    progress.advance()
                if "enqueue_many" in workloads:
                    progress.step(f"{r}: enqueue_many: oban_pro")
                    add("ins_pro", await pro_enqueue_many(dsn, prefix, n))
                    progress.advance()
                    progress.step(f"{r}: enqueue_many: Oban.py")
                    add("ins_py", obanpy(py, "enqueue_many", dsn, py_prefix, size=n))
                    progress.advance()
                if "rescue" in workloads:
                    k = 2
                    settings = {
                        "heartbeat_interval": 0.5,
                        "heartbeat_ttl": 2.0,
                        "lifeline_interval": 0.5,
                        "leader_ttl": 3.0,
                    }
                    pro_bound = rescue.bound(settings, False)
                    long_s = float(ex.get("rescue_job_seconds", 8.0))
                    progress.step(f"{r}: rescue: oban_pro")
                    add(
                        "res_pro",
                        await asyncio.to_thread(
                            rescue.trial,
                            dsn,
                            prefix,
                            rescue.oban_pro_engine(dsn, prefix, settings, workdir),
                            k=k,
                            job_seconds=long_s,
                            victim_is_leader=False,
                            expect_bound=pro_bound,
                            workdir=workdir,
                        ),
                    )
                    progress.advance()
                    progress.step(f"{r}: rescue: Oban.py (rescue_after 3 s)")
                    add(
                        "res_py",
                        await asyncio.to_thread(
                            rescue.trial,
                            dsn,
                            py_prefix,
                            obanpy_engine(py, dsn, py_prefix, 3.0, 0.5, workdir),
                            k=k,
                            job_seconds=long_s,
                            victim_is_leader=False,
                            expect_bound=3.5,
                            workdir=workdir,
                        ),
                    )
                    progress.advance()
        finally:
            with contextlib.suppress(Exception):
                common.drop_schema(dsn, py_prefix)
            shutil.rmtree(workdir, ignore_errors=True)
    progress.close()
    return _report(opts, info, raw, limits, io_jobs, processes, n, cpu_jobs, samples, rounds)


def _report(
    opts: common.Options,
    info: dict[str, Any],
    raw: dict[str, list[dict[str, Any]]],
    limits: list[int],
    io_jobs: int,
    processes: int,
    n: int,
    cpu_jobs: int,
    samples: int,
    rounds: int,
) -> int:
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []

    def row(
        name: str,
        pro: list[float],
        obpy: list[float],
        ratios: list[float],
        unit: str,
        goal: str,
        digits: int = 0,
        ratio_fmt: str = "x",
        kind: str | None = None,
    ) -> None:
        a, b, r = measure.summary(pro), measure.summary(obpy), measure.summary(ratios)
        if ratio_fmt == "x":
            rtext = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
        else:
            rtext = f"{r['median']:+.2f} ms ({r['min']:+.2f} to {r['max']:+.2f})"
        rows.append(
            [name, common.spread(a, digits) + unit, common.spread(b, digits) + unit, rtext, goal]
        )
        results.append(
            {
                "workload": name,
                "oban_pro": a,
                "oban_py": b,
                "ratio": r,
                "goal": goal,
                "ratio_kind": kind
                or ("oban_pro / Oban.py" if ratio_fmt == "x" else "oban_pro - Oban.py (ms)"),
            }
        )

    for lim in limits:
        if f"tp{lim}_py" not in raw:
            continue
        pys = [x["rate"] for x in raw[f"tp{lim}_py"]]
        pros = [x["rate"] for x in raw[f"tp{lim}_pro"]]
        row(
            f"no-op jobs/s (async def), limit {lim}",
            pros,
            pys,
            _ratios(pros, pys),
            "",
            ">= 4x" if lim == 100 else "",
        )
    for name, what, goal in (
        ("async_io", "async I/O jobs/s (await asyncio.sleep(0.05))", ">= 1.3x"),
        ("sync_io", "sync blocking I/O jobs/s (time.sleep(0.05))", ">= 20x"),
    ):
        if f"{name}_py" not in raw:
            continue
        pros = [x["rate"] for x in raw[f"{name}_pro"]]
        pys = [x["rate"] for x in raw[f"{name}_py"]]
        row(
            f"{what}, {io_jobs} jobs, limit {IO_LIMIT}",
            pros,
            pys,
            _ratios(pros, pys),
            "",
            goal,
        )
    if "cpu_py" in raw:
        pros = [x["rate"] for x in raw["cpu_pro"]]
        pys = [x["rate"] for x in raw["cpu_py"]]
        row(
            f"CPU-bound ~20 ms jobs/s ({processes} processes vs 1 event loop)",
            pros,
            pys,
            _ratios(pros, pys),
            "",
            ">= 1.8x",
            1,
        )
    if "cpu_plain" in raw:
        # The cores' own parallelism at the same moment bounds the row above: its ratio is
        # this row's ratio times the engines' shares of plain processes (the row after).
        many = [x["many"] for x in raw["cpu_plain"]]
        one = [x["one"] for x in raw["cpu_plain"]]
        row(
            f"  no engine: {processes} plain processes | 1 plain process, jobs/s",
            many,
            one,
            [x["ratio"] for x in raw["cpu_plain"]],
            "",
            "the row's ceiling",
            1,
            kind="plain processes",
        )
        pro_share = _ratios([x["rate"] for x in raw["cpu_pro"]], many)
        py_share = _ratios([x["rate"] for x in raw["cpu_py"]], one)
        row(
            f"  share of plain: oban_pro of {processes} | Oban.py of 1",
            pro_share,
            py_share,
            _ratios(pro_share, py_share),
            "",
            "",
            2,
            kind="shares of plain processes",
        )
    if "ins_py" in raw:
        pros = [x["rate"] for x in raw["ins_pro"]]
        pys = [x["rate"] for x in raw["ins_py"]]
        row(
            f"enqueue_many of {n} jobs, jobs/s",
            pros,
            pys,
            _ratios(pros, pys),
            "",
            ">= 10x",
        )
    if "lat_py" in raw:
        for key, pct, goal in (
            ("to_start_ms", "p50", "within +1 ms"),
            ("to_start_ms", "p95", ""),
            ("to_start_ms", "p99", "oban_pro < 10 ms"),
            ("to_complete_ms", "p50", ""),
            ("to_complete_ms", "p99", ""),
        ):
            pros = [measure.latency_stats(x[key])[pct] for x in raw["lat_pro"]]
            pys = [measure.latency_stats(x[key])[pct] for x in raw["lat_py"]]
            what = "start" if key == "to_start_ms" else "complete"
            row(
                f"enqueue -> {what} {pct}, ms",
                pros,
                pys,
                [a - b for a, b in zip(pros, pys, strict=True)],
                "",
                goal,
                2,
                "ms",
            )
    if "res_py" in raw:
        pros = [x["all_back_seconds"] for x in raw["res_pro"]]
        pys = [x["all_back_seconds"] for x in raw["res_py"]]
        row(
            "rescue after kill -9: s until all jobs run again (shortened settings)",
            pros,
            pys,
            _ratios(pros, pys),
            " s",
            "",
            2,
        )
        dup_pro = [x["duplicates_on_live_node"] for x in raw["res_pro"]]
        dup_py = [x["duplicates_on_live_node"] for x in raw["res_py"]]
        rows.append(
            [
                "rescue: duplicate runs of long jobs on the live node (total)",
                str(sum(dup_pro)),
                str(sum(dup_py)),
                "-",
                "must be 0",
            ]
        )
        results.append(
            {
                "workload": "rescue duplicates",
                "oban_pro": sum(dup_pro),
                "oban_py": sum(dup_py),
                "goal": "0",
            }
        )
    text = common.table(
        [
            "workload",
            "oban_pro median (min-max)",
            "Oban.py median (min-max)",
            "ratio, paired per repetition",
            "goal",
        ],
        rows,
    )
    long_seconds = raw["res_pro"][0]["job_seconds"] if "res_pro" in raw else 8.0
    if not opts.quiet:
        print(text)
        print(
            "\nratios: oban_pro / Oban.py of runs made back to back (A B A B); latency rows "
            "show oban_pro minus Oban.py. Rescue: oban_pro heartbeat_ttl 2 s, lifeline 0.5 s; "
            "Oban.py rescue_after 3 s, lifeline 0.5 s (defaults: 300 s = 5 min, every 60 s); "
            f"2 long jobs of {long_seconds:g} s per node."
        )
    payload = {
        "scenario": "peer",
        "machine": info,
        "params": {
            "jobs": n,
            "limits": limits,
            "io_jobs": io_jobs,
            "io_limit": IO_LIMIT,
            "io_seconds": IO_SECONDS,
            "processes": processes,
            "cpu_jobs": cpu_jobs,
            "cpu_rounds": rounds,
            "samples": samples,
            "repeat": opts.repeat,
        },
        "results": results,
        "raw": raw,
        "table": text,
    }
    common.save(opts, payload, _plot)
    return 0


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    res = [
        r
        for r in payload["results"]
        if r.get("ratio_kind") == "oban_pro / Oban.py" and "rescue" not in r["workload"]
    ]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(res) + 1.5))
    names = [r["workload"] for r in res]
    med, (lo, hi) = common.median_and_spread([r["ratio"] for r in res])
    ax.barh(
        names,
        med,
        xerr=[lo, hi],
        capsize=3,
        color=["tab:green" if m >= 1 else "tab:red" for m in med],
    )
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ticks = [
        t
        for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
        if min(med + [1.0]) / 1.5 <= t <= max(med + [1.0]) * 1.5
    ]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.invert_yaxis()
    ax.set_xlabel("oban_pro / Oban.py (log scale; > 1 means oban_pro is faster)")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(
        f"oban_pro vs Oban.py {payload['machine']['peer']['oban_py_version']}, side by "
        f"side ({payload['machine']['cores']} cores, {payload['machine']['date'][:10]})"
    )
    fig.tight_layout()
    fig.savefig(common.plot_path(opts), dpi=110)
    plt.close(fig)
