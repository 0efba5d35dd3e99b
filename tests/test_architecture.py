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


SANS_IO = ["protocol.py", "round.py", "admission.py", "events.py", "round_report.py"]


@pytest.mark.parametrize("name", SANS_IO)
def test_the_servers_rules_do_no_io_and_read_no_clock(name):
    tree = ast.parse((PACKAGE / "federation" / name).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    forbidden = {"socket", "ssl", "selectors", "time", "threading", "asyncio"}
    assert not imported & forbidden
    assert "fedchain.federation.server" not in imported  # the transport is theirs to drive
