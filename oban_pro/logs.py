"""Logging for the CLI (library code only ever calls ``logging.getLogger(__name__)``).

Every line carries the node and process id; lines about a job carry its id (pass
``extra={"job_id": ...}``). ``json`` writes one JSON object per line for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class _Context(logging.Filter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        record.pid = os.getpid()
        if not hasattr(record, "job_id"):
            record.job_id = None  # type: ignore[attr-defined]
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": getattr(record, "node", None),
            "pid": getattr(record, "pid", None),
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(node)s pid=%(pid)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job_id = getattr(record, "job_id", None)
        return text if job_id is None else f"{text} job_id={job_id}"


def configure_logging(level: str = "info", fmt: str = "text", node: str = "") -> None:
    """Install one stderr handler on the root logger (CLI only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
