"""Trust files as OpenSSH's StrictModes has them: refused when anyone but their owner could have
changed them or their folder, saying the command that fixes it. Tests run as root, so they set
the mode bits and owners the check reads; none relies on the system refusing access."""

import os
import stat

import pytest

from fedchain.trust.errors import TrustError
from fedchain.trust.strict_modes import (
    check_folder_of,
    check_trust_file,
    make_private_folders,
    read_trust_file,
)

STRANGER_UID = 54_321  # no account on a test machine: owns what "someone else" made

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")


def trust_file(folder, mode=0o644, name="authorized_keys"):
    path = folder / name
    path.write_text("cli1 " + "0" * 64 + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o604, 0o444, 0o400, 0o755], ids=oct)
def test_a_file_only_its_owner_may_write_is_trusted(tmp_path, mode):
    path = trust_file(tmp_path, mode)
    check_trust_file(path)
    assert read_trust_file(path) == path.read_bytes()


@pytest.mark.parametrize("mode", [0o664, 0o666, 0o646, 0o662, 0o620, 0o602, 0o777], ids=oct)
def test_a_file_others_may_write_is_refused_saying_the_chmod(tmp_path, mode):
    path = trust_file(tmp_path, mode)
    with pytest.raises(TrustError) as caught:
        check_trust_file(path)
    assert str(caught.value).startswith(f"{path} can be written by others (mode {mode:03o})")
    assert str(caught.value).endswith(f"run `chmod go-w {path}`")
    with pytest.raises(TrustError, match="chmod go-w"):
        read_trust_file(path)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o770, 0o702, 0o720], ids=oct)
def test_a_folder_others_may_write_is_refused_naming_it(tmp_path, mode):
    folder = tmp_path / "keys"
    folder.mkdir()
    path = trust_file(folder)
    folder.chmod(mode)
    with pytest.raises(TrustError) as caught:
        check_trust_file(path)
    message = str(caught.value)
    assert message.startswith(f"{folder}, the folder of {path}, can be written by others")
    assert f"(mode {mode:03o})" in message and message.endswith(f"run `chmod go-w {folder}`")
    with pytest.raises(TrustError, match="the folder of"):
        check_folder_of(folder / "not_made_yet")  # a file about to be made there: refused too


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o750, 0o1777, 0o1770], ids=oct)
def test_a_folder_only_its_owner_may_write_or_a_sticky_one_is_trusted(tmp_path, mode):
    # Sticky (as /tmp): only a file's owner may remove or rename it, so nobody can replace it.
    folder = tmp_path / "keys"
    folder.mkdir()
    path = trust_file(folder)
    folder.chmod(mode)
    check_trust_file(path)


def test_a_bare_name_is_named_as_given_and_its_folder_in_full(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trust_file(tmp_path, 0o666, name="ak")
    with pytest.raises(TrustError, match=r"^ak can be written .* run `chmod go-w ak`$"):
        check_trust_file("ak")
    os.chmod("ak", 0o644)
    tmp_path.chmod(0o777)
    with pytest.raises(
        TrustError, match=f"^{tmp_path}, the folder of ak, .* `chmod go-w {tmp_path}`"
    ):
        check_trust_file("ak")


def test_a_symbolic_link_is_checked_where_the_file_really_is(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    real = trust_file(shared)
    shared.chmod(0o777)
    link = tmp_path / "authorized_keys"
    link.symlink_to(real)
    with pytest.raises(TrustError, match=f"^{shared}, the folder of {link}, can be written"):
        check_trust_file(link)


def test_the_command_quotes_a_path_with_spaces(tmp_path):
    path = trust_file(tmp_path, 0o666, name="my keys")
    with pytest.raises(TrustError, match=f"run `chmod go-w '{path}'`"):
        check_trust_file(path)


def test_a_secret_file_is_refused_if_others_may_even_read_it(tmp_path):
    path = trust_file(tmp_path, 0o640, name="server.key")
    check_trust_file(path)
    with pytest.raises(TrustError, match=f"run `chmod 600 {path}`"):
        check_trust_file(path, secret=True)


@needs_root
def test_a_file_someone_else_owns_is_refused(tmp_path):
    path = trust_file(tmp_path)
    os.chown(path, STRANGER_UID, -1)
    with pytest.raises(TrustError, match=f"^{path} belongs to user {STRANGER_UID}, not to you"):
        check_trust_file(path)
    with pytest.raises(TrustError, match=f"run `chown {os.geteuid()} {path}` as root$"):
        check_trust_file(path)
    os.chown(path, 0, -1)
    check_trust_file(path)


@needs_root
def test_a_folder_someone_else_owns_is_refused(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o755)
    path = trust_file(folder)
    os.chown(folder, STRANGER_UID, -1)
    with pytest.raises(TrustError, match=f"^{folder}, the folder of {path}, belongs to user"):
        check_trust_file(path)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "known_servers", 0o600)
    with pytest.raises(TrustError, match="not a regular file"):
        read_trust_file(tmp_path / "known_servers")


def test_folders_made_for_trust_files_are_private_whatever_the_umask(tmp_path):
    tmp_path.chmod(0o755)
    previous = os.umask(0)
    try:
        make_private_folders(tmp_path / "a" / "b" / "keys")
    finally:
        os.umask(previous)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "keys"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # a folder that exists keeps its mode


def test_a_folder_others_may_write_anywhere_above_the_file_is_refused(tmp_path):
    # Whoever may write `shared` may rename `keys` away and put another folder in its place.
    shared = tmp_path / "shared"
    (shared / "keys").mkdir(parents=True)
    path = trust_file(shared / "keys")
    shared.chmod(0o777)
    with pytest.raises(TrustError) as caught:
        check_trust_file(path)
    assert str(caught.value).startswith(
        f"{shared}, a folder on the way to {path}, can be written by others (mode 777)"
    )
    assert str(caught.value).endswith(f"run `chmod go-w {shared}`")
    shared.chmod(0o1777)  # sticky, as /tmp: nobody may rename what is not theirs
    check_trust_file(path)


def test_a_symbolic_link_to_a_folder_is_checked_all_the_way_to_where_it_leads(tmp_path):
    shared = tmp_path / "shared"
    (shared / "keys").mkdir(parents=True)
    trust_file(shared / "keys")
    shared.chmod(0o777)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "keys").symlink_to(shared / "keys")
    with pytest.raises(TrustError, match=f"^{shared}, a folder on the way to {home}/keys/"):
        read_trust_file(home / "keys" / "authorized_keys")


def test_a_chain_of_links_is_checked_at_every_link_it_passes(tmp_path):
    # home/authorized_keys -> shared/hop -> safe/authorized_keys: the file and both ends sit
    # in safe folders, but whoever may write `shared` chooses where the hop leads.
    safe, shared, home = tmp_path / "safe", tmp_path / "shared", tmp_path / "home"
    for folder in (safe, shared, home):
        folder.mkdir(mode=0o700)
    real = trust_file(safe)
    (shared / "hop").symlink_to(real)
    (home / "authorized_keys").symlink_to(shared / "hop")
    read_trust_file(home / "authorized_keys")
    shared.chmod(0o777)
    with pytest.raises(TrustError, match=f"^{shared}, a folder on the way to {home}/authorized"):
        read_trust_file(home / "authorized_keys")


@needs_root
def test_a_link_someone_else_put_in_a_sticky_folder_is_not_followed(tmp_path):
    # In /tmp anyone may make a link; Linux follows it unless fs.protected_symlinks is set.
    sticky = tmp_path / "tmp"
    sticky.mkdir(mode=0o1777)
    real = trust_file(tmp_path)
    link = sticky / "authorized_keys"
    link.symlink_to(real)
    read_trust_file(link)
    os.lchown(link, STRANGER_UID, -1)
    with pytest.raises(
        TrustError,
        match=f"^{link}, a symbolic link on the way to {link}, belongs to user {STRANGER_UID}",
    ):
        read_trust_file(link)
