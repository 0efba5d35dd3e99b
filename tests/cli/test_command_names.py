"""Every hint a program prints names the command the user ran: installed, as a script, or as a
module; and every command-line module runs as `python -m fedchain.cli.NAME`."""

import ast
import sys
from pathlib import Path

import pytest
from in_process import run_main
from processes import ROOT

from fedchain.cli.console import command_for
from fedchain.cli.run_summary import summarise_run


@pytest.mark.parametrize(
    ("argv0", "chain", "model"),
    [
        ("/venv/bin/fedchain-server", "fedchain-chain", "fedchain-model"),
        ("server.py", "python blockchain.py", "python model.py"),
        ("demo/server.py", "python demo/blockchain.py", "python demo/model.py"),
        (str(ROOT / "fedchain/cli/server.py"), "python -m fedchain.cli.chain", None),
    ],
)
def test_a_hint_names_the_command_as_it_was_started(monkeypatch, argv0, chain, model):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert command_for("chain") == chain
    if model is not None:
        assert command_for("model") == model


@pytest.mark.parametrize("path", sorted((ROOT / "fedchain" / "cli").glob("*.py")), ids=str)
def test_every_cli_module_with_a_main_runs_with_dash_m(path: Path):
    tree = ast.parse(path.read_text())
    if not any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
        return
    guard = 'if __name__ == "__main__":\n    raise SystemExit(main())'
    assert guard in path.read_text(), f"{path.name}: `python -m` would run nothing"


def test_the_end_of_a_run_names_the_commands_as_started(monkeypatch, tmp_path):
    chain = tmp_path / "chain.jsonl"
    chain.write_bytes((ROOT / "tests/fixtures/format9-chain.jsonl").read_bytes())
    (tmp_path / "chain.metrics.csv").write_text("round\n")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fedchain-server"])
    lines = []
    summarise_run(
        chain, tmp_path / "chain.metrics.csv", None, "charges", lines.append, server_key=None
    )
    said = "\n".join(lines)
    assert f"fedchain-chain plot {chain}" in said and f"fedchain-chain show {chain}" in said
    assert f"fedchain-model predict --chain {chain}" in said
    assert "python" not in said


def test_the_chain_tools_description_names_every_command():
    shown = run_main("blockchain.py", "--help")
    description = shown.stdout.split("\n\n")[1]
    for name in ("show", "verify", "compare", "export", "plot"):
        assert name in description.lower(), description
