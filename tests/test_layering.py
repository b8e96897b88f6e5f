"""The house rules, read from the source: the product never imports the test rig, and no room outgrows a reading.

The test rig is `phonevault.sync.emulator` (the simulated iPhone and the synthetic phone it serves). Only the
`demo` and `emulator`/`--emulator` commands (cli/demo.py, cli/device_cmds.py) may start it. Every import statement
counts, at any depth (a function-level import is still an import); relative imports are resolved against the
module's own package.

No module of store/, sync/ or cli/ (the emulator included) is longer than MAX_LINES: past that a module holds more
than one job, and it is split along its jobs, not trimmed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"store": "phonevault.store", "sync": "phonevault.sync", "cli": "phonevault.cli"}
TEST_RIG = "phonevault.sync.emulator"
MAY_START_THE_RIG = {"phonevault.cli.demo", "phonevault.cli.device_cmds"}
MAX_LINES = 500


def modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of the installed packages, packages' __init__ as the package."""
    for top, package in PACKAGES.items():
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join([package, *parts]), path


def imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported dotted name, line) for every import in ``path``; `from p import x` yields both p and p.x."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield source, node.lineno
            for alias in node.names:
                yield f"{source}.{alias.name}", node.lineno


def is_rig(name: str) -> bool:
    return name == TEST_RIG or name.startswith(TEST_RIG + ".")


def rig_imports(module: str, path: Path) -> list[str]:
    return sorted(
        {f"{path.relative_to(ROOT)}:{line} imports {name}" for name, line in imports(module, path) if is_rig(name)}
    )


def test_the_product_never_imports_the_test_rig() -> None:
    found = dict(modules())
    assert len(found) > 30 and MAY_START_THE_RIG <= found.keys()
    offenders = [
        hit
        for module, path in found.items()
        if not is_rig(module) and module not in MAY_START_THE_RIG
        for hit in rig_imports(module, path)
    ]
    assert offenders == []


def test_the_rule_sees_imports_the_commands_that_may_start_the_rig_have() -> None:
    # The check above passes trivially if `imports` misses function-level or from-package imports; these have both.
    found = dict(modules())
    for module in sorted(MAY_START_THE_RIG):
        assert rig_imports(module, found[module]), f"{module}: expected its (function-level) emulator import"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("phonevault.sync.catalog", "from .emulator import Emulator", "phonevault.sync.emulator"),
        ("phonevault.sync.catalog", "from . import emulator", "phonevault.sync.emulator"),
        ("phonevault.cli.render", "from ..sync.emulator.phone import X", "phonevault.sync.emulator.phone"),
        (
            "phonevault.store.packs",
            "def f():\n    import phonevault.sync.emulator.days",
            "phonevault.sync.emulator.days",
        ),
        ("phonevault.sync", "from .emulator.folder import write_backup", "phonevault.sync.emulator.folder"),
    ],
)
def test_every_spelling_of_an_import_is_resolved(tmp_path: Path, module: str, source: str, expected: str) -> None:
    path = tmp_path / ("__init__.py" if module == "phonevault.sync" else "m.py")
    path.write_text(source + "\n")
    assert expected in {name for name, _ in imports(module, path)}


def test_no_module_is_longer_than_max_lines() -> None:
    found = dict(modules())
    assert len(found) > 30
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in found.values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}


DOC_REF = re.compile(r"(docs/[\w./-]+\.md)(?:, '([^']+)')?")


def test_every_docstring_reference_resolves_to_a_file_in_the_repo():
    """A docstring that cites a document cites one a person cloning the repo has (and the section it names is a
    heading there); none cites the design brief or reference notes that live outside the repo."""
    problems = []
    for _module, path in modules():
        text = path.read_text()
        for m in DOC_REF.finditer(text):
            doc = ROOT / m.group(1)
            if not doc.is_file():
                problems.append(f"{path.relative_to(ROOT)}: {m.group(1)} does not exist")
            elif m.group(2) and not any(
                line.lstrip("#").strip().startswith(m.group(2))
                for line in doc.read_text().splitlines()
                if line.startswith("#")
            ):
                problems.append(f"{path.relative_to(ROOT)}: no section '{m.group(2)}' in {m.group(1)}")
        if re.search(r"(DESIGN|reference) §|\.\./shared", text):
            problems.append(f"{path.relative_to(ROOT)}: cites a document outside the repo")
    assert problems == []
