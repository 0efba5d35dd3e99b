"""Faults in real runs: a client killed and restarted, and a server killed with SIGKILL again and
again, at random moments and with a block half-written, then resumed from its chain with the
same client processes. (A round short of its quorum is unit-tested on the protocol.)"""

import random
import time
from pathlib import Path

from processes import ROOT, run_blockchain_cli, start_server

from fedchain.ledger.chain import verify_chain
from fedchain.ledger.store import load_chain

CLIENT_DATA = {"cli1": "client1.csv", "cli2": "client2.csv", "cli3": "test.csv"}
SERVER_KILLS = 20


def start_client(programs, tmp_path: Path, name: str, port: int, *extra):
    return programs(
        "client.py",
        "--name",
        name,
        "--data",
        ROOT / "data" / CLIENT_DATA[name],
        "--port",
        port,
        "--replica",
        tmp_path / f"{name}.jsonl",
        *extra,
    )


def check_complete(tmp_path: Path, names, rounds: int) -> list:
    """The chain verifies and is complete; every client's replica is the same file."""
    chain = tmp_path / "chain.jsonl"
    result = run_blockchain_cli("verify", chain)
    complete = f"valid: {rounds + 2} blocks; the run is complete ({rounds} of {rounds} rounds)"
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == complete, result.stdout
    for name in names:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == chain.read_bytes(), name
    return load_chain(chain).blocks


def test_a_client_killed_mid_training_is_left_out_and_rejoins_when_restarted(programs, tmp_path):
    rounds = 10
    server, port = start_server(
        programs, tmp_path, "--clients", "3", "--min-clients", "2", "--rounds", rounds
    )
    # Large populations make every round take about a second, cli3's several: the kill lands
    # while cli3 trains, and the run is still going when it is back.
    clients = [
        start_client(programs, tmp_path, name, port, "--population", "3000")
        for name in ("cli1", "cli2")
    ]
    victim = start_client(programs, tmp_path, "cli3", port, "--population", "20000")
    victim.wait_for(r"^block 1 verified")
    victim.kill()
    left = server.wait_for(r"^cli3 is left out of the run: disconnected")
    restarted = start_client(programs, tmp_path, "cli3", port, "--population", "3000")
    restarted.wait_for(r"joined again; genesis .* going on with the \d+ blocks of")
    for program in [server, *clients, restarted]:
        assert program.finish() == 0, program.output
    assert left and "Traceback" not in server.output
    blocks = check_complete(tmp_path, ("cli1", "cli2", "cli3"), rounds)
    rounds_of_cli3 = [b.index for b in blocks[1:-1] if "cli3" in b.cli]
    gone = next(i for i in range(2, rounds + 1) if i not in rounds_of_cli3)
    # The round it was killed in went on under the quorum, and says why cli3 is missing.
    assert blocks[gone].cli == ("cli1", "cli2")
    assert blocks[gone].missing == {"cli3": f"disconnected (round {gone})"}
    back = [i for i in rounds_of_cli3 if i > gone]
    assert back and back == list(range(back[0], rounds + 1)), rounds_of_cli3  # in, to the end
    # In between it sat out, and once back (caught up, waiting for its round) the block says so.
    assert all("cli3" in blocks[i].missing for i in range(gone, back[0]))


def test_a_server_killed_again_and_again_resumes_and_finishes_with_the_same_clients(
    programs, tmp_path
):
    rng = random.Random(20261128)
    rounds = 200  # more than 20 short lives of the server can finish, at a few rounds each
    flags = ("--rounds", rounds, "--resume", "--rejoin-timeout-s", "60")
    server, port = start_server(programs, tmp_path, *flags)
    clients = [start_client(programs, tmp_path, name, port) for name in ("cli1", "cli2")]
    chain_path = tmp_path / "chain.jsonl"
    torn = resumed = 0
    tear = False  # every other time the chain is whole after a kill, the test tears its end
    for _ in range(SERVER_KILLS):
        # A random moment: joining, or in the round after the first few, training, mining,
        # writing or sending (a round takes about 10 ms).
        for _ in range(rng.randint(0, 3)):
            server.wait_for(r"^round \d+/")
        time.sleep(rng.uniform(0, 0.03))
        server.process.kill()
        server.process.wait()
        cut = None
        if chain_path.exists():
            loaded = load_chain(chain_path)  # whole blocks, and at most a torn last line
            verify_chain(loaded.blocks)
            # No block any client accepted is lost: each replica is a prefix of the chain.
            for name in ("cli1", "cli2"):
                replica = tmp_path / f"{name}.jsonl"
                if replica.exists():
                    kept = load_chain(replica).blocks
                    assert kept == loaded.blocks[: len(kept)], name
            tear = loaded.dropped_tail is None and not tear
            if tear:
                # What a kill half-way through writing a block leaves (the block's line is one
                # write, then fsync): the start of a block's line, without its newline.
                line = chain_path.read_bytes().splitlines()[-1]
                cut = rng.randrange(1, len(line))
                with chain_path.open("ab") as chain_file:
                    chain_file.write(line[:cut])
                torn += 1
        server = programs(
            "server.py", "--port", port, "--chain", chain_path, "--difficulty", "8", *flags
        )
        if cut is not None:  # dropped as it resumes, and that block made again
            server.wait_for(rf"{cut} bytes of an unfinished block dropped; that block is made")
        server.wait_for(r"^listening on ")
        resumed += chain_path.exists()
    for program in (server, *clients):
        assert program.finish(timeout_s=120) == 0, program.output
    check_complete(tmp_path, ("cli1", "cli2"), rounds)
    assert resumed >= SERVER_KILLS // 2  # most kills came after the genesis, mid-run
    assert torn >= SERVER_KILLS // 4  # and many went on from a block half-written
    assert "Traceback" not in server.output


def interrupted_run(programs, tmp_path: Path, rounds: int) -> int:
    """A run whose server is killed after round 2, its clients too; return the port it used."""
    server, port = start_server(programs, tmp_path, "--rounds", rounds)
    clients = [
        start_client(programs, tmp_path, name, port, "--population", "3000")
        for name in ("cli1", "cli2")
    ]
    server.wait_for(r"^round 2/\d+: ")
    for program in (server, *clients):
        program.kill()
    return port


def test_resume_refuses_flags_that_differ_from_the_genesis_and_then_finishes_the_run(
    programs, tmp_path
):
    rounds = 4
    port = interrupted_run(programs, tmp_path, rounds)
    chain = tmp_path / "chain.jsonl"
    before = chain.read_bytes()
    common = ("--port", port, "--chain", chain, "--difficulty", "8")

    refused = programs("server.py", *common, "--rounds", rounds)  # no --resume: never touched
    assert refused.finish() == 2 and "or --resume to go on with its run" in refused.output
    different = programs(
        "server.py",
        *common,
        "--resume",
        "--rounds",
        "7",
        "--seed",
        "3",
        "--min-clients",
        "1",
        "--key",
        tmp_path / "other.key",
    )
    assert different.finish() == 2
    for named in (
        "--rounds is 7, but the chain's genesis records 4",
        "--seed is 3, but the chain's genesis records 0",
        "--min-clients is 1, but the chain's genesis records 2",
        "(--key) is not the one the chain was made with",
    ):
        assert named in different.output
    assert chain.read_bytes() == before

    # With matching flags it goes on from block 2; the clients, restarted, catch up and finish.
    server = programs(
        "server.py", *common, "--resume", "--rounds", rounds, "--rejoin-timeout-s", "60"
    )
    server.wait_for(r"^resuming the run of .* after block \d+")
    clients = [start_client(programs, tmp_path, name, port) for name in ("cli1", "cli2")]
    for program in (server, *clients):
        assert program.finish() == 0, program.output
    blocks = check_complete(tmp_path, ("cli1", "cli2"), rounds)
    assert chain.read_bytes().startswith(before.rsplit(b"\n", 1)[0])  # what was there is kept
    assert all(block.cli == ("cli1", "cli2") for block in blocks[1:-1])

    done = programs("server.py", *common, "--resume", "--rounds", rounds)
    assert done.finish() == 0 and "is already complete" in done.output
