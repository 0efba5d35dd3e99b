"""A client and a run that predict different columns never meet: the client says its target
when it registers and the server refuses another, and a client refuses a genesis recording
another, before it trains. Plain steps, no socket."""

from dataclasses import replace

from client_loopback import new_client
from client_steps import play
from protocol_helpers import ScriptedClient, make_plan, make_server, step

from fedchain.federation.events import Disconnect
from fedchain.federation.plan import RunPlan
from fedchain.ledger.block import TargetRecord
from fedchain.wire.messages import validate_message

RUN_TARGET = TargetRecord("charges", "ln(USD per year)")


def targeted_plan(**options) -> RunPlan:
    return replace(make_plan(**options), target=RUN_TARGET)


def refusal(actions, conn: int) -> str | None:
    """The reason CONN is disconnected with, if it is."""
    return next((a.refusal for a in actions if isinstance(a, Disconnect) and a.conn == conn), None)


def test_the_server_refuses_a_client_that_predicts_another_column():
    protocol, _ = make_server(targeted_plan())
    reason = refusal(step(protocol, ScriptedClient("cli1", 1).registration(target="y")), 1)
    assert reason == "cli1 predicts 'y' (its --target), but the run predicts 'charges'"
    assert protocol.members == []


def test_the_server_admits_a_client_of_its_target_or_one_that_does_not_say():
    protocol, _ = make_server(targeted_plan(n_clients=3))
    assert (
        refusal(step(protocol, ScriptedClient("cli1", 1).registration(target="charges")), 1) is None
    )
    assert refusal(step(protocol, ScriptedClient("cli2", 2).registration()), 2) is None  # older
    assert [m.name for m in protocol.members] == ["cli1", "cli2"]


def test_the_genesis_records_the_plan_s_target():
    protocol, _ = make_server(targeted_plan(n_clients=1))
    step(protocol, ScriptedClient("cli1", 1).registration(target="charges"))
    assert protocol.chain.genesis.run.target == RUN_TARGET
    assert protocol.chain.genesis.version == 10


def test_a_client_says_its_target_when_it_registers(tmp_path):
    said = new_client(tmp_path / "cli1.jsonl", [], target="charges").registration()
    assert said["target"] == "charges"
    validate_message(said)
    unsaid = new_client(tmp_path / "cli1.jsonl", []).registration()
    assert "target" not in unsaid
    validate_message(unsaid)  # a registration without one, as older clients send, still holds


def test_a_client_refuses_a_genesis_that_predicts_another_column_before_it_trains(tmp_path):
    replica = tmp_path / "cli1.jsonl"
    client = new_client(replica, [], target="y")

    def other_target(s):
        s.welcome(s.make_genesis(target=RUN_TARGET))
        s.train()

    failure = play(client, other_target)
    assert str(failure) == "the run predicts 'charges'; this client's --target is 'y'"
    assert not replica.exists()  # refused at the welcome: nothing taken, nothing trained


def test_a_client_joins_a_genesis_of_its_own_target(tmp_path):
    client = new_client(tmp_path / "cli1.jsonl", [], target="charges")

    def same_target(s):
        s.welcome(s.make_genesis(target=RUN_TARGET))

    assert play(client, same_target) is None


def test_the_server_refuses_a_client_whose_columns_hold_the_run_s_target():
    # Its columns would become the run's features, the target among them: the genesis then
    # failed the chain's rule and tick() raised ChainError, so one client (the target field is
    # optional, and says nothing of the columns) could stop any server with a target.
    protocol, _ = make_server(targeted_plan(n_clients=2))
    hostile = ScriptedClient("cli1", 1, features=("age", "bmi", "charges"))
    for changes in ({}, {"target": "charges"}):
        out = step(protocol, hostile.registration(**changes))
        assert refusal(out, 1) == "cli1's columns include the run's target 'charges'"
    honest = (ScriptedClient(name, conn) for conn, name in ((2, "cli2"), (3, "cli3")))
    step(protocol, *(client.registration() for client in honest))
    assert protocol.chain is not None and "charges" not in protocol.chain.genesis.feature_names
