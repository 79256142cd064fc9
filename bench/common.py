"""What every scenario shares: options, the database and its schemas, machine facts, progress,
tables, JSON and plots."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from .measure import qp

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    """Options common to every scenario (``--dsn``, ``--size``, ``--repeat``...)."""

    scenario: str
    dsn: str | None = None
    size: int | None = None
    repeat: int = 3
    processes: int | None = None
    json_path: str | None = None
    plot: bool = False
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    def size_or(self, default: int) -> int:
        return self.size if self.size is not None else default

    def results_path(self) -> Path:
        if self.json_path:
            return Path(self.json_path)
        return RESULTS_DIR / f"{self.scenario}.json"


def resolve_dsn(dsn: str | None) -> str:
    """``--dsn``, else OBAN_DSN / DATABASE_URL, else the embedded server in ``./.oban-pro``."""
    from oban_pro.database import resolve_dsn as _resolve

    return _resolve(dsn)


# -- schemas --------------------------------------------------------------------------------


def new_prefix(tag: str) -> str:
    return f"bench_{tag}_{uuid.uuid4().hex[:8]}"


def drop_schema(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {qp(prefix)} CASCADE")


@contextlib.contextmanager
def oban_pro_schema(dsn: str, tag: str) -> Iterator[str]:
    """A fresh schema with oban_pro's migrations, dropped afterwards."""
    from oban_pro.migrations import migrate_up

    prefix = new_prefix(tag)
    migrate_up(dsn, prefix=prefix)
    try:
        yield prefix
    finally:
        with contextlib.suppress(Exception):
            drop_schema(dsn, prefix)


def insert_notice(prefix: str, queue: str) -> tuple[str, str]:
    """oban_pro's insert notification (channel, payload) for ``queue``."""
    from oban_pro.naming import channel
    from oban_pro.payloads import encode_payload

    return channel(prefix, "insert"), encode_payload({"queue": queue})


# -- machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def engine_revision() -> str:
    """The commit the engine was measured at (``$OBAN_BENCH_REV`` wins), marked when dirty."""
    if os.environ.get("OBAN_BENCH_REV"):
        return os.environ["OBAN_BENCH_REV"]
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "oban_pro"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not rev:
        return "unknown"
    return rev + (" + uncommitted changes in oban_pro/" if dirty else "")


def machine_info(dsn: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "engine_revision": engine_revision(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(Exception), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        info["postgres"] = row[0] if row else "?"
        settings = {}
        for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections"):
            got = conn.execute(f"SHOW {name}").fetchone()
            settings[name] = got[0] if got else "?"
        info["postgres_settings"] = settings
        info["embedded"] = "host=/" in dsn or "/.oban-pro" in dsn or "oban-pro-test" in dsn
    return info


def machine_line(info: dict[str, Any]) -> str:
    pg = info.get("postgres", "?")
    s = info.get("postgres_settings", {})
    return (
        f"machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
        f"PostgreSQL {pg} (fsync={s.get('fsync', '?')}, "
        f"synchronous_commit={s.get('synchronous_commit', '?')}), {info['date']}, "
        f"oban_pro {info.get('engine_revision', '?')}"
    )


# -- progress -------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a plain line per step when stderr is not a terminal)."""

    def __init__(self, total: int, title: str, quiet: bool = False) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.title = title
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self._label = ""

    def step(self, label: str) -> None:
        """Announce the step about to run."""
        self._label = label
        self._draw()

    def detail(self, text: str) -> None:
        """Live detail inside the current step (terminals only)."""
        if self.tty and not self.quiet:
            self._draw(text)

    def advance(self) -> None:
        self.done += 1
        self._draw()

    def _draw(self, detail: str = "") -> None:
        if self.quiet:
            return
        width = 24
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < self.done < self.total:
            eta = f" eta {elapsed / self.done * (self.total - self.done):4.0f}s"
        text = (
            f"{self.title} [{'#' * filled:<{width}}] {self.done}/{self.total}"
            f" {elapsed:5.0f}s{eta}  {self._label} {detail}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text[:160])
        elif not detail:
            sys.stderr.write(text.rstrip() + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


# -- tables ---------------------------------------------------------------------------------


def fmt_num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def spread(s: dict[str, Any], digits: int = 0, unit: str = "") -> str:
    """``median (min-max)`` of a :func:`bench.measure.summary`."""
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{fmt_num(s['median'], digits)}{unit}"
    return (
        f"{fmt_num(s['median'], digits)}{unit} "
        f"({fmt_num(s['min'], digits)}-{fmt_num(s['max'], digits)})"
    )


def ratio_text(value: float, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


# -- output ---------------------------------------------------------------------------------


def write_json(opts: Options, payload: dict[str, Any]) -> Path:
    path = opts.results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def save(
    opts: Options, payload: dict[str, Any], plot: Callable[[Options, dict[str, Any]], None]
) -> None:
    """Write the scenario's JSON (and its PNG with ``--plot``) and say where."""
    path = write_json(opts, payload)
    if opts.plot:
        plot(opts, payload)
    if not opts.quiet:
        print(f"\nwrote {path}" + (f" and {plot_path(opts)}" if opts.plot else ""))


def median_and_spread(
    summaries: Sequence[dict[str, float]],
) -> tuple[list[float], tuple[list[float], list[float]]]:
    """Medians, and the distances down to min and up to max: matplotlib's ``yerr``/``xerr``."""
    med = [s["median"] for s in summaries]
    low = [m - s["min"] for m, s in zip(med, summaries, strict=True)]
    high = [s["max"] - m for m, s in zip(med, summaries, strict=True)]
    return med, (low, high)


def plot_path(opts: Options) -> Path:
    return opts.results_path().with_suffix(".png")


def pyplot() -> Any:
    """matplotlib's pyplot (Agg backend), or a clear error: ``pip install 'oban-pro[bench]'``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            "--plot needs matplotlib: pip install 'oban-pro[bench]' (or pip install matplotlib)"
        ) from exc
    return plt


def header(opts: Options, info: dict[str, Any], what: str) -> None:
    if opts.quiet:
        return
    print(f"\n== bench {opts.scenario}: {what}")
    print(machine_line(info))
