"""A program's main(ARGS) run inside the test's own process, as `python SCRIPT ARGS` would run it:
for the tests of what a tool says and returns, without the second or two a new Python takes to
import NumPy and pandas. processes.py runs the real programs, where the process itself matters."""

import importlib
import io
import logging
import os
import subprocess
import sys
import warnings
from contextlib import chdir, redirect_stderr, redirect_stdout
from pathlib import Path

from processes import ROOT

# What a fresh Python shows of warnings (the filters it starts with), and how it shows them: on
# standard error, where the tests look for them.
_QUIET_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_main(script: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """SCRIPT's main(ARGS), run in this process from CWD: its exit code and what it printed,
    as run_script returns them. Whatever it changes of the process is put back."""
    main = importlib.import_module(Path(script).stem).main  # the entry script's own main
    argv = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    # The programs set up the "fedchain" logger to write to the sys.stdout they find.
    logger = logging.getLogger("fedchain")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    saved_argv, saved_environ = sys.argv, dict(os.environ)
    try:
        sys.argv = [str(ROOT / script), *argv]  # argparse names the program after argv[0]
        with (
            chdir(cwd or os.getcwd()),
            redirect_stdout(out),
            redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            warnings.showwarning = _show_on_stderr  # pytest would collect them instead
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in _QUIET_BY_DEFAULT:
                warnings.simplefilter("ignore", category)
            try:
                code = main(argv)
            except SystemExit as exit:  # argparse refusing the flags
                code = exit.code
    finally:
        sys.argv = saved_argv
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        if os.environ != saved_environ:
            os.environ.clear()
            os.environ.update(saved_environ)
    if isinstance(code, str):  # sys.exit("message"), as Python itself reports it
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(
        [script, *argv], 0 if code is None else code, out.getvalue(), err.getvalue()
    )


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
