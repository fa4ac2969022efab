"""The house rules the code itself can be checked against: small modules, and every difference between
databases in the three dialect files (import-linter checks the layers; this checks what it cannot)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pending_jobs"
DIALECT_FILES = {"store/mysql.py", "store/mysql_hosts.py", "store/postgres.py", "store/sqlite.py",
                 "store/__init__.py"}
# A comparison with a dialect's name, or a look at which database a connection is on.
BRANCHING = re.compile(r"""(dialect(_name)?|\.name|backend)\s*(==|!=|in)\s*\(?["'](mysql|mariadb|postgresql|sqlite)"""
                       r"""|is_mariadb|dialect\.name|dialect_name\(""")


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def test_no_module_is_over_400_lines_and_the_producer_under_250() -> None:
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in _modules()}
    assert {name: lines for name, lines in sizes.items() if lines > 400} == {}
    assert sizes["runner/producer.py"] < 250


def test_only_the_dialect_files_ask_which_database_it_is() -> None:
    found = []
    for path in _modules():
        name = str(path.relative_to(PACKAGE))
        if name in DIALECT_FILES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if BRANCHING.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []


def test_no_module_imports_another_modules_private_names() -> None:
    """A leading underscore says "only this module uses it": delivery.py imported guard.py's `_host_problem`,
    so renaming or changing it there looked safe and was not."""
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pending_jobs")):
                found += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []


def test_the_architecture_lists_every_module_and_the_readme_layout_names_only_what_exists() -> None:
    root = PACKAGE.parent
    modules = {str(path.relative_to(root)) for path in PACKAGE.rglob("*.py")}
    architecture = (root / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(pending_jobs/[\w/]+\.py)` \|", architecture, re.MULTILINE))
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md's Modules table"
    assert sorted(listed - modules) == [], "docs/architecture.md lists modules that do not exist"

    readme = (root / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    named = set(re.findall(r"\b([\w]+\.py)\b", layout))
    existing = {path.name for folder in ("pending_jobs", "migrations", "benchmarks", "tests", "examples")
                for path in (root / folder).rglob("*.py")}
    assert sorted(named - existing) == [], "README's Layout names files that do not exist"
    for folder in re.findall(r"^(\w[\w/]*/)\s", layout, re.MULTILINE):
        assert (root / folder).is_dir() or (PACKAGE / folder).is_dir(), folder


def test_a_run_starts_without_importing_what_only_some_runs_need() -> None:
    """Every cron tick starts a process: what only callbacks and http tasks use (requests with urllib3,
    ≈ 50-90 ms), what only migrations use (Alembic) and what only isolated tasks use (multiprocessing) is
    imported when first needed, not at start."""
    code = ("import sys, pending_jobs.cli, pending_jobs.cli.run, pending_jobs.run; "
            "print(sorted(m for m in ('requests', 'urllib3', 'alembic', 'multiprocessing') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert done.stdout.strip() == "[]", done.stdout
