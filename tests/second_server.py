"""A private PostgreSQL 15 server (Debian's packages) for the tests that must pass on a second
major version: the SQL the engine runs (conformance), beside the embedded PostgreSQL 18.

The server lives in a temporary directory, runs as the ``postgres`` OS user with trust
authentication on a Unix socket only, and is stopped and deleted at the end of the session.
When the binaries are missing and this is a Debian machine where we may (root, apt-get), the
package is installed first, so the README's test command works on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAJOR = 15
BINDIR = Path(f"/usr/lib/postgresql/{MAJOR}/bin")
PORT = 54315


@dataclass
class SecondServer:
    base: Path
    dsn: str

    def stop(self) -> None:
        _as_postgres([str(BINDIR / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate",
                      "-w", "stop"], check=False)  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)


def _as_postgres(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*runner, *argv], check=check, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def ensure_binaries() -> str | None:
    """None when the PostgreSQL 15 binaries are there (installing them if we may), else why
    not."""
    if (BINDIR / "postgres").exists():
        return None
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return f"PostgreSQL {MAJOR} is not installed ({BINDIR}) and cannot be installed here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-qq"],
                    [apt, "install", "-y", "-qq", "--no-install-recommends",
                     f"postgresql-{MAJOR}"]):  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr[-500:]}"
    return None if (BINDIR / "postgres").exists() else f"no {BINDIR} after installing"


def start() -> SecondServer:
    base = Path(tempfile.mkdtemp(prefix=f"oban-pro-pg{MAJOR}-"))
    os.chmod(base, 0o777)
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    os.chmod(sockets, 0o777)
    try:
        _as_postgres([str(BINDIR / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                      "--no-sync"])  # fmt: skip
        options = f"-k {sockets} -p {PORT} -c listen_addresses='' -c fsync=off"
        _as_postgres([str(BINDIR / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                      "-l", str(base / "server.log"), "start"])  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL {MAJOR}: {exc.stderr}") from exc
    return SecondServer(base, f"postgresql://postgres@/postgres?host={sockets}&port={PORT}")
