"""The test workers' execution logs: one line appended with a single ``O_APPEND`` write, so
lines from many processes and nodes never interleave (lines shorter than PIPE_BUF)."""

from __future__ import annotations

import os


def append_line(path: str | os.PathLike[str], text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)
