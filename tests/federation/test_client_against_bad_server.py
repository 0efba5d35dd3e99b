"""A client against a fake server that lies, breaks the protocol or stalls: the client refuses,
says which lie, keeps its replica as it was, and runs nothing the server sends. And an honest
server that records: nothing of the client's rows is in anything the client sends.

The client's rules are tested in this process, the scripts played through its step()
(tests/client_steps.py); real client processes only where a process shows something: its exit
code and printed line, TLS and key pinning, timeouts, reconnecting, and retrying when busy."""

import pickle
import time

import numpy as np
import pytest
from chain_helpers import SERVER_KEY, fixed_key, reseal, signed_update
from client_loopback import Loopback, new_client, pickled
from client_steps import CHALLENGE, play
from fake_server import FEATURES, FakeServer, Session, crash, start_client
from processes import ROOT
from wire_helpers import Exploit, frame

from fedchain.cli.client import main as client_main
from fedchain.learning.dataset import load_dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import FORMAT_RULES, Block, RunRecord
from fedchain.ledger.chain import make_closing_block, make_genesis, make_round_block, verify_chain
from fedchain.ledger.mining import seal
from fedchain.ledger.store import load_chain
from fedchain.trust.keys import public_hex
from fedchain.wire.frames import HEADER, MAGIC, VERSION
from fedchain.wire.messages import ProtocolError

PWN = "open('pwned-by-fake-server', 'w')"


def forged_average(s: Session) -> None:
    s.welcome()
    honest = s.honest_block(s.train())
    forged = LinearModel(honest.server_model.weights * 1.5, honest.server_model.bias)
    s.send_block(reseal(honest, server_model=forged))  # mined and signed: only FedAvg shows it


def altered_update(s: Session) -> None:
    s.welcome()
    update = s.train()
    update["weights"] = np.nextafter(update["weights"], np.inf)
    s.send_block(s.honest_block(update))


def update_left_out(s: Session) -> None:
    cli2 = fixed_key("cli2")
    s.welcome(s.make_genesis(participants={"cli1": s.client_key, "cli2": public_hex(cli2)}))
    s.train()
    model = LinearModel(np.ones(len(FEATURES)), 0.0)
    other = signed_update(s.genesis, s.genesis, "cli2", model, 5, key=cli2)
    s.send_block(make_round_block(s.last, {"cli2": other}, attestations={}, server_key=s.key))


def broken_link(s: Session) -> None:
    s.welcome()
    s.send_block(reseal(s.honest_block(s.train()), previous_hash="1" * 64))


def rewritten_history(s: Session) -> None:
    # Round 1 as agreed, then a round 2 that continues a rewritten, re-mined, re-signed round 1.
    s.welcome(s.make_genesis(rounds=2))
    first = s.honest_block(s.train())
    s.send_block(first)
    update = s.train()
    rewritten = reseal(first, timestamp=first.timestamp + 1)
    s.last = rewritten
    s.send_block(s.honest_block(update))


def unsigned_genesis(s: Session) -> None:
    genesis = Block(
        index=0,
        timestamp=time.time(),
        previous_hash="0" * 64,
        difficulty=8,
        feature_names=FEATURES,
        aggregation="fedavg",
        cli=(),
        client_model={},
        server_model=LinearModel.zeros(len(FEATURES)),
        version=1,
    )
    s.welcome(seal(genesis))


def legacy_krum(s: Session) -> None:
    # Krum as servers wrote it before format 5 (raw-unit distances, the kept models averaged by
    # the row counts clients claim), signed today: it verifies, but no client should join it.
    others = {f"cli{i}": public_hex(fixed_key(f"cli{i}")) for i in (2, 3)}
    run = RunRecord(1, 0, public_hex(s.key), {"cli1": s.client_key, **others}, min_clients=3)
    current = make_genesis(
        initial_model=LinearModel.zeros(len(FEATURES)),
        feature_names=FEATURES,
        difficulty=8,
        run=run,
        server_key=s.key,
        aggregation="krum",
        parameters={"byzantine": 0.0},
    )
    s.welcome(reseal(current, version=FORMAT_RULES, scale=()))


SCRIPTS = {
    "wrong global model": (
        lambda s: (s.welcome(), s.train(model=LinearModel(np.ones(len(FEATURES)), 0.0))),
        "the global model for round 1 is not the one on the chain",
    ),
    "round out of turn": (lambda s: (s.welcome(), s.train(index=2)), "round 2 out of turn"),
    "forged average": (forged_average, "server_model is not the FedAvg"),
    "update altered": (altered_update, "does not hold our update as we sent it"),
    "update left out": (update_left_out, "does not hold our update as we sent it"),
    "broken link": (broken_link, "previous_hash does not match"),
    "rewritten history": (rewritten_history, "block 2: previous_hash does not match"),
    "genesis at low difficulty": (
        lambda s: s.welcome(s.make_genesis(difficulty=4)),
        "difficulty 4 is below the required 8",
    ),
    "genesis names another server key": (
        lambda s: s.welcome(s.make_genesis(run_key=fixed_key("elsewhere"))),
        "the genesis names server key",
    ),
    "genesis leaves us out": (
        lambda s: s.welcome(s.make_genesis(participants={"cli1": public_hex(fixed_key("x"))})),
        "the genesis does not admit this client with its own key",
    ),
    "krum in the legacy format": (
        legacy_krum,
        "the run records krum in the legacy format 3, which averages the kept models by the "
        "row counts clients claim; this client joins krum runs in format 5 only",
    ),
    "unsigned genesis": (unsigned_genesis, "the server's genesis block is unsigned (format 1)"),
    "malformed genesis": (
        lambda s: s.send({"type": "welcome", "genesis": "{}", "seed": 0, "rounds": 1, "height": 1}),
        "malformed block",
    ),
    "other features": (
        lambda s: s.welcome(s.make_genesis(features=("a", "b"))),
        "the run's features do not fit this client's rows",
    ),
    "early done": (
        lambda s: (s.welcome(), s.send({"type": "done", "blocks": 1})),
        "ended the run after 0 of 1 rounds",
    ),
    "block before welcome": (
        lambda s: s.send_block(s.genesis),
        "a 'block' message while this client was waiting to be welcomed",
    ),
    "welcome twice": (
        lambda s: (s.welcome(), s.welcome()),
        "a 'welcome' message while this client was waiting for the next round",
    ),
    "train twice": (
        lambda s: (s.welcome(), s.train(), s.train(index=1)),
        "a 'train' message while this client was waiting for the block of the round it trained",
    ),
    "close early": (
        lambda s: (s.welcome(), s.send({"type": "close", "round": 2})),
        "asked to close the run at block 2 out of turn",
    ),
    "refusal": (
        lambda s: s.send({"type": "refused", "reason": "no room"}),
        "the server refused: no room",
    ),
    "a height beyond the run": (
        lambda s: s.welcome(s.make_genesis(rounds=2), height=10**9),
        "the server claims to hold 1000000000 blocks, but the genesis plans 2 rounds: a run "
        "holds at most 4 blocks",
    ),
    "a block after the closing block": (
        lambda s: (
            s.run_honestly(rounds=2, done=False),
            s.send_block(make_closing_block(s.last, attestations={}, server_key=s.key)),
        ),
        "the server sent block 4 after the closing block: the genesis plans 2 rounds, and "
        "block 3 closed the run",
    ),
    "a refusal of four megabytes": (
        lambda s: s.send({"type": "refused", "reason": "x" * (1 << 22)}),
        "the server refused: xxxx",
    ),
}
# How many blocks each lie leaves in the client's replica: what it had verified before.
KEPT_BLOCKS = {"rewritten history": 2, "a block after the closing block": 4}


@pytest.mark.parametrize("lie", sorted(SCRIPTS))
def test_the_client_refuses_a_lying_server(tmp_path, lie):
    script, expected = SCRIPTS[lie]
    failure = play(new_client(tmp_path / "cli1.jsonl", []), script)
    assert failure is not None and expected in str(failure)  # anything else would propagate
    assert len(str(failure)) < 5000  # what a server sends is echoed short, never in full
    replica = tmp_path / "cli1.jsonl"
    if replica.exists():  # made at the welcome: it holds what was verified, nothing else
        blocks = load_chain(replica).blocks
        assert len(blocks) == KEPT_BLOCKS.get(lie, 1)
        verify_chain(blocks)


# Frames the wire refuses before the client's rules see a message: read off a real socket.
BAD_FRAMES = {
    "oversized frame": (HEADER.pack(MAGIC, VERSION, 2**31), "over the limit"),
    "hostile pickle": (
        frame(pickle.dumps({"type": "refused", "reason": Exploit(exec, PWN)})),
        "not allowed",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_the_client_refuses_a_frame_the_wire_does_not_take(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # where the exploit would write, as in the client's folder
    data, expected = BAD_FRAMES[name]
    with Loopback() as loopback:
        error = loopback.play(pickled(CHALLENGE) + data, new_client(tmp_path / "cli1.jsonl", []))
    assert isinstance(error, ProtocolError) and expected in str(error)
    assert not (tmp_path / "pwned-by-fake-server").exists()
    assert not (tmp_path / "cli1.jsonl").exists()


# A refused client process: exit code 1 and one short line saying why, as every refusal above
# would end in the program (main() turns ClientFailed into that line).
@pytest.mark.parametrize("lie", ["a refusal of four megabytes", "forged average"])
def test_a_client_process_refusing_a_lie_exits_1_and_says_why_briefly(programs, tmp_path, lie):
    script, expected = SCRIPTS[lie]
    server = FakeServer(script)
    client = start_client(programs, tmp_path, server.port)
    assert client.finish() == 1, client.output
    assert expected in client.output
    assert "Traceback" not in client.output
    assert len(client.output) < 5000  # what a server sends is echoed short, never in full
    server.finish()


def test_a_server_presenting_another_key_than_the_pinned_one_is_refused(programs, tmp_path):
    server = FakeServer(lambda s: s.run_honestly())
    pinned = public_hex(fixed_key("the real server"))
    client = start_client(programs, tmp_path, server.port, "--server-key", pinned)
    assert client.finish() == 1
    assert f"presents key {public_hex(SERVER_KEY)}, not the pinned --server-key {pinned}" in (
        client.output
    )
    assert not (tmp_path / "cli1.jsonl").exists()
    server.finish()


def test_a_server_whose_key_changed_since_first_use_is_refused(programs, tmp_path):
    first = FakeServer(lambda s: s.run_honestly())
    client = start_client(programs, tmp_path, first.port, "--replica", tmp_path / "one.jsonl")
    assert client.finish() == 0, client.output
    assert f"trusting server 127.0.0.1:{first.port} on first use" in client.output
    first.finish()
    # Another program takes over the address with another key: a machine in the middle.
    known = tmp_path / "known_servers"
    impostor = FakeServer(lambda s: s.run_honestly(), key=fixed_key("impostor"))
    known.write_text(known.read_text().replace(f":{first.port} ", f":{impostor.port} "))
    again = start_client(programs, tmp_path, impostor.port, "--replica", tmp_path / "two.jsonl")
    assert again.finish() == 1
    assert public_hex(SERVER_KEY) in again.output and public_hex(fixed_key("impostor")) in (
        again.output
    )
    assert not (tmp_path / "two.jsonl").exists()
    impostor.finish()


def test_a_known_servers_file_anyone_may_write_is_not_followed(programs, tmp_path):
    # Issue 16: anyone could have pinned a server of theirs in it, here the one listening.
    server = FakeServer(lambda s: s.run_honestly())
    known = tmp_path / "known_servers"
    known.write_text(f"127.0.0.1:{server.port} {public_hex(SERVER_KEY)}\n")
    known.chmod(0o666)
    client = start_client(programs, tmp_path, server.port)
    assert client.finish() == 2, client.output  # refused before it connects
    assert f"{known} can be written by others (mode 666)" in client.output
    assert f"run `chmod go-w {known}`" in client.output
    assert not (tmp_path / "cli1.jsonl").exists()
    server.finish(connections=0)


def test_a_server_that_does_not_speak_tls_is_refused(programs, tmp_path):
    server = FakeServer(lambda conn: conn.recv(1000), tls=False)
    client = start_client(programs, tmp_path, server.port, "--connect-timeout-s", "2")
    assert client.finish() == 1
    assert "did not complete a TLS 1.3 handshake" in client.output
    server.finish()


def test_a_server_that_trickles_a_message_cannot_hold_the_client_past_its_timeout(
    programs, tmp_path
):
    def trickle(s: Session) -> None:
        s.welcome()
        for byte in HEADER.pack(MAGIC, VERSION, 100) + bytes(100):
            s.conn.sendall(bytes([byte]))
            time.sleep(0.5)

    server = FakeServer(trickle)
    client = start_client(programs, tmp_path, server.port, "--timeout-s", "3")
    assert client.finish(timeout_s=20) == 1
    assert "no word from the server within 3 s (--timeout-s)" in client.output
    server.finish()


def test_nothing_of_the_clients_rows_is_in_what_it_sends(tmp_path):
    # Every reply step() gives is kept as the frame the client would send: all it sends.
    recorded = bytearray()
    data = ROOT / "data" / "client1.csv"
    sizes = {}
    for copies in (1, 100):
        path = tmp_path / f"rows{copies}.csv"
        lines = data.read_text().splitlines()
        path.write_text("\n".join([lines[0], *lines[1:] * copies]) + "\n")
        before = len(recorded)
        client = new_client(tmp_path / f"rows{copies}.jsonl", [], data=load_dataset(path))
        assert play(client, lambda s: s.run_honestly(rounds=2), sent=recorded) is None
        sizes[copies] = len(recorded) - before
    rows = load_dataset(data)
    values = np.unique(np.concatenate([rows.X.ravel(), rows.y]))
    sent = bytes(recorded)
    # The one-hot columns hold only 0 and 1, which say nothing alone; every other value of
    # every row (each age, BMI and log charge) must be absent, as a float64 either way round
    # and as decimal text.
    for value in values[(values != 0.0) & (values != 1.0)]:
        for encoding in (np.float64(value).tobytes(), np.float64(value).byteswap().tobytes()):
            assert encoding not in sent, value
        assert repr(float(value)).encode() not in sent, value
    # What the client sends does not grow with its rows.
    assert sizes[1] > 1000  # the login, two signed updates and three attestations
    assert abs(sizes[100] - sizes[1]) <= 0.01 * sizes[1], sizes


def test_a_client_turned_away_as_busy_tries_again_and_joins(programs, tmp_path):
    busy = {"type": "refused", "reason": "busy: too many connections are waiting to register"}
    server = FakeServer([lambda s: s.send(busy), lambda s: s.run_honestly()])
    client = start_client(programs, tmp_path, server.port)
    assert client.finish() == 0, client.output
    assert "the server refused: busy: too many connections" in client.output
    assert "trying again" in client.output
    server.finish()


def test_a_refusal_once_joined_is_not_retried(programs, tmp_path):
    busy = {"type": "refused", "reason": "busy: made up"}
    server = FakeServer([lambda s: (s.welcome(), s.send(busy)), lambda s: s.run_honestly()])
    client = start_client(programs, tmp_path, server.port)
    assert client.finish() == 1 and "trying again" not in client.output
    server.finish(connections=1)  # the refusal's, and no other


def comeback(second) -> list:
    """Two connections: round 1 agreed and the server crashes; then SECOND(session, genesis,
    block 1) plays the server that comes back."""
    agreed: dict = {}

    def first(s: Session) -> None:
        s.welcome(s.make_genesis(rounds=2))
        s.send_block(s.honest_block(s.train()))
        agreed.update(genesis=s.genesis, block=s.last)
        crash()

    return [first, lambda s: second(s, agreed["genesis"], agreed["block"])]


def finish_honestly(s: Session, rounds: int) -> None:
    while s.last.index < rounds:
        s.send_block(s.honest_block(s.train()))
    s.send({"type": "close", "round": rounds + 1})
    attest = s.receive()
    s.send_block(
        make_closing_block(
            s.last, attestations={"cli1": attest["attestation"].hex()}, server_key=s.key
        )
    )
    s.send({"type": "done", "blocks": rounds + 2})


COMEBACKS = {
    "a rewritten block 1": (
        lambda s, genesis, block: s.welcome(
            genesis, (reseal(block, timestamp=block.timestamp + 1),)
        ),
        "the server's block 1 (hash",
    ),
    "a chain that lost block 1": (
        lambda s, genesis, block: s.welcome(genesis),
        "the server holds 1 blocks, but this client verified 2",
    ),
    "a height beyond the run": (
        lambda s, genesis, block: s.welcome(genesis, (block,), height=10**9),
        "the server claims to hold 1000000000 blocks, but the genesis plans 2 rounds",
    ),
    "another run": (
        lambda s, genesis, block: s.welcome(s.make_genesis(rounds=2)),
        "the server came back with another run",
    ),
}


@pytest.mark.parametrize("lie", sorted(COMEBACKS))
def test_a_server_that_comes_back_with_another_history_is_refused(tmp_path, lie):
    second, expected = COMEBACKS[lie]
    failure = play(new_client(tmp_path / "cli1.jsonl", []), comeback(second))
    assert failure is not None and expected in str(failure)
    kept = load_chain(tmp_path / "cli1.jsonl").blocks  # what it verified before, nothing else
    assert [block.index for block in kept] == [0, 1]
    verify_chain(kept)  # raises ChainError naming the first wrong block


def test_a_client_catches_up_with_a_server_that_comes_back_and_finishes_the_run(programs, tmp_path):
    def second(s: Session, genesis: Block, block: Block) -> None:
        s.welcome(genesis, (block,))
        finish_honestly(s, rounds=2)

    server = FakeServer(comeback(second))
    client = start_client(programs, tmp_path, server.port)
    assert client.finish() == 0, client.output
    server.finish()
    assert "lost the server" in client.output and "--reconnect-timeout-s" in client.output
    assert "caught up: 2 blocks verified" in client.output
    blocks = load_chain(tmp_path / "cli1.jsonl").blocks
    assert len(blocks) == 4 and verify_chain(blocks).closed


def test_a_client_gives_up_on_a_server_that_stays_away_naming_the_flag(programs, tmp_path):
    server = FakeServer(comeback(None)[:1])  # one connection, then it listens no more
    client = start_client(programs, tmp_path, server.port, "--reconnect-timeout-s", "1")
    assert client.finish() == 1, client.output
    assert "within 1 s (--reconnect-timeout-s)" in client.output
    server.finish()


def test_a_run_planning_more_rounds_than_max_rounds_is_refused_naming_the_flag(programs, tmp_path):
    server = FakeServer(lambda s: s.welcome(s.make_genesis(rounds=4)))
    client = start_client(programs, tmp_path, server.port, "--max-rounds", "3")
    assert client.finish() == 1, client.output
    assert "the genesis plans 4 rounds, more than this client takes part in (--max-rounds 3)" in (
        client.output
    )
    server.finish()
    assert not (tmp_path / "cli1.jsonl").exists()


def test_a_run_planning_as_many_rounds_as_max_rounds_is_a_run_like_any_other(tmp_path):
    client = new_client(tmp_path / "cli1.jsonl", [], max_rounds=3)
    assert play(client, lambda s: s.run_honestly(rounds=3)) is None
    assert len(load_chain(tmp_path / "cli1.jsonl").blocks) == 5


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "must be a positive integer, not 0"),
        ("ten", "'ten' is not a whole number"),
        ("-3", "must be a positive integer, not -3"),
    ],
)
def test_max_rounds_must_be_a_positive_whole_number(capsys, value, reason):
    with pytest.raises(SystemExit) as exit_:
        client_main(["--data", "x.csv", f"--max-rounds={value}"], default_name="cli1")
    assert exit_.value.code == 2
    assert f"argument --max-rounds: {reason}" in capsys.readouterr().err
