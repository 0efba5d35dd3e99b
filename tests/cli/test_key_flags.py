"""Keys from the command line: made on first run, private to their owner, shown on request."""

import re
import stat

from in_process import run_main
from processes import run_script


def test_the_server_makes_its_key_once_and_shows_it(tmp_path):
    key = tmp_path / "keys" / "server.key"
    # A real process makes the key; the rules about it are checked in process from here on.
    first = run_script("server.py", "--key", key, "--show-key", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", first.stdout)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Made now, and said so beside the key, not in it: an operator in the wrong folder would
    # otherwise send the server's administrator a key nobody uses.
    assert f"no key at {key}, so a new one was made there" in first.stderr
    again = run_main("server.py", "--key", key, "--show-key", cwd=tmp_path)
    assert again.stdout == first.stdout and again.stderr == ""


def test_a_client_shows_its_key_without_needing_data(tmp_path):
    shown = run_script("client.py", "--name", "alice", "--show-key", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", shown.stdout)
    assert (tmp_path / "keys" / "alice.key").exists()  # keys/NAME.key by default
    other = run_main("client1.py", "--show-key", "-q", cwd=tmp_path)
    assert other.stdout != shown.stdout  # cli1 has a key of its own
    # Each made its key now, and says where, even with -q, on standard error only.
    assert "no key at keys/alice.key, so a new one was made there" in shown.stderr
    assert "no key at keys/cli1.key, so a new one was made there" in other.stderr
    again = run_main("client.py", "--name", "alice", "--show-key", cwd=tmp_path)
    assert again.stdout == shown.stdout and again.stderr == ""


def test_a_key_file_others_can_read_is_refused(tmp_path):
    key = tmp_path / "server.key"
    assert run_main("server.py", "--key", key, "--show-key").returncode == 0
    key.chmod(0o644)
    refused = run_main("server.py", "--key", key, "--show-key")
    assert refused.returncode == 2 and f"chmod 600 {key}" in refused.stderr
    assert refused.stdout == ""


def test_authorized_keys_anyone_may_write_are_refused(tmp_path):
    # Issue 16's report, as written: `printf 'cli1 %064d\n' 0 > ak; chmod 666 ak`.
    (tmp_path / "ak").write_text(f"cli1 {0:064d}\n")
    (tmp_path / "ak").chmod(0o666)
    refused = run_main("server.py", "--authorized-keys", "ak", "--show-key", cwd=tmp_path)
    assert refused.returncode == 2
    assert "ak can be written by others (mode 666)" in refused.stderr
    assert "run `chmod go-w ak`" in refused.stderr
    assert refused.stdout == ""
    (tmp_path / "ak").chmod(0o644)  # what the message says to run
    shown = run_main("server.py", "--authorized-keys", "ak", "--show-key", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr


def test_a_malformed_pinned_server_key_is_a_usage_error(tmp_path):
    result = run_main("client1.py", "--server-key", "abc", cwd=tmp_path)
    assert result.returncode == 2 and "--server-key" in result.stderr
