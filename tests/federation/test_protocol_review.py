"""What a hostile review of the server's protocol found, each mended and kept as a test: a
closing block no client attested, a client left out in the tick that stops the run never told
why, and a status line still naming a client that is back."""

from protocol_helpers import (
    WAITS,
    FakeClock,
    ScriptedClient,
    clients,
    join,
    make_plan,
    make_server,
    said,
    step,
    written,
)

from fedchain.federation.events import Abort, Closed, Disconnect
from fedchain.federation.protocol import Phase


def test_every_client_leaving_as_the_run_closes_does_not_make_an_unattested_closing_block():
    protocol, _ = make_server(make_plan(n_clients=2, min_clients=2, rounds=1))
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    step(protocol, cli1.update(), cli2.update())
    assert protocol.phase is Phase.CLOSING
    out = step(protocol, Closed(cli1.conn), Closed(cli2.conn))
    # docs/operations.md, Faults: "every client leaves | the run stops cleanly"; protocol.md:
    # the closing block is there so that the last round "is checked by the clients".
    assert not [b for b in written(out) if not b.attestations]
    assert protocol.phase is not Phase.DONE


def test_a_client_left_out_in_the_tick_that_stops_the_run_is_told_why():
    clock = FakeClock()
    protocol, _ = make_server(make_plan(n_clients=2, min_clients=2, rounds=2), clock)
    cli1, cli2 = clients("cli1", "cli2")
    join(protocol, cli1, cli2)
    step(protocol, cli1.update(), Closed(cli2.conn))
    assert protocol.phase is Phase.SHORT  # its rejoin deadline is 20 s from now
    clock.advance(WAITS.rejoin_timeout_s - 1)
    again = ScriptedClient("cli2", 9)
    step(protocol, again.registration())
    assert protocol.phase is Phase.TRAINING  # cli2 is back in round 1, and silent
    clock.advance(WAITS.round_timeout_s)
    out = protocol.tick()
    assert [a for a in out if isinstance(a, Abort)]
    # The abort goes to protocol.members only (server.py's _abort), and cli2 is no longer one:
    # the Disconnect with its reason is all it would ever hear.
    assert again.conn not in [m.conn for m in protocol.members]
    assert any(isinstance(a, Disconnect) and a.conn == again.conn for a in out)


def test_a_short_round_stops_naming_a_client_once_it_is_back():
    protocol, _ = make_server(make_plan(n_clients=3, min_clients=3, rounds=2))
    cli1, cli2, cli3 = clients("cli1", "cli2", "cli3")
    join(protocol, cli1, cli2, cli3)
    out = step(protocol, cli1.update(), Closed(cli2.conn), Closed(cli3.conn))
    assert protocol.phase is Phase.SHORT
    assert "until cli2, cli3 come back" in said(out)[-1]
    out = step(protocol, ScriptedClient("cli3", 9).registration())
    assert protocol.phase is Phase.SHORT  # 1 in the round and 1 back: still short of 3
    # docs/operations.md: it waits "saying whom it waits for whenever that changes".
    assert any("until cli2 comes back" in line for line in said(out))
