"""Finding the modules that declare cron workers (Oban.py's ``--cron-paths`` and its default).

``oban start`` in Oban.py imports, before it starts, every module under the given folders (the
current directory by default) whose source has a ``@worker``/``@job`` decorator and a ``cron=``
option, so that their cron entries are registered. :func:`find_cron_modules` finds the same
modules without importing anything; the caller imports them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

_DECORATOR = re.compile(r"@(?:[\w.]+\.)?(?:worker|job)\b")
_CRON = re.compile(r"\bcron\s*=")
#: Folders never searched: virtual environments, caches, VCS data, the embedded database.
_SKIP_DIRS = frozenset(
    {".venv", "venv", ".tox", ".nox", "__pycache__", "node_modules", "site-packages", ".oban-pro"}
)
_MAX_BYTES = 1_000_000


def find_cron_modules(
    paths: Iterable[str | os.PathLike[str]], root: Path | None = None
) -> list[str]:
    """Dotted names (relative to ``root``, default the current directory) of the ``.py`` files
    under ``paths`` that declare a cron worker, sorted. Files outside ``root`` are skipped,
    since they could not be imported by that name."""
    root = (root or Path.cwd()).resolve()
    found: set[str] = set()
    for path in paths:
        start = (root / path).resolve()
        files = [start] if start.is_file() else _python_files(start)
        for file in files:
            module = _module_name(file, root)
            if module and _declares_cron(file):
                found.add(module)
    return sorted(found)


def _python_files(folder: Path) -> Iterable[Path]:
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(current) / name


def _declares_cron(file: Path) -> bool:
    try:
        if file.stat().st_size > _MAX_BYTES:
            return False
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(_DECORATOR.search(text) and _CRON.search(text))


def _module_name(file: Path, root: Path) -> str | None:
    try:
        parts = list(file.relative_to(root).with_suffix("").parts)
    except ValueError:
        return None
    if parts and parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    return ".".join(parts)
