"""Turn the results of `mutmut run` into docs/mutation.md; exit 1 when a module misses its target.

Run by `make mutation` after mutmut. The modules are the `only_mutate` list of `[tool.mutmut]` in
pyproject.toml; mutants that cannot change behaviour are listed, each with why, in equivalent.toml
beside this file and left out of the score. A survivor is matched to that list by module, function
and the mutated line, so the list survives mutmut renumbering its mutants.
"""

from __future__ import annotations

import dataclasses
import platform
import re
import subprocess
import sys
import tomllib
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOC = ROOT / "docs" / "mutation.md"
MUTMUT = Path(sys.executable).with_name("mutmut")
KILLED = {"killed", "timeout", "caught by type check", "segfault"}  # the tests noticed the change
LINE = re.compile(r"^\s*(\S+): (.+)$")
# module.x_function__mutmut_N, module.xǁClassǁmethod__mutmut_N
NAME = re.compile(r"^(?P<module>.+?)\.x(?:_(?P<function>.+)|ǁ(?P<cls>[^ǁ]+)ǁ(?P<method>.+))__mutmut_\d+$")


ABOUT = [
    "Why mutmut and not cosmic-ray: both install and run offline here. mutmut forks each mutant's run",
    "from one warmed-up pytest process and runs only the tests that reach the mutated function: the",
    "whole run (about 1,500 mutants) took 3½ minutes of wall time on the quiet 2-core machine, 9",
    "minutes while other work loaded it (load average 2-5).",
    "cosmic-ray (8.7) starts pytest anew for every mutant, measured ≈3.3 s each, so ≈20 minutes for",
    "guard.py's 353 mutants alone; and it has no operator for string literals, while mutmut's show when",
    "a refusal reason or a header name is not pinned by a test.",
    "",
    "What mutmut does not mutate: module-level code (tables such as guard.SPECIAL and EMBEDDINGS,",
    "constants such as the limits of validation.py, the SETTINGS of config.py, the enums of states.py)",
    "and functions with a decorator (it swaps function bodies through trampolines: Setting.env, a",
    "property, and executor._task_logger, an lru_cache). So guard.py applies its lru_caches by call",
    "rather than as decorators, and tests/unit/conftest.py empties them before each test (a forked run",
    "would otherwise see answers cached by the unmutated code). Such code is pinned by tests instead:",
    "guard.py's table entries by addresses just inside and just outside each block, validation.py's",
    "limits at the exact limit on both sides, the two decorated functions by what they return.",
    "",
    "Not listed: pending_jobs/workers.py, the worker pool the runner and the callback sender run on.",
    "Its code is thread scheduling: most of its mutants change only when something happens (how long",
    "the timeout watchdog sleeps, when a replacement thread starts), which a test sees only by timing",
    "it, and the project keeps timing out of its assertions; a mutant that breaks it hangs the tests",
    "until mutmut's timeout. It is exercised by tests/unit/test_producer.py and the system tests.",
]


@dataclasses.dataclass
class Mutant:
    """One mutant from `mutmut results`: its module file, function, status and mutated lines."""

    name: str
    module: str
    function: str
    status: str
    removed: str = ""
    added: str = ""
    why: str | None = None  # set when it is a listed equivalent mutant


def module_of(name: str) -> tuple[str, str]:
    """('pending_jobs/callbacks/guard.py', 'Guard.check') for 'pending_jobs.callbacks.guard.xǁGuardǁcheck__mutmut_3'."""
    found = NAME.match(name)
    if not found:
        return "", name
    function = found["function"] or f"{found['cls']}.{found['method']}"
    return found["module"].replace(".", "/") + ".py", function


def mutmut(*args: str) -> str:
    return subprocess.run([str(MUTMUT), *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def diff_lines(name: str) -> tuple[str, str]:
    """The removed and the added line of a mutant (joined when a mutation spans several lines)."""
    removed, added = [], []
    for line in mutmut("show", name).splitlines():
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:].strip())
        elif line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:].strip())
    return " ".join(removed), " ".join(added)


def left_out() -> list[str]:
    """The test files `--ignore`d by the mutation run's test selection in pyproject.toml."""
    selection = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"].get(
        "pytest_add_cli_args_test_selection", [])
    return [arg.removeprefix("--ignore=") for arg in selection if arg.startswith("--ignore=")]


def load() -> tuple[list[str], dict[str, int], list[dict[str, str]]]:
    """(modules, target per module, equivalent mutants) from pyproject.toml and equivalent.toml."""
    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    listed = tomllib.loads((HERE / "equivalent.toml").read_text())
    default = int(listed["targets"]["default"])
    targets = {module: int(listed["targets"].get(module, default)) for module in modules}
    return modules, targets, listed.get("equivalent", [])


def results(modules: list[str], equivalents: list[dict[str, str]]) -> tuple[list[Mutant], list[dict[str, str]]]:
    """Every mutant with its status; the equivalent list's entries that matched no survivor."""
    mutants = []
    for line in mutmut("results", "--all", "true").splitlines():
        found = LINE.match(line)
        if not found:
            continue
        module, function = module_of(found.group(1))
        if module in modules:
            mutants.append(Mutant(found.group(1), module, function, found.group(2)))
    unused = list(equivalents)
    for mutant in mutants:
        if mutant.status in KILLED:
            continue
        mutant.removed, mutant.added = diff_lines(mutant.name)
        for entry in unused:
            if (entry["module"], entry["function"], entry["mutant"]) == (mutant.module, mutant.function,
                                                                         mutant.added):
                mutant.why = entry["why"]
                unused.remove(entry)
                break
    return mutants, unused


def table_row(module: str, mine: list[Mutant], target: int) -> tuple[str, bool]:
    killed = sum(1 for m in mine if m.status in KILLED)
    equivalent = sum(1 for m in mine if m.why)
    survived = len(mine) - killed - equivalent
    judged = len(mine) - equivalent
    score = f"{100 * killed / judged:.1f} %" if judged else "no mutants"
    met = not judged or 100 * killed / judged >= target
    return f"| `{module}` | {len(mine)} | {killed} | {survived} | {equivalent} | {score} | {target} % |", met


def render(modules: list[str], targets: dict[str, int], mutants: list[Mutant],
           unused: list[dict[str, str]]) -> tuple[str, bool]:
    """The text of docs/mutation.md and whether every module met its target."""
    out = [
        "# Mutation testing",
        "",
        "Generated by `make mutation` (`mutmut run`, then `python -m tests.mutation.report`); do not edit by hand.",
        f"mutmut {version('mutmut')}, Python {platform.python_version()}. Only the unit tests in `tests/unit/` "
        "run (no database, no network), less "
        + ", ".join(f"`{path.removeprefix('tests/unit/')}`" for path in left_out())
        + " (threads, subprocesses and timers for seconds: the runner's loop, the handoff, declared commands, "
        "DDL in fresh interpreters), whose modules have fast tests of their own. The modules are `only_mutate` "
        "in `[tool.mutmut]` of pyproject.toml; equivalent mutants are listed, each with why, in "
        "`tests/mutation/equivalent.toml` and left out of the score; targets are there too.",
        "",
        "| module | mutants | killed | survived | equivalent | score (equivalent excluded) | target |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    all_met = True
    for module in modules:
        row, met = table_row(module, [m for m in mutants if m.module == module], targets[module])
        out.append(row)
        all_met = all_met and met
    counts = Counter(m.status for m in mutants)
    out += ["", "mutmut's statuses: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            + " (survivors include the equivalent mutants)."]
    out += ["", *ABOUT]
    for module in modules:
        mine = [m for m in mutants if m.module == module]
        survivors = [m for m in mine if m.status not in KILLED and not m.why]
        equivalent = [m for m in mine if m.why]
        out += ["", f"## `{module}`", ""]
        if not mine:
            out.append("No mutants: mutmut mutates function and method bodies only, and this module has none "
                       "(declarations only); its values are pinned by its unit tests.")
        if survivors:
            out.append("Surviving mutants (a test is missing):")
            out += ["", *(f"- `{m.function}` ({m.status}): `{m.removed}` → `{m.added}`" for m in survivors), ""]
        if equivalent:
            out.append("Equivalent mutants (cannot change behaviour):")
            out += ["", *(f"- `{m.function}`: `{m.removed}` → `{m.added}`: {m.why}" for m in equivalent)]
        if mine and not survivors and not equivalent:
            out.append("Every mutant killed.")
    if unused:
        out += ["", "## Stale entries in equivalent.toml (they matched no survivor)", ""]
        out += [f"- `{e['module']}` `{e['function']}`: `{e['mutant']}`" for e in unused]
    return "\n".join(out) + "\n", all_met


def main() -> int:
    modules, targets, equivalents = load()
    mutants, unused = results(modules, equivalents)
    text, all_met = render(modules, targets, mutants, unused)
    DOC.write_text(text)
    print(text)
    if not all_met:
        print("mutation: a module is below its target (see docs/mutation.md)", file=sys.stderr)
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
