"""The folders are the architecture: imports point one way, down, and nothing reaches back up.

entry points -> cli -> federation, results -> ledger / wire / learning -> checks, settings
"""

import ast
from pathlib import Path

import pytest
from layers import ALLOWED
from processes import ROOT

PACKAGE = ROOT / "fedchain"


def part_of(module: str) -> str:
    return module.split(".")[1]


def fedchain_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("fedchain.") and n.count(".") >= 1}
    return {".".join(n.split(".")[:2]) for n in found}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    relative = path.relative_to(ROOT).with_suffix("")
    if relative.name == "__init__" and len(relative.parts) == 2:
        return  # the package's own docstring
    part = relative.parts[1]
    assert part in ALLOWED, f"{relative}: a new part of the package needs a place in ALLOWED"
    reached = {part_of(module) for module in fedchain_imports(path)} - {part}
    assert reached <= ALLOWED[part], f"{relative} imports {sorted(reached - ALLOWED[part])}"


def test_the_simulation_stands_without_the_federation_and_the_ledger():
    simulation = fedchain_imports(PACKAGE / "learning" / "simulation.py")
    assert not {m for m in simulation if part_of(m) in {"federation", "cli", "ledger"}}


def test_the_benchmark_does_not_import_the_demo():
    tree = ast.parse((ROOT / "benchmark.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "demo" not in imported


def test_the_checker_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from fedchain.federation.server import FederationServer\nimport numpy\n")
    assert fedchain_imports(sample) == {"fedchain.federation"}


def is_test(module: str) -> bool:
    return any(part.startswith("test_") for part in module.split("."))


def imported_test_modules(path: Path) -> set[str]:
    """The test_* modules PATH imports: any dotted name with a part starting test_, as in
    `import test_docs`, `from test_docs import HELPS` or `from tests import test_docs`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [module] if is_test(module) else [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {name.lstrip(".") for name in names if is_test(name)}
    return found


TESTS = sorted((ROOT / "tests").rglob("test_*.py"))


@pytest.mark.parametrize("path", TESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_test_imports_another(path):
    # What two tests share lives in a helper beside them (processes.py, namespaces.py,
    # program_helps.py): a test module is pytest's to run, and one that others import cannot
    # change without breaking them.
    imported = imported_test_modules(path)
    assert not imported, f"{path.relative_to(ROOT)} imports {sorted(imported)}: use a helper"


def test_the_checker_sees_a_test_imported(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import test_a\nfrom test_b import X\nfrom tests import test_c\nfrom . import test_d\n"
        "from processes import ROOT\nimport pytest\n"
    )
    assert imported_test_modules(sample) == {
        "test_a",
        "test_b",
        "tests.test_c",
        "test_d",
    }


SANS_IO = [
    "protocol.py",
    "round.py",
    "admission.py",
    "events.py",
    "round_report.py",
    "run_genesis.py",
]


@pytest.mark.parametrize("name", SANS_IO)
def test_the_servers_rules_do_no_io_and_read_no_clock(name):
    tree = ast.parse((PACKAGE / "federation" / name).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    forbidden = {"socket", "ssl", "selectors", "time", "threading", "asyncio"}
    assert not imported & forbidden
    assert "fedchain.federation.server" not in imported  # the transport is theirs to drive


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {name.split(".")[0] for name in imported}


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if "flower" not in p.relative_to(PACKAGE).parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_flower_package_imports_flwr(path):
    # Flower is an extra (pip install .[flower]): every base command runs without it.
    assert "flwr" not in top_level_imports(path)


def test_the_flower_check_sees_an_import_of_flwr(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from flwr.app import Message\n")
    assert "flwr" in top_level_imports(sample)
