"""Trust on first use: an unknown server is remembered, a known one with its key passes, a known
one with another key is refused naming both keys and the line to delete; bad lines name theirs."""

import os
import stat
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.trust.errors import TrustError
from fedchain.trust.keys import public_hex
from fedchain.trust.known_servers import KnownServers, ServerKeyChanged, check_address

A, B, C = (public_hex(Ed25519PrivateKey.generate()) for _ in range(3))


def test_an_unknown_server_is_remembered_then_known(tmp_path):
    path = tmp_path / "fedchain" / "known_servers"
    known = KnownServers(path)
    assert known.check("127.0.0.1:10000", A) is False
    assert not path.exists()  # checking alone writes nothing
    known.remember("127.0.0.1:10000", A)
    assert known.check("127.0.0.1:10000", A) is True
    assert KnownServers(path).check("127.0.0.1:10000", A.upper()) is True
    assert path.read_text() == f"127.0.0.1:10000 {A}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_each_address_has_its_own_key(tmp_path):
    known = KnownServers(tmp_path / "known_servers")
    known.remember("127.0.0.1:10000", A)
    known.remember("127.0.0.1:10001", B)
    known.remember("example.org:10000", C)
    assert known.check("127.0.0.1:10001", B)
    assert known.check("EXAMPLE.org:10000", C)  # host names are not case-sensitive
    assert not known.check("10.0.0.1:10000", A)


def test_a_changed_key_is_refused_naming_both_keys_and_the_line(tmp_path):
    path = tmp_path / "known_servers"
    path.write_text(f"# servers\n127.0.0.1:9999 {B}\n127.0.0.1:10000 {A}\n")
    with pytest.raises(ServerKeyChanged) as caught:
        KnownServers(path).check("127.0.0.1:10000", C)
    error = caught.value
    assert (error.address, error.expected_hex, error.presented_hex) == ("127.0.0.1:10000", A, C)
    assert (error.path, error.line) == (path, 3)
    message = str(error)
    assert A in message and C in message
    assert f"delete line 3 of {path}" in message
    assert isinstance(error, TrustError)


def test_remembering_another_key_for_a_known_server_is_refused(tmp_path):
    known = KnownServers(tmp_path / "known_servers")
    known.remember("127.0.0.1:10000", A)
    with pytest.raises(ServerKeyChanged, match="line 1"):
        known.remember("127.0.0.1:10000", B)
    known.remember("127.0.0.1:10000", A)  # the same key again: nothing to add
    assert known.path.read_text() == f"127.0.0.1:10000 {A}\n"


def test_a_file_others_may_write_is_not_followed(tmp_path):
    # Anyone could have pinned their own server's key in it.
    path = tmp_path / "known_servers"
    path.write_text(f"127.0.0.1:10000 {A}\n")
    path.chmod(0o666)
    known = KnownServers(path)
    for look in (lambda: known.check("127.0.0.1:10000", A), known.check_file):
        with pytest.raises(TrustError, match=f"run `chmod go-w {path}`"):
            look()
    with pytest.raises(TrustError, match="chmod go-w"):
        known.remember("127.0.0.1:10001", B)
    assert path.read_text() == f"127.0.0.1:10000 {A}\n"


def test_no_server_is_trusted_on_first_use_in_a_folder_others_may_write(tmp_path):
    # There anyone could delete the file, and the next server would be trusted as new.
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o700)
    folder.chmod(0o777)
    known = KnownServers(folder / "known_servers")
    assert known.check("127.0.0.1:10000", A) is False  # no file: no server known
    for act in (known.check_file, lambda: known.remember("127.0.0.1:10000", A)):
        with pytest.raises(TrustError, match=f"run `chmod go-w {folder}`"):
            act()
    assert os.listdir(folder) == []


def test_a_file_made_under_a_permissive_umask_is_private(tmp_path):
    path = tmp_path / "home" / "keys" / "known_servers"
    previous = os.umask(0)
    try:
        KnownServers(path).remember("127.0.0.1:10000", A)
    finally:
        os.umask(previous)
    for made, mode in ((path, 0o600), (path.parent, 0o700), (path.parent.parent, 0o700)):
        assert stat.S_IMODE(made.stat().st_mode) == mode, made
    assert KnownServers(path).check("127.0.0.1:10000", A)  # and trusted when read again


def test_a_pinned_key_that_changed_says_so_without_a_file():
    message = str(ServerKeyChanged("127.0.0.1:10000", A, B))
    assert A in message and B in message and "the pinned key is" in message


def test_a_line_saved_without_its_newline_stays_a_line(tmp_path):
    path = tmp_path / "known_servers"
    path.write_text(f"127.0.0.1:10000 {A}")  # an editor that drops the last newline
    path.chmod(0o644)
    KnownServers(path).remember("127.0.0.1:10001", B)
    assert path.read_text() == f"127.0.0.1:10000 {A}\n127.0.0.1:10001 {B}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # an existing file keeps its mode


def test_clients_remembering_at_once_leave_whole_lines(tmp_path):
    path = tmp_path / "known_servers"
    start = threading.Barrier(8)

    def remember(port):
        start.wait()
        KnownServers(path).remember(f"127.0.0.1:{port}", A)

    threads = [threading.Thread(target=remember, args=(10000 + i % 4,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    known = KnownServers(path)
    assert all(known.check(f"127.0.0.1:{port}", A) for port in range(10000, 10004))
    assert all(line.endswith(A) for line in path.read_text().splitlines())


@pytest.mark.parametrize(
    "text, line, reason",
    [
        (f"127.0.0.1:10000 {A[:-2]}\n", 1, "the key must be 64 hex digits, not 62 characters"),
        (f"127.0.0.1 {A}\n", 1, "a server address must be HOST:PORT, not '127.0.0.1'"),
        (f"\n127.0.0.1:0 {A}\n", 2, "a server address must be HOST:PORT"),
        (f"127.0.0.1:65536 {A}\n", 1, "a server address must be HOST:PORT"),
        (f"127.0.0.1:+1 {A}\n", 1, "a server address must be HOST:PORT"),
        (f":10000 {A}\n", 1, "a server address must be HOST:PORT"),
        (f"my host:10000 {A}\n", 1, "a server address must be HOST:PORT"),
        ("127.0.0.1:10000\n", 1, "expected a label and a 64-hex-digit key"),
        (
            f"127.0.0.1:10000 {A}\n# x\n127.0.0.1:10000 {B}\n",
            3,
            "127.0.0.1:10000 already has another key on line 1; remove the wrong line",
        ),
    ],
    # The keys are random: named cases give every run (and xdist worker) the same ids.
    ids=[
        "key-62-digits",
        "address-without-port",
        "port-0-on-line-2",
        "port-65536",
        "port-with-plus",
        "address-without-host",
        "host-with-space",
        "address-without-key",
        "address-twice-other-key",
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path, text, line, reason):
    path = tmp_path / "known_servers"
    path.write_text(text)
    with pytest.raises(TrustError, match=f"^{path}: line {line}: {reason}"):
        KnownServers(path).check("10.0.0.1:1", A)


def test_the_same_line_twice_is_not_an_error(tmp_path):
    path = tmp_path / "known_servers"
    path.write_text(f"127.0.0.1:10000 {A}\n127.0.0.1:10000 {A.upper()}\n")
    assert KnownServers(path).check("127.0.0.1:10000", A)


@pytest.mark.parametrize(
    "address, canonical",
    [
        ("127.0.0.1:10000", "127.0.0.1:10000"),
        ("LocalHost:010000", "localhost:10000"),
        ("[::1]:10000", "[::1]:10000"),
        ("[FE80::1]:1", "[fe80::1]:1"),
    ],
)
def test_addresses_have_one_spelling(address, canonical):
    assert check_address(address) == canonical


@pytest.mark.parametrize(
    "address", ["", ":1", "host", "host:", "host:0", "host:65536", "h st:1", "#h:1", "h:1_0"]
)
def test_a_malformed_address_is_refused(address):
    with pytest.raises(TrustError, match="must be HOST:PORT"):
        check_address(address)


def test_a_malformed_presented_key_is_refused(tmp_path):
    with pytest.raises(TrustError, match="64 hex digits"):
        KnownServers(tmp_path / "known_servers").check("127.0.0.1:10000", "abc")
    assert not os.path.exists(tmp_path / "known_servers")
