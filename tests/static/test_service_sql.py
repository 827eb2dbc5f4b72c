"""A service with a repository keeps every SQL statement there: its other modules build no
``text()`` and call no ``execute`` / ``scalar`` / ``scalars`` / ``stream`` on a connection, so
the service's SQL is read, reviewed and changed in one module (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The services whose SQL lives in their repository.py.
WITH_REPOSITORY = (
    "services/admin",
    "services/crm_sync",
    "services/intake",
    "services/reporting",
    "services/roster",
    "services/router",
    "services/scoring",
    "services/shadow",
    "services/sla_monitor",
)
RUNS_SQL = frozenset({"execute", "scalar", "scalars", "stream", "exec_driver_sql"})


def sql_outside_repository(module: Path) -> list[str]:
    """Each place in the module that builds or runs SQL, as ``line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy":
            found += [f"{node.lineno}: imports sqlalchemy.text" for alias in node.names if alias.name == "text"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RUNS_SQL:
            found.append(f"{node.lineno}: .{node.func.attr}()")
    return found


@pytest.mark.parametrize("service", WITH_REPOSITORY)
def test_the_services_sql_is_all_in_its_repository(service: str) -> None:
    folder = ROOT / service
    assert (folder / "repository.py").is_file()
    outside = {
        str(module.relative_to(ROOT)): places
        for module in sorted(folder.rglob("*.py"))
        if module.name != "repository.py" and (places := sql_outside_repository(module))
    }
    assert outside == {}
