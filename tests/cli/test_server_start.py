"""A server that stops before its run begins leaves no trace but its key."""

import socket

from in_process import run_main


def test_a_server_whose_port_is_taken_leaves_no_run_folder(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused = run_main("server.py", "--port", port, "--difficulty", "8", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert not (tmp_path / "runs").exists()


def test_a_server_nobody_joins_leaves_no_run_folder(tmp_path):
    stopped = run_main(
        "server.py",
        "--port",
        "0",
        "--difficulty",
        "8",
        "--join-timeout-s",
        "0.1",
        "-q",
        cwd=tmp_path,
    )
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert not (tmp_path / "runs").exists()
    # Nothing was written, so there is no chain for the quiet operator to look for.
    assert stopped.stdout.splitlines() == [stopped.stdout.splitlines()[0]]
    assert stopped.stdout.startswith("listening on 127.0.0.1:")
