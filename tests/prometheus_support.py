"""Helpers for tests against a real Prometheus server, and the workers those tests run.

- :class:`PrometheusServer` runs the ``prometheus`` binary (Debian package ``prometheus``;
  ``PROMETHEUS_BIN`` overrides the path) as a plain subprocess on 127.0.0.1 with a free port, a
  temporary TSDB, a 1 s scrape and rule-evaluation interval, and optional rule files; it talks to
  the HTTP API with the standard library only and always kills the process on exit.
- :func:`concrete` turns a Grafana panel expression into plain PromQL (template variables
  replaced the way Grafana would).
- The workers at the bottom are imported by the node's child processes
  (``imports=["prometheus_support"]``; ``tests/`` is on ``PYTHONPATH`` via ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oban_pro import Snooze, worker

# -- Prometheus ---------------------------------------------------------------------------------

INSTALL_HINT = "install it with `apt-get install -y prometheus` (or set PROMETHEUS_BIN)"


def prometheus_binary() -> str | None:
    """Path of the prometheus binary, or None."""
    explicit = os.environ.get("PROMETHEUS_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )


def ensure_prometheus() -> str | None:
    """The prometheus binary, installed from Debian's packages first when it is missing and
    this is a Debian machine where we may (root, apt-get): so the README's test command works
    on a fresh machine, not only under ``.ci/run``. None when it cannot be had."""
    binary = prometheus_binary()
    if binary is not None or os.environ.get("PROMETHEUS_BIN"):
        return binary
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return None
    print("\nprometheus not found: installing Debian's package (apt-get install prometheus)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            print(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
            return None
    return prometheus_binary()


def promtool_binary() -> str | None:
    binary = prometheus_binary()
    if binary:
        sibling = Path(binary).with_name("promtool")
        if os.access(sibling, os.X_OK):
            return str(sibling)
    return shutil.which("promtool")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM us when our parent thread exits."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class PrometheusError(RuntimeError):
    """The Prometheus API answered with an error (bad query, not ready, ...)."""


class PrometheusServer:
    """A throw-away Prometheus scraping ``targets`` every second.

    Use as a context manager; the process is killed on exit whatever happens.
    """

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rule_files: Sequence[Path] = (),
        *,
        interval: str = "1s",
        binary: str | None = None,
    ) -> None:
        self.binary = binary or prometheus_binary()
        if not self.binary:
            raise FileNotFoundError(f"prometheus binary not found; {INSTALL_HINT}")
        self.workdir = Path(workdir)
        self.targets = targets
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.interval = interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": "oban-pro", "static_configs": [{"targets": self.targets}]}
            ],
        }

    def launch(self) -> None:
        """Start the process without waiting for it (see :meth:`ready`).

        Call it from the main thread: on Linux the server is told to die with the thread that
        started it, so a test run killed by a timeout leaves no Prometheus behind.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(json.dumps(self.config(), indent=2))  # JSON is valid YAML
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        args = [
            str(self.binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        """Launch and wait (blocking) until the server answers ``/-/ready``."""
        self.launch()
        try:
            self.wait_for(self.ready, timeout, "Prometheus to be ready")
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        """True once the server answers ``/-/ready``; raises if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    # -- API

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises PrometheusError with the API's error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON error body
            try:
                body = json.load(exc)
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {exc.code}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (a scalar result becomes a one-element list)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets_health(self) -> list[str]:
        return [t["health"] for t in self.api("targets")["activeTargets"]]

    @staticmethod
    def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
        """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)


# -- Grafana expressions -> plain PromQL --------------------------------------------------------

_SELECTOR_VAR = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"\$\{?(\w+)(?::\w+)?\}?"')


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """Replace Grafana's variables the way Grafana would for "All" selections.

    ``$queue``/``$node`` (and any other template variable) become the regex ``.*``; a matcher
    written with ``=``/``!=`` becomes ``=~``/``!~`` so the regex applies. Built-in intervals
    become durations.
    """
    expr = (
        expr.replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__interval_ms", "15000")
        .replace("$__interval", "15s")
        .replace("${__interval}", "15s")
        .replace("$__range_s", "3600")
        .replace("$__range", "1h")
    )

    def matcher(m: re.Match[str]) -> str:
        op = {"=": "=~", "!=": "!~"}.get(m.group(2), m.group(2))
        return f'{m.group(1)}{op}".*"'

    expr = _SELECTOR_VAR.sub(matcher, expr)
    if "$" in expr:
        raise ValueError(f"unhandled template variable in {expr!r}")
    return expr


# -- workers run by the integration test --------------------------------------------------------


@worker(queue="default")
class Complete:
    """Completes after ``args["ms"]`` milliseconds."""

    def process(self, job: Any) -> None:
        time.sleep(float(job.args.get("ms", 5)) / 1000)


@worker(queue="default")
class Raise:
    """Raises: retryable, or discarded with ``max_attempts=1``."""

    def process(self, job: Any) -> None:
        raise RuntimeError("raised on purpose by the Prometheus integration test")


@worker(queue="default")
class SnoozeMinute:
    """Snoozes for a minute (the job sits in ``scheduled``)."""

    def process(self, job: Any) -> Snooze:
        return Snooze(60)


@worker(queue="default", timeout=0.5)
class PastTimeout:
    """Sleeps 5 s under a 0.5 s timeout: its child is killed."""

    def process(self, job: Any) -> None:
        time.sleep(5)


@worker(queue="default")
class CrashChild:
    """Kills its own child process with exit code 3."""

    def process(self, job: Any) -> None:
        os._exit(3)
