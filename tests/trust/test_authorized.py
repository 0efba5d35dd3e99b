"""The authorized-keys file: names and keys read exactly, comments and blank lines skipped, and
every bad line refused naming the file and the line."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.trust.authorized import load_authorized_keys
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import public_hex

A, B, C = (public_hex(Ed25519PrivateKey.generate()) for _ in range(3))


def write(tmp_path, text: str, data: bytes | None = None):
    path = tmp_path / "authorized_keys"
    path.write_bytes(text.encode() if data is None else data)
    return path


def test_names_and_keys_are_read_with_comments_and_blank_lines_skipped(tmp_path):
    path = write(
        tmp_path,
        f"# the clients of the Monday run\n\ncli1 {A}\n   \ncli2\t{B.upper()}  # Bob's laptop\r\n"
        f"  # indented comment\nZoë Li {C}\n",
    )
    assert load_authorized_keys(path) == {"cli1": A, "cli2": B, "Zoë Li": C}


def test_a_hash_inside_a_name_is_part_of_it(tmp_path):
    assert load_authorized_keys(write(tmp_path, f"team#1 {A}\n")) == {"team#1": A}


def test_a_file_without_entries_admits_nobody(tmp_path):
    assert load_authorized_keys(write(tmp_path, "")) == {}
    assert load_authorized_keys(write(tmp_path, "# nobody yet\n\n")) == {}


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    path = write(tmp_path, "", data=f"\ufeffcli1 {A}\n".encode())
    assert load_authorized_keys(path) == {"cli1": A}


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="authorized_keys"):
        load_authorized_keys(tmp_path / "authorized_keys")


@pytest.mark.parametrize(
    "text, line, reason",
    [
        (f"cli1 {A}\ncli2\n", 2, "expected a label and a 64-hex-digit key, not cli2"),
        (f"{A}\n", 1, "expected a label"),
        (f"cli1 {A[:-1]}\n", 1, "the key must be 64 hex digits, not 63 characters"),
        (f"cli1 {A}0\n", 1, "the key must be 64 hex digits, not 65 characters"),
        (f"cli1 {A[:-1]}g\n", 1, "the key must be hex digits only, not 'g'"),
        (f"cli1 {A[:-1]}#\n", 1, "the key must be hex digits only, not '#'"),
        (f"{A} cli1\n", 1, "the key must be 64 hex digits, not 4 characters"),
        (f"\n\n{'x' * 65} {A}\n", 3, "the client name must be 1..64 characters"),
        (f"cli\x1b[2J {A}\n", 1, r"the client name 'cli\\x1b\[2J' must be printable"),
        (f"cli1 {A}\ncli1 {B}\n", 2, "'cli1' is already listed on line 1"),
        (f"cli1 {A}\ncli1 {A}\n", 2, "'cli1' is already listed on line 1"),
        (
            f"cli1 {A}\n# x\ncli2 {A.upper()}\n",
            3,
            "the key of 'cli2' is already listed for 'cli1' on line 1; every client needs",
        ),
    ],
    # The keys are random: named cases give every run (and xdist worker) the same ids.
    ids=[
        "name-without-key",
        "key-without-name",
        "key-63-digits",
        "key-65-digits",
        "key-non-hex-g",
        "key-non-hex-hash",
        "key-and-name-swapped",
        "name-65-characters",
        "name-with-escape",
        "name-twice-other-key",
        "name-twice-same-key",
        "key-twice-other-case",
    ],
)
def test_a_bad_line_is_refused_naming_file_and_line(tmp_path, text, line, reason):
    path = write(tmp_path, text)
    with pytest.raises(TrustError, match=f"^{path}: line {line}: {reason}"):
        load_authorized_keys(path)


def test_text_that_is_not_utf8_names_its_line(tmp_path):
    path = write(tmp_path, "", data=f"cli1 {A}\n".encode() + b"cli\xff2 " + B.encode())
    with pytest.raises(TrustError, match=f"{path}: line 2: not UTF-8 text"):
        load_authorized_keys(path)


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646], ids=oct)
def test_a_file_others_may_write_is_refused(tmp_path, mode):
    # Whoever may write it decides who joins the run.
    path = write(tmp_path, f"cli1 {A}\n")
    path.chmod(mode)
    with pytest.raises(TrustError, match=f"run `chmod go-w {path}`"):
        load_authorized_keys(path)


def test_a_file_in_a_folder_others_may_write_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    path = write(folder, f"cli1 {A}\n")
    folder.chmod(0o777)
    with pytest.raises(TrustError, match=f"{folder}, the folder of {path}, can be written"):
        load_authorized_keys(path)
