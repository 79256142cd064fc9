"""Run oban_pro nodes as separate OS processes (the chaos suite's nodes).

As a module: :class:`NodeProcess` starts ``python -m oban_pro start`` (the real CLI, with its
real signal handling) for one node, with short heartbeat/lease timings passed the way an
operator would, through ``OBAN_<FIELD>`` environment variables; it knows the node's process
tree (coordinator, forkserver, worker processes) so a test can ``kill -9`` the node, SIGTERM
it, or check that nothing it started outlives it, and it always cleans up in ``stop()``.

As a script: ``python tests/node_runner.py [--env FIELD=VALUE ...] -- <oban-pro start args>``
runs one node in the foreground the same way (handy to reproduce a chaos scenario by hand)::

    python tests/node_runner.py --env heartbeat_ttl=2 -- --dsn $DSN --queues default:10 \
        --import chaos.chaos_workers --node a
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent

#: Short timings for chaos tests (seconds). Every Config field reads OBAN_<FIELD>.
FAST_TIMINGS: dict[str, float] = {
    "heartbeat_interval": 0.5,
    "heartbeat_ttl": 2.0,
    "lifeline_interval": 0.5,
    "leader_ttl": 2.0,
    "stage_interval": 0.5,
    "poll_interval": 0.5,
    "gossip_interval": 1.0,
}


def node_env(settings: Mapping[str, Any], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a node: ``base`` (default: ours) plus ``OBAN_<FIELD>=value``."""
    env = dict(os.environ if base is None else base)
    # Config from the test's own environment must not leak into nodes.
    for key in list(env):
        if key.startswith("OBAN_") and key not in ("OBAN_TEST_DSN", "OBAN_EMBEDDED_DIR"):
            del env[key]
    paths = [str(TESTS_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    for field, value in settings.items():
        env["OBAN_" + field.upper()] = str(value)
    return env


# -- process trees from /proc (Linux; no psutil dependency) ------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> list[tuple[int, int]]:
    """Live descendants of ``root`` as (pid, start time) pairs."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                children.setdefault(info[0], []).append((int(entry), info[1]))
    out: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            out.append((pid, started))
            todo.append(pid)
    return out


def alive(processes: Iterable[tuple[int, int]]) -> list[int]:
    """Pids from (pid, start time) pairs that still run the same process (no pid reuse)."""
    out = []
    for pid, started in processes:
        info = _stat(pid)
        if info is not None and info[1] == started:
            out.append(pid)
    return out


def kill_all(processes: Iterable[tuple[int, int]]) -> None:
    for pid in alive(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class NodeProcess:
    """One node: ``python -m oban_pro start`` in its own session, logs to ``log_path``."""

    def __init__(
        self,
        dsn: str,
        prefix: str,
        node: str,
        log_dir: Path,
        *,
        queues: str = "default:10",
        processes: int = 2,
        imports: Iterable[str] = ("chaos.chaos_workers",),
        shutdown_timeout: float = 5.0,
        settings: Mapping[str, Any] | None = None,
        stdout: Any = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.node = node
        self.log_path = Path(log_dir) / f"node-{node}.log"
        self.queues = queues
        self.processes = processes
        self.imports = list(imports)
        self.shutdown_timeout = shutdown_timeout
        self.settings = {**FAST_TIMINGS, **(settings or {})}
        self.stdout = stdout
        self.env = dict(env or {})  # extra environment variables (besides OBAN_<FIELD>)
        self.proc: subprocess.Popen[bytes] | None = None
        self._known: dict[int, int] = {}  # every process of this node ever seen: pid -> start
        self._log_file: Any = None

    # -- lifecycle ------------------------------------------------------------------------

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "oban_pro",
            "start",
            "--dsn",
            self.dsn,
            "--prefix",
            self.prefix,
            "--queues",
            self.queues,
            "--node",
            self.node,
            "--processes",
            str(self.processes),
            "--shutdown-timeout",
            str(self.shutdown_timeout),
        ]
        for module in self.imports:
            args += ["--import", module]
        return args

    def start(self) -> NodeProcess:
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv(),
            env={**node_env(self.settings), **self.env},
            stdin=subprocess.DEVNULL,
            stdout=self._log_file if self.stdout is None else self.stdout,
            stderr=self._log_file,
            start_new_session=True,  # signals from the terminal never reach it by accident
            cwd=str(TESTS_DIR),
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the node says it runs its queues (its producers are registered then)."""
        deadline = time.monotonic() + timeout
        while "running queues" not in self.log_text():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.node} exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"node {self.node} not ready after {timeout}s:\n" + self.log_text()[-4000:]
                )
            time.sleep(0.05)
        self.remember_tree()

    def remember_tree(self) -> list[tuple[int, int]]:
        """Record the node's current process tree (so it can be checked/killed later)."""
        tree = descendants(self.pid)
        self._known.update(tree)
        info = _stat(self.pid)
        if info is not None:
            self._known[self.pid] = info[1]
        return tree

    def worker_pids(self) -> set[int]:
        """Pids of every process of this node seen so far (workers included)."""
        self.remember_tree()
        return set(self._known)

    def known_alive(self) -> list[int]:
        """Processes of this node (seen so far) that still run."""
        return alive(self._known.items())

    def kill9(self) -> float:
        """SIGKILL the coordinator process only (its workers must notice by themselves);
        returns the wall-clock time of the kill."""
        self.remember_tree()
        at = time.time()
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        return at

    def terminate(self) -> float:
        self.remember_tree()
        at = time.time()
        os.kill(self.pid, signal.SIGTERM)
        return at

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Cleanup: kill the node and everything it started, whatever state it is in."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.remember_tree()
            self.proc.kill() if self.proc.poll() is None else None
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        kill_all(self._known.items())
        deadline = time.monotonic() + 5
        while self.known_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()  # every writer is gone: a reader has seen end of file
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- observing ------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"<NodeProcess {self.node} pid={self.proc.pid if self.proc else None}>"


def main(argv: list[str] | None = None) -> int:
    """``node_runner.py [--env FIELD=VALUE ...] -- <oban-pro start arguments>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings: dict[str, str] = {}
    while argv and argv[0] == "--env":
        field, _, value = argv[1].partition("=")
        settings[field] = value
        argv = argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    env = node_env({**FAST_TIMINGS, **settings})
    return subprocess.call([sys.executable, "-m", "oban_pro", "start", *argv], env=env)


if __name__ == "__main__":
    sys.exit(main())
