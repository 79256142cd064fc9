"""The Store seam holds: outside oban_pro/store.py, only the modules listed here run statements
on a connection themselves, each for the reason given. A new ``conn.execute(...)`` elsewhere
fails this test: put the statement behind a Store method instead."""

from __future__ import annotations

import ast
from pathlib import Path

import oban_pro

PACKAGE = Path(oban_pro.__file__).parent

#: Module (relative to the package) -> why it talks to a connection itself.
ALLOWED = {
    "store.py": "the seam itself",
    "prepared.py": "PREPAREs the Store's limited fetch on the connection the Store hands it",
    "enqueue.py": "drives the sans-IO insert steps, sync and async (the Store's inserts too)",
    "migrations.py": "DDL: installs and upgrades the schema",
    "workflow_context.py": "a job's workflow steps, on the caller's own connection",
    "testing/enqueued.py": "assert_enqueued for sync tests, on a sync connection",
    "pytest_plugin.py": "creates and drops the test schemas",
}

DB_METHODS = {"execute", "executemany", "cursor", "copy"}


def _statement_calls(tree: ast.AST) -> list[int]:
    """Lines calling ``<something>.execute/executemany/cursor/copy(...)``, except telemetry's
    ``execute`` (an event, not a statement)."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in DB_METHODS:
            continue
        receiver = node.func.value
        if isinstance(receiver, ast.Name) and receiver.id == "telemetry":
            continue
        lines.append(node.lineno)
    return lines


def test_only_the_store_and_the_listed_modules_run_statements():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module in ALLOWED:
            continue
        lines = _statement_calls(ast.parse(path.read_text(), filename=str(path)))
        if lines:
            offenders[module] = lines
    assert not offenders, f"statements outside the Store (module: lines): {offenders}"


def test_the_check_sees_a_statement():
    """The scan is not vacuous: it finds the calls it is meant to find."""
    code = (
        "async def f(conn):\n    await conn.execute('SELECT 1')\n    telemetry.execute('x', {})\n"
    )
    assert _statement_calls(ast.parse(code)) == [2]
    assert _statement_calls(ast.parse((PACKAGE / "store.py").read_text()))
