"""The package installs: a wheel built from the tracked files goes into a new virtual environment
with the console scripts, which then run a federation from a folder that has no checkout in it."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from processes import ROOT, WAIT_S

from fedchain.cli.console import port_from_listening_line


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new venv with the package installed from a wheel; returns its bin folder."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, tracked):  # the tracked files only: no .venv, no runs
        path = Path(name.decode())
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes((ROOT / path).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # No registry is reached: the build uses this environment's setuptools, and the new venv
    # borrows this one's NumPy, pandas and PyGAD through a .pth file instead of downloading.
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            work / "dist",
            source,
        ],
        check=True,
        timeout=WAIT_S * 3,
    )
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    (wheel,) = (work / "dist").glob("fedchain-*.whl")
    subprocess.run(
        [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel],
        check=True,
        timeout=WAIT_S * 3,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=WAIT_S)


def test_the_installed_package_is_the_one_imported(installed, tmp_path):
    where = run([installed / "python", "-c", "import fedchain; print(fedchain.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout


def test_console_scripts_run_a_federation_from_any_folder(installed, tmp_path):
    def start(*command) -> subprocess.Popen:
        return subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    started = [
        start(installed / "fedchain-server", "--port", "0", "--rounds", "2", "--difficulty", "8")
    ]
    try:
        first_line = started[0].stdout.readline()
        port = port_from_listening_line(first_line)
        assert port is not None
        for i in (1, 2):
            data = ROOT / "data" / f"client{i}.csv"
            started.append(
                start(
                    installed / "fedchain-client",
                    "--name",
                    f"cli{i}",
                    "--port",
                    str(port),
                    "--data",
                    data,
                )
            )
        outputs = [process.communicate(timeout=WAIT_S)[0] for process in started[1:]]
        # Not communicate() for the server: the lines readline() buffered past the first would
        # be lost to it (with a timeout it reads the pipe itself), as they were under load.
        started[0].wait(timeout=WAIT_S)
        outputs.insert(0, first_line + started[0].stdout.read())
        assert [process.returncode for process in started] == [0, 0, 0], outputs
    finally:
        for process in started:
            process.kill()
            process.communicate()
    # The installed server found the bundled test rows inside the package, and scored on them.
    assert "test MSE" in outputs[0]
    # Each run has its own chain file by default, named at the start.
    (chain,) = tmp_path.glob("runs/*/chain.jsonl")
    assert f"the chain goes to {chain.relative_to(tmp_path)}" in outputs[0]
    verified = run([installed / "fedchain-chain", "verify", chain], tmp_path)
    assert verified.returncode == 0
    assert (
        verified.stdout.splitlines()[-1] == "valid: 4 blocks; the run is complete (2 of 2 rounds)"
    )
    # The end of the run names the installed commands, and the one it gives for new rows works.
    assert f"fedchain-chain show {chain.relative_to(tmp_path)}" in outputs[0]
    assert "fedchain-model predict --chain" in outputs[0]
    assert "python blockchain.py" not in outputs[0] and "python model.py" not in outputs[0]
    rows = ROOT / "data" / "test.csv"
    scored = run(
        [installed / "fedchain-model", "score", "--chain", chain, "--data", rows], tmp_path
    )
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[-1].startswith("R²")


@pytest.mark.parametrize(
    "script", ["fedchain-server", "fedchain-client", "fedchain-chain", "fedchain-model"]
)
def test_every_console_script_answers_help(installed, tmp_path, script):
    result = run([installed / script, "--help"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {script}")
