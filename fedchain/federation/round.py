"""One round as the server gathers it: who was sent the model, what each client sent and whether
it holds, the deadlines, the quorum, and scaffold's probe. What a client that leaves takes with it
is decided here, in take_out, and nowhere else."""

import math
from dataclasses import dataclass, field, replace

from fedchain.federation.admission import Member, Refusal
from fedchain.learning.aggregation import Rule
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import ClientUpdate, TrainingSettings
from fedchain.ledger.chain import Chain
from fedchain.ledger.correction import probe_point
from fedchain.ledger.signatures import (
    attestation_message,
    probe_message,
    signature_holds,
    update_message,
)
from fedchain.ledger.store import updates_to_json
from fedchain.wire.messages import MAX_PROBES


@dataclass(frozen=True)
class Received:
    """A client's checked message: its update (None for a closing attestation alone), its
    attestation of the last block, and the figures it reported."""

    update: ClientUpdate | None
    attestation: str
    metrics: dict


@dataclass
class Round:
    """Round INDEX (the run's rounds + 1: the closing block) of a run on CHAIN."""

    index: int
    chain: Chain
    rule: Rule
    n_features: int
    started_s: float = 0.0
    cpu_started_s: float = 0.0
    received: dict[str, Received] = field(default_factory=dict)  # the round's messages so far
    trained: set[int] = field(default_factory=set)  # the connections sent this round's model
    deadline_s: float = math.inf  # for the messages now awaited
    # Set when the round first falls short of its quorum: its whole wait for clients to come
    # back is bounded, so clients that leave and come back over and over cannot hold it for ever.
    rejoin_deadline_s: float = math.inf
    short_since_s: float = math.nan
    waiting_s: float = 0.0  # spent short of the quorum
    candidate: LinearModel | None = None  # scaffold: where the probe asks for gradients
    probed: list[dict[str, ClientUpdate]] = field(default_factory=list)  # each probe's updates
    answers: dict[str, Received] = field(default_factory=dict)  # to the probe in progress

    @property
    def closing(self) -> bool:
        return self.index > self.chain.genesis.run.rounds

    def take_out(self, name: str) -> None:
        """NAME has left the round: whatever it sent goes with it."""
        self.received.pop(name, None)
        self.answers.pop(name, None)

    def has_quorum(self, min_clients: int) -> bool:
        return len(self.received) >= min_clients

    # --- the probe -------------------------------------------------------------------------

    def start_probe(self, names: list[str]) -> dict:
        """The probe message asking NAMES, the round's contributors, for their gradients at the
        candidate their updates make; ValueError if the round has used its MAX_PROBES."""
        updates = {n: self.received[n].update for n in names}
        # Each answer tells the server a client's curvature along one more direction: a client
        # answers a second probe only if it names who left since the first (gone, or back with
        # a new update), and no third, which would leave the round with no client to finish it.
        if len(self.probed) == MAX_PROBES:
            raise ValueError(
                f"round {self.index} lost clients at {MAX_PROBES} probes; a client answers no "
                "more probes a round"
            )
        self.candidate = probe_point(names, updates)
        last = self.probed[-1] if self.probed else {}
        left = [
            n for n, u in last.items() if n not in self.received or self.received[n].update is not u
        ]
        self.probed.append(updates)
        self.answers = {}
        return {
            "type": "probe",
            "round": self.index,
            "weights": self.candidate.weights.copy(),
            "bias": self.candidate.bias,
            "updates": updates_to_json(updates),
            "left": left,
        }

    def probe_answered(self) -> bool:
        """Whether every client probed answered and is still in the round with the update it
        was probed with: then the answers join the updates."""
        names = set(self.probed[-1])
        if set(self.answers) != names or set(self.received) != names:
            return False
        self.received.update(self.answers)
        return True

    # --- checking a message ---------------------------------------------------------------

    def check(self, member: Member, message: dict, kind: str) -> Received:
        """MEMBER's KIND message for this round, checked, or Refusal saying what is wrong."""
        if message["type"] != kind:
            raise Refusal(f"sent {message['type']!r} instead of its {kind}")
        if message["round"] != self.index:
            raise Refusal(f"sent round {message['round']}'s {kind} in round {self.index}")
        if kind == "gradient":
            return self._check_gradient(member, message)
        chain = self.chain
        attestation = message["attestation"].hex()
        attested = attestation_message(genesis_hash=chain.genesis.hash, block=chain.last)
        if not signature_holds(member.public_key, attestation, attested):
            raise Refusal(f"sent an attestation of block {chain.last.index} that does not verify")
        if kind == "attest":
            return Received(None, attestation, {})
        if message["n_samples"] != member.n_samples:
            raise Refusal(f"claims {message['n_samples']} rows, but registered {member.n_samples}")
        if message["weights"].size != self.n_features:
            raise Refusal(f"sent {message['weights'].size} weights for {self.n_features} features")
        start_gradient = ()
        if self.rule.probes:
            start_gradient = self._gradient_of(message, "update")
        elif "gradient" in message:
            raise Refusal(f"sent a gradient, which a {self.rule.name} run does not take")
        update = ClientUpdate(
            LinearModel(message["weights"], message["bias"]),
            member.n_samples,
            training=TrainingSettings(
                message["seed"], message["generations"], message["population"]
            ),
            signature=message["signature"].hex(),
            gradient=start_gradient,
        )
        signed = update_message(
            genesis_hash=chain.genesis.hash,
            index=self.index,
            previous_hash=chain.last.hash,
            name=member.name,
            update=update,
        )
        if not signature_holds(member.public_key, update.signature, signed):
            raise Refusal(
                f"sent an update for round {self.index} not signed by its key "
                "(replayed from another round or chain, or forged)"
            )
        return Received(update, attestation, message["metrics"])

    def _gradient_of(self, message: dict, kind: str) -> tuple[float, ...]:
        if "gradient" not in message:
            raise Refusal(f"sent its {kind} without its gradient, which scaffold needs")
        size = self.n_features + 1
        if message["gradient"].size != size:
            raise Refusal(f"sent a gradient of {message['gradient'].size} numbers, not {size}")
        return tuple(map(float, message["gradient"]))

    def _check_gradient(self, member: Member, message: dict) -> Received:
        """A client's answer to the probe: its update with the gradient at the candidate."""
        if member.name not in self.received:
            raise Refusal(f"sent a gradient for round {self.index} without an update in it")
        mine = self.received[member.name]
        at_candidate = self._gradient_of(message, "gradient")
        signature = message["signature"].hex()
        signed = probe_message(
            genesis_hash=self.chain.genesis.hash,
            index=self.index,
            previous_hash=self.chain.last.hash,
            name=member.name,
            candidate=self.candidate,
            gradient=at_candidate,
        )
        if not signature_holds(member.public_key, signature, signed):
            raise Refusal(
                f"sent a gradient for round {self.index} not signed by its key at the round's "
                "candidate"
            )
        probed = replace(mine.update, probe_gradient=at_candidate, probe_signature=signature)
        return replace(mine, update=probed)
