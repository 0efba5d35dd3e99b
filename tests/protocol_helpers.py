"""The server's protocol driven by hand, for its unit tests: a clock the test turns, a plan, and
scripted clients that build the messages a real client sends (signed with fixed keys, checked
as the wire checks them) but have no socket."""

import hashlib

import numpy as np
from chain_helpers import SERVER_KEY, fixed_key, signed_update_message

from fedchain.federation.events import Action, Event, Registration, Say, Send, Spoke, Write
from fedchain.federation.plan import RunPlan
from fedchain.federation.protocol import ServerProtocol, Waits
from fedchain.learning.aggregation import FEDAVG
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import Block
from fedchain.ledger.signatures import attestation_message, probe_message
from fedchain.ledger.store import block_from_json
from fedchain.trust.handshake import login_message
from fedchain.trust.keys import public_hex, sign
from fedchain.wire.frames import HEADER, decode_payload, encode_message

FEATURES = ("age", "bmi", "smoker")
N_SAMPLES = 50
WAITS = Waits(round_timeout_s=30.0, join_timeout_s=60.0, rejoin_timeout_s=20.0)


class FakeClock:
    """A clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.cpu_s = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def process_time(self) -> float:
        return self.cpu_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def make_plan(
    *,
    n_clients: int = 2,
    min_clients: int | None = None,
    rounds: int = 2,
    aggregation: str = FEDAVG,
    parameters: dict | None = None,
    authorized: dict | None = None,
    features: tuple[str, ...] | None = None,
) -> RunPlan:
    """A plan mined at 2 bits, so every block is made at once."""
    return RunPlan(
        n_clients=n_clients,
        min_clients=min_clients or n_clients,
        rounds=rounds,
        difficulty_bits=2,
        seed=0,
        server_key=public_hex(SERVER_KEY),
        aggregation=aggregation,
        aggregation_parameters=parameters or {},
        features=features,
        authorized_keys=authorized,
    )


def make_server(
    plan: RunPlan | None = None, clock: FakeClock | None = None, *, waits=WAITS, **kwargs
):
    """A started protocol for PLAN on CLOCK, and what starting it said."""
    protocol = ServerProtocol(
        plan or make_plan(), SERVER_KEY, clock or FakeClock(), waits=waits, **kwargs
    )
    return protocol, protocol.start()


def wire(message: dict) -> dict:
    """MESSAGE as the transport hands it in: framed, then read back and checked."""
    return decode_payload(encode_message(message)[HEADER.size :])


def step(protocol: ServerProtocol, *events: Event) -> list[Action]:
    """Hand in EVENTS, then tick, as the transport does with what has arrived together, and
    again while a tick is due (a round begins once the block before it is out)."""
    out: list[Action] = []
    for event in events:
        out += protocol.handle(event)
    out += protocol.tick()
    for _ in range(100):  # a protocol always due would be a bug: fail, not hang
        if protocol.finished or protocol.wake_at() > protocol.clock.monotonic():
            return out
        out += protocol.tick()
    raise AssertionError("tick() is due again and again")


def written(actions: list[Action]) -> list[Block]:
    """The blocks ACTIONS have the transport write."""
    return [a.block for a in actions if isinstance(a, Write)]


def said(actions: list[Action]) -> list[str]:
    return [a.text for a in actions if isinstance(a, Say)]


def sent_to(actions: list[Action], conn: int) -> list[dict]:
    return [a.message for a in actions if isinstance(a, Send) and conn in a.to]


class ScriptedClient:
    """A client NAME on connection CONN, holding the chain as the server's messages show it."""

    def __init__(
        self,
        name: str,
        conn: int,
        *,
        key=None,
        features: tuple[str, ...] = FEATURES,
        n_samples: int = N_SAMPLES,
    ) -> None:
        self.name, self.conn = name, conn
        self.key = key or fixed_key(name)
        self.features, self.n_samples = features, n_samples
        self.genesis: Block | None = None
        self.last: Block | None = None
        self.challenge = hashlib.sha256(f"{name} {conn}".encode()).digest()

    def registration(self, *, signing_key=None, extra: tuple[dict, ...] = (), **changes) -> Event:
        """Its registration, signed over its challenge (CHANGES altered after signing)."""
        login = login_message(public_hex(SERVER_KEY), self.challenge, self.name)
        message = {
            "type": "register",
            "name": self.name,
            "feature_names": list(self.features),
            "n_samples": self.n_samples,
            "public_key": public_hex(self.key),
            "login_signature": sign(signing_key or self.key, login),
            **changes,
        }
        messages = tuple(wire(m) for m in (message, *extra))
        return Registration(self.conn, f"127.0.0.1:{self.conn}", self.challenge, messages)

    def hear(self, actions: list[Action]) -> list[dict]:
        """The messages ACTIONS send it, taking in the chain's blocks among them."""
        messages = sent_to(actions, self.conn)
        for message in messages:
            if message["type"] == "welcome":
                self.genesis = self.last = block_from_json(message["genesis"])
            elif message["type"] == "block":
                self.last = block_from_json(message["block"])
        return messages

    def says(self, *messages: dict) -> Spoke:
        return Spoke(self.conn, tuple(wire(m) for m in messages))

    def update_message(
        self, weights=None, *, index=None, genesis=None, key=None, gradient=None, **changes
    ) -> dict:
        """Its signed update for the round after its last block (signed for round INDEX, or on
        the chain of GENESIS, or with KEY, if given), with GRADIENT as its start gradient
        (scaffold), CHANGES altered after signing."""
        weights = np.zeros(len(self.features)) if weights is None else np.asarray(weights, float)
        message = signed_update_message(
            self.name,
            key or self.key,
            weights,
            self.n_samples,
            genesis=genesis or self.genesis,
            previous=self.last,
            index=self.last.index + 1 if index is None else index,
            round=self.last.index + 1,
            attestation=self.attestation(),
            gradient=gradient,
        )
        return {**message, **changes}

    def update(self, weights=None, **kwargs) -> Spoke:
        return self.says(self.update_message(weights, **kwargs))

    def attestation(self) -> bytes:
        return sign(self.key, attestation_message(genesis_hash=self.genesis.hash, block=self.last))

    def attest(self) -> Spoke:
        index = self.last.index + 1
        return self.says({"type": "attest", "round": index, "attestation": self.attestation()})

    def answer(self, probe: dict) -> Spoke:
        """Its signed gradient (zeros) at the probe's candidate."""
        candidate = LinearModel(probe["weights"], probe["bias"])
        gradient = np.zeros(len(self.features) + 1)
        signed = probe_message(
            genesis_hash=self.genesis.hash,
            index=probe["round"],
            previous_hash=self.last.hash,
            name=self.name,
            candidate=candidate,
            gradient=tuple(map(float, gradient)),
        )
        answer = {
            "type": "gradient",
            "round": probe["round"],
            "gradient": gradient,
            "signature": sign(self.key, signed),
        }
        return self.says(answer)


def join(protocol: ServerProtocol, *clients: ScriptedClient) -> list[Action]:
    """Register CLIENTS, then tick: with all of the plan's, the run begins and they hear the
    genesis and round 1's model."""
    out = step(protocol, *(c.registration() for c in clients))
    for client in clients:
        client.hear(out)
    return out


def clients(*names: str) -> list[ScriptedClient]:
    return [ScriptedClient(name, conn) for conn, name in enumerate(names, start=1)]
