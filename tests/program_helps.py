"""Every program's --help, by the name a person types, from each program's own parser in this
process: what tests/test_docs.py checks the pages against and tests/cli/test_help.py reads."""

import contextlib
import importlib.util
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from processes import ROOT

from fedchain.cli import chain, client, model, server
from fedchain.flower import simulate

CHAIN_COMMANDS = ("verify", "show", "compare", "export", "plot", "report")


def load_script(path: Path):
    """A top-level script (demo.py, benchmark.py, data/split.py) as a module, without running it."""
    spec = importlib.util.spec_from_file_location(f"docs_check_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_text(main: Callable[[list[str]], object], argv: list[str]) -> str:
    """What `PROGRAM ARGV --help` prints, from the program's own parser, in this process."""
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return shown.getvalue()


def commands() -> dict[str, str]:
    """Each command line's --help, by a name a person would type."""
    helps = {
        "server.py": help_text(server.parse_args, []),
        "client.py": help_text(
            lambda argv: client.parse_args(argv, default_name="", default_data=""), []
        ),
        "model.py": help_text(model.main, []),
    }
    for command in model.COMMANDS:
        helps[f"model.py {command}"] = help_text(model.main, [command])
    top = help_text(chain.parse_args, [])
    listed = re.search(r"\{([a-z,]+)\}", top)[1].split(",")
    assert sorted(listed) == sorted(CHAIN_COMMANDS), "a new blockchain.py command: add it here"
    for command in CHAIN_COMMANDS:
        helps[f"blockchain.py {command}"] = help_text(chain.parse_args, [command])
    helps["python -m fedchain.flower simulate"] = help_text(simulate.parse_args, [])
    for script in ("demo.py", "benchmark.py", "data/split.py"):
        helps[script] = help_text(load_script(ROOT / script).main, [])
    return helps


HELPS = commands()
