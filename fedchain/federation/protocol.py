"""The server's side of a run as a protocol with no I/O inside: everything that decides who takes
part, what a client may send when, when a round has its quorum and when it gives up on a client
lives in this file, over the round (round.py) and the checks of a login (admission.py).

A transport hands in events (events.py: a registration, a client's messages, a lost connection)
and carries out the actions they return (send, disconnect, say, write a block). Decisions are
made in tick(), which the transport calls once it has handed in everything that has arrived, and
again at wake_at(): so a batch of messages is judged whole, and every deadline reads the clock the
transport passed in (monotonic() and process_time(), as the time module has them), which a test
can turn by hand.
"""

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.checks import printable
from fedchain.federation.admission import (
    Applicant,
    Member,
    Refusal,
    check_registration,
    full,
)
from fedchain.federation.events import (
    Abort,
    Action,
    BadFrame,
    Closed,
    Detail,
    Disconnect,
    Event,
    Registration,
    Report,
    Say,
    Send,
    SendFailed,
    Spoke,
    TurnAwayNewcomers,
    Write,
)
from fedchain.federation.plan import RunPlan
from fedchain.federation.round import Round
from fedchain.federation.round_report import ClientFigures, RoundReport
from fedchain.federation.run_genesis import mine_genesis
from fedchain.learning.aggregation import RULES, Rule
from fedchain.learning.dataset import Dataset
from fedchain.learning.linear_model import mse, r2
from fedchain.ledger.block import MAX_REASON_CHARS, Block
from fedchain.ledger.chain import Chain, make_closing_block, make_round_block
from fedchain.ledger.store import block_to_json
from fedchain.ledger.verification import ChainError
from fedchain.trust.keys import public_hex

RESUME_GRACE_S = 10.0  # once a resumed run has its quorum back, how long the rest may take


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def process_time(self) -> float: ...


class Phase(enum.Enum):
    """Where the run is, and so what the clients in its round may send."""

    ADMITTING = "waiting for the clients to join"
    RESUMING = "waiting for the clients of a resumed run to come back"
    TRAINING = "collecting the round's updates"
    PROBING = "collecting the gradients at the round's candidate"
    SHORT = "short of the quorum, waiting for clients to come back"
    # The next round begins at the next tick, once the transport has written and sent the
    # block: its time and deadlines count from then, not from before the mining.
    BETWEEN = "a block is out; the next round begins"
    CLOSING = "collecting the attestations of the last round"
    DONE = "finished"
    STOPPED = "stopped"


# The message a client taking part in the round sends in each phase, once; in any other phase it
# is silent, and a client that speaks then is out. A client back mid-run is silent until its
# round begins.
EXPECTED = {Phase.TRAINING: "update", Phase.PROBING: "gradient", Phase.CLOSING: "attest"}


@dataclass(frozen=True)
class Waits:
    """How long the protocol waits for what, in seconds: the operator's settings."""

    round_timeout_s: float = settings.ROUND_TIMEOUT_S
    join_timeout_s: float = settings.JOIN_TIMEOUT_S
    # Below min_clients, how long a round waits for clients to come back before the run stops.
    rejoin_timeout_s: float = settings.REJOIN_TIMEOUT_S
    # The expected time to mine a block at the run's difficulty: a long one is announced, to the
    # log and to the clients, so a wait is never silent.
    mining_estimate_s: float = 0.0


def as_flag(setting: str) -> str:
    """SETTING as server.py's flag names it: join-timeout-s is --join-timeout-s."""
    return f"--{setting}"


def check_arguments(
    plan: RunPlan, key: Ed25519PrivateKey, resumed: Chain | None, test_data: Dataset | None
) -> None:
    """Raise ValueError unless the plan, the key, a resumed chain and the held-out rows agree."""
    if plan.server_key != public_hex(key):
        raise ValueError("the plan's server key is not KEY's")
    if resumed is not None and plan != RunPlan.from_genesis(resumed.genesis):
        raise ValueError("a resumed run's plan must be the one its genesis records")
    if test_data is not None and plan.features not in (None, test_data.feature_names):
        raise ValueError("the test data's columns must be the plan's, in its order")


class ServerProtocol:
    """One run, to PLAN. RESUMED: a verified chain (kept in memory only: the transport writes
    blocks) to go on from instead of starting anew; TEST_DATA: held-out rows each global model
    is scored on, in the order of PLAN's features; CHAIN_NAME: where the chain is, for the log."""

    def __init__(
        self,
        plan: RunPlan,
        key: Ed25519PrivateKey,
        clock: Clock,
        *,
        waits: Waits | None = None,
        resumed: Chain | None = None,
        test_data: Dataset | None = None,
        chain_name: str = "the chain",
        setting: Callable[[str], str] = as_flag,
    ) -> None:
        check_arguments(plan, key, resumed, test_data)
        # How the operator sets a setting, for the lines that name one: server.py's flag, or
        # another transport's way (a Flower run config's key).
        self.setting = setting
        self.plan = plan
        self.key = key
        self.public_key = public_hex(key)
        self.clock = clock
        self.waits = waits or Waits()
        self.test_data = test_data
        self.chain_name = chain_name
        self.phase = Phase.RESUMING if resumed else Phase.ADMITTING
        self.chain: Chain | None = resumed  # once the run has begun
        self.peers: list[Member] = []  # the clients taking part in the round, by name
        self.standby: list[Member] = []  # back mid-run, caught up; in from the next round
        self.round: Round | None = None
        self.round_index = 0 if resumed is None else resumed.last.index + 1
        self.run_features: tuple[str, ...] = () if resumed is None else plan.features
        self.bound_keys: dict[str, str] = {}  # open enrolment: each name's first key
        self.absent: dict[str, str] = {}  # clients left out of the run, and why
        self.deadline_s = math.inf  # of the wait for clients (joining, or coming back)
        self.status_said = ""  # what the wait for clients last said it waits for
        self.quorum_at_s = math.inf  # a resumed run: when its quorum was back
        # Something was handed in since the last tick (a client lost while the transport
        # carried out the last tick's actions, say): tick() is due at once, not at a deadline.
        self.heard = False

    @property
    def rule(self) -> Rule:
        return RULES[self.plan.aggregation]

    @property
    def members(self) -> list[Member]:
        """Every client registered and connected."""
        return self.peers + self.standby

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.STOPPED)

    @property
    def participants_known(self) -> bool:
        """Whether the run knows its clients before they join: --authorized-keys names exactly
        its --clients. Only then may it begin with its quorum at the join timeout, its genesis
        admitting the absent too: in open enrolment, or with more names than places, nobody
        knows who the absent would be, so such a run needs all its --clients. Nor may a private
        run (--schema): its genesis records each private client's signed statement, which an
        absent one has not made (admitted without one, it fails --max-epsilon, or could never
        come back private)."""
        keys = self.plan.authorized_keys
        return keys is not None and len(keys) == self.plan.n_clients and self.plan.schema is None

    # --- the transport's entry points ----------------------------------------------------

    def start(self) -> list[Action]:
        """Begin: say what the run waits for. The first call."""
        now = self.clock.monotonic()
        out: list[Action] = []
        if self.chain is not None:
            return self._begin_resuming(now)
        if self.plan.features is not None:
            out += self._fix_features(self.plan.features, "the test data")
        if self.plan.authorized_keys is None:
            out.append(
                Say(
                    "open enrolment: any key may join "
                    f"({self.setting('authorized-keys')} limits who may); "
                    "each name stays bound to the key it first joins with"
                )
            )
        self.deadline_s = now + self.waits.join_timeout_s
        return out

    def handle(self, event: Event) -> list[Action]:
        """Take in EVENT; return what to do now (decisions wait for tick())."""
        if self.finished:
            return []
        self.heard = True
        if isinstance(event, Registration):
            return self._register(event)
        member = self._member(event.conn)
        if member is None:  # already out: what it sent last goes with it
            return []
        if member in self.standby:
            return self._hear_idle(member, event)
        if self.phase is Phase.ADMITTING:
            return self._hear_early(member, event)
        if self.phase in EXPECTED:
            return self._hear_peer(member, event)
        return self._hear_idle(member, event)

    def tick(self) -> list[Action]:
        """Decide what is due: a wait that is over, a deadline passed, a status to say."""
        out: list[Action] = []
        now = self.clock.monotonic()
        self.heard = False
        try:
            while not self.finished:
                before = self.phase, self.round_index, self.round and len(self.round.probed)
                out += self._STEPS[self.phase](self, now)
                after = self.phase, self.round_index, self.round and len(self.round.probed)
                if after == before or self.phase is Phase.BETWEEN:
                    break
        except _Stop as stop:
            self.phase = Phase.STOPPED
            out += [*stop.said, Abort(str(stop))]  # who was left out on the way is told
        return out

    def wake_at(self) -> float:
        """When tick() is next due, if nothing arrives before (on the clock's monotonic time)."""
        if self.heard or self.phase is Phase.BETWEEN:
            return -math.inf  # at once
        if self.phase in (Phase.ADMITTING, Phase.RESUMING, Phase.SHORT):
            return self._wait_deadline()
        if self.phase in EXPECTED:
            return self.round.deadline_s
        return math.inf

    # --- hearing clients ---------------------------------------------------------------------

    def _register(self, event: Registration) -> list[Action]:
        applicant = Applicant(event.conn, event.address, event.challenge, event.messages)
        try:
            member = check_registration(
                applicant,
                plan=self.plan,
                server_key=self.public_key,
                chain=self.chain,
                joined=self.peers,
                bound_keys=self.bound_keys,
                run_features=self.run_features,
            )
        except Refusal as refusal:
            self._note_refusal(event, str(refusal))
            return self._refuse(event.conn, event.address, str(refusal))
        out: list[Action] = []
        if not self.run_features:
            out += self._fix_features(member.features, member.name)
        self.bound_keys.setdefault(member.name, member.public_key)
        if self.chain is not None:
            # A client that logs in again has restarted: a connection of its still open goes.
            for old in [m for m in self.members if m.name == member.name]:
                out += self._leave_out(old, "logged in again on a new connection")
            return out + self._welcome_back(member)
        self.peers.append(member)
        self.absent.pop(member.name, None)  # whatever kept it out before is past
        out.append(
            Say(
                f"{member.name} joined from {member.address} with {member.n_samples} rows "
                f"({len(self.peers)} of {self.plan.n_clients})"
            )
        )
        return out

    def _hear_early(self, member: Member, event: Event) -> list[Action]:
        """A client that has joined has nothing to say until the first round: if its connection
        stirs, it has left (and its name is free again, for a restart) or broken the protocol."""
        self.peers.remove(member)
        if not self.peers:
            # Unless the plan fixes them, the first client to come sets them afresh.
            self.run_features = self.plan.features or ()
        if isinstance(event, Spoke | BadFrame):
            reason = "a client may not speak before the run begins"
            self._record_absence(member.name, f"refused: {reason}")
            return self._refuse(member.conn, member.address, reason)
        self._record_absence(member.name, "left before the run began")
        return [
            Say(f"{member.name} left before the run began ({len(self.peers)} joined)"),
            Disconnect(member.conn),
        ]

    def _hear_idle(self, member: Member, event: Event) -> list[Action]:
        """A client with nothing to say (between its messages, or back and waiting for its
        round) whose connection stirs: it has left, or broken the protocol. Either way it is
        out."""
        if isinstance(event, SendFailed):
            return self._leave_out(member, f"disconnected ({event.error})")
        if isinstance(event, Closed):
            return self._leave_out(
                member, "disconnected again" if member in self.standby else "disconnected"
            )
        return self._leave_out(member, "spoke out of turn")

    def _hear_peer(self, member: Member, event: Event) -> list[Action]:
        """A client of the round while the round collects EXPECTED[phase] messages."""
        if isinstance(event, BadFrame):
            return self._leave_out(member, f"sent a bad frame: {event.error}")
        if isinstance(event, Closed):  # noticed at once, not at the deadline
            return self._leave_out(member, "disconnected")
        if isinstance(event, SendFailed):
            return self._leave_out(member, f"disconnected ({event.error})")
        kind = EXPECTED[self.phase]
        round = self.round
        collected = round.answers if kind == "gradient" else round.received
        out: list[Action] = []
        try:
            for message in event.messages:
                if member.name in collected:
                    raise Refusal(f"sent a second message in round {round.index}")
                collected[member.name] = round.check(member, message, kind)
                checked = f"{member.name}'s {kind} for round {round.index} checked"
                out.append(Detail(f"{checked}: signatures hold"))
        except Refusal as refusal:
            collected.pop(member.name, None)
            out += self._leave_out(member, str(refusal))
        return out

    # --- the steps tick() takes, one per phase ---------------------------------------------

    def _admitting(self, now: float) -> list[Action]:
        if len(self.peers) == self.plan.n_clients:
            return self._begin()
        # Open enrolment stops below --clients at the timeout (see participants_known).
        with_quorum = self.participants_known and len(self.peers) >= self.plan.min_clients
        if now >= self.deadline_s:
            if with_quorum:
                return self._begin()
            raise _Stop(
                f"only {len(self.peers)} of {self.plan.n_clients} clients joined within "
                f"{self.waits.join_timeout_s:g} s ({self.setting('join-timeout-s')})"
            )
        joined = f": {_names(self.peers)}" if self.peers else ""
        n_joined = len(self.peers)
        waiting_for = f"for {self.plan.n_clients} clients to join ({n_joined} joined{joined})"
        # The clients that have joined hear it too, so none waits in silence for the others.
        if with_quorum:
            return self._status(
                now,
                f"{waiting_for}; with its quorum ({self.setting('min-clients')}), the run begins "
                f"with those who joined at the join timeout ({self.setting('join-timeout-s')})",
                None,
            )
        return self._status(now, waiting_for, self.setting("join-timeout-s"))

    def _resuming(self, now: float) -> list[Action]:
        back = len(self.standby)
        if back < self.plan.min_clients:
            self.quorum_at_s = math.inf  # one left again: the quorum is not back after all
        elif self.quorum_at_s == math.inf:
            self.quorum_at_s = now
        if back == self.plan.n_clients or now >= self.quorum_at_s + RESUME_GRACE_S:
            return self._next_round(now)
        # The timeout bounds the wait for the quorum: once it is back, it has its grace.
        if now >= self.deadline_s and self.quorum_at_s == math.inf:
            raise _Stop(
                f"only {back} of the {self.plan.min_clients} clients the run needs "
                f"(its min_clients) came back within {self.waits.rejoin_timeout_s:g} s "
                f"({self.setting('rejoin-timeout-s')})"
            )
        if self.quorum_at_s < math.inf:
            waiting_for = f"{back} of {self.plan.n_clients} clients are back; the run goes on"
            return self._status(now, f"{waiting_for} without the rest", None)
        waiting_for = f"{back} of {self.plan.n_clients} clients are back"
        return self._status(now, waiting_for, self.setting("rejoin-timeout-s"))

    def _training(self, now: float) -> list[Action]:
        round = self.round
        out = self._collected(now, round.received, "update")
        if out is None:
            return []
        if not round.has_quorum(self.plan.min_clients):
            return _then(out, lambda: self._fall_short(now))
        if not self.rule.probes:
            return _then(out, self._finish_round)
        return _then(out, self._probe)

    def _probing(self, now: float) -> list[Action]:
        round = self.round
        out = self._collected(now, round.answers, "gradient")
        if out is None:
            return []
        if round.probe_answered():
            return _then(out, self._finish_round)
        # One left meanwhile, which changes the candidate: the round goes on with the others
        # (or waits for its quorum) and asks again.
        return _then(out, lambda: self._try_round(now))

    def _short(self, now: float) -> list[Action]:
        round = self.round
        if len(self.peers) + len(self.standby) >= self._quorum():
            round.waiting_s += now - round.short_since_s
            return self._try_round(now)
        missing = self._missing()
        if now >= round.rejoin_deadline_s:
            gone = "; ".join(f"{name} {why}" for name, why in sorted(missing.items()))
            raise _Stop(
                f"round {round.index} cannot go on with {len(round.received)} of the "
                f"{self._quorum()} clients it needs{self._quorum_flag()}; none came back "
                f"within {self.waits.rejoin_timeout_s:g} s "
                f"({self.setting('rejoin-timeout-s')}): {gone}"
            )
        # Who, not why: each one's reason was said as it left, and is on the chain. One back and
        # waiting to join is not waited for.
        back = {m.name for m in self.standby}
        who = sorted(name for name in missing if name not in back)
        comes = "comes" if len(who) == 1 else "come"
        return self._status(
            now,
            f"round {round.index} has {len(round.received)} of the {self._quorum()} "
            f"{'attestations' if round.closing else 'updates'} it needs{self._quorum_flag()} "
            f"until {_names(who)} {comes} back",
            self.setting("rejoin-timeout-s"),
        )

    def _closing(self, now: float) -> list[Action]:
        round = self.round
        out = self._collected(now, round.received, "attest")
        if out is None:
            return []
        if not round.has_quorum(self._quorum()):  # a closing block no client attested is none
            return _then(out, lambda: self._fall_short(now))
        attestations = {name: r.attestation for name, r in round.received.items()}
        out += self._announce_mining(round.index)
        block = make_closing_block(
            self.chain.last,
            attestations=attestations,
            server_key=self.key,
            missing=self._missing(),
        )
        out += self._append(block)
        out.append(Say(f"closing block mined: {len(attestations)} clients attest the last round"))
        done = {"type": "done", "blocks": len(self.chain.blocks)}
        self.phase = Phase.DONE
        return [*out, Send(self._conns(self.members), done)]

    _STEPS: ClassVar = {
        Phase.ADMITTING: _admitting,
        Phase.RESUMING: _resuming,
        Phase.TRAINING: _training,
        Phase.PROBING: _probing,
        Phase.SHORT: _short,
        Phase.CLOSING: _closing,
        Phase.BETWEEN: lambda self, now: self._next_round(now),
    }

    # --- beginning -------------------------------------------------------------------------

    def _begin(self) -> list[Action]:
        """Everyone has joined, or the quorum by the join timeout: mine the genesis, write it
        and welcome the clients."""
        self.peers.sort(key=lambda p: p.name)  # the order every round hashes and averages in
        if len(self.peers) == self.plan.n_clients:
            out: list[Action] = [TurnAwayNewcomers(full(self.plan))]
            participants = None  # those who joined
        else:
            # Newcomers still registering are not turned away: an absent client among them
            # comes in as a client of the genesis that is back.
            out, participants = self._begin_without_the_absent()
        out += self._announce_mining(0)
        try:
            genesis, said = mine_genesis(
                self.plan,
                self.key,
                self.peers,
                self.run_features,
                self.test_data,
                participants=participants,
                test_setting=self.setting("test"),
            )
            self.chain = Chain(genesis)
        except (ChainError, ValueError) as error:  # as _append: a bug of ours, said, and stop
            raise _Stop(f"the server made a genesis that does not verify: {error}") from None
        out += said
        out.append(Write(genesis))  # the file is made only now: a run that never starts
        self.round_index = 1  # leaves nothing in the way
        for peer in self.peers:
            out += self._welcome(peer)
        out.append(
            Say(f"genesis block mined (hash {genesis.hash[:16]}…); {self.plan.rounds} rounds to go")
        )
        self.phase = Phase.BETWEEN
        return out

    def _begin_without_the_absent(self) -> tuple[list[Action], dict[str, str]]:
        """The join timeout has passed with the quorum: what to say of it, and whom the genesis
        admits, every authorized client, so an absent one may still come back with its key, and
        every block records why it is missing (its refusal, or that it never joined)."""
        authorized = self.plan.authorized_keys
        joined = {p.name for p in self.peers}
        absent = sorted(name for name in authorized if name not in joined)
        for name in absent:
            self.absent.setdefault(name, self._worded("never joined"))
        said = Say(
            f"{len(joined)} of {self.plan.n_clients} clients joined within "
            f"{self.waits.join_timeout_s:g} s ({self.setting('join-timeout-s')}), the quorum "
            f"({self.setting('min-clients')}): "
            f"the run begins without {_names(absent)}"
        )
        return [said], {name: authorized[name] for name in sorted(authorized)}

    def _begin_resuming(self, now: float) -> list[Action]:
        """Take the run's clients from the genesis and wait for them to come back: all of
        them, or the quorum and whoever follows within a grace period."""
        chain = self.chain
        out = self._fix_features(self.plan.features, "the chain's genesis")
        participants = chain.genesis.run.participants
        self.absent = {name: "not back since the server restarted" for name in participants}
        out.append(
            Say(
                f"resuming the run of {self.chain_name} after block {chain.last.index} "
                f"({chain.rounds_done} of {self.plan.rounds} rounds done); waiting for its "
                f"{self.plan.n_clients} clients to come back"
            )
        )
        self.deadline_s = now + self.waits.rejoin_timeout_s
        return out

    def _fix_features(self, features: tuple[str, ...], source: str) -> list[Action]:
        self.run_features = features
        shown = ", ".join(features[:8]) + (", …" if len(features) > 8 else "")
        return [Say(f"the run's features, from {source}: {len(features)} columns ({shown})")]

    # --- rounds ------------------------------------------------------------------------------

    def _next_round(self, now: float) -> list[Action]:
        """Begin the round after the chain's last block: a training round, or the closing."""
        index = self.round_index = self.chain.last.index + 1
        self.round = Round(
            index,
            self.chain,
            self.rule,
            len(self.run_features),
            started_s=now,
            cpu_started_s=self.clock.process_time(),
        )
        return self._try_round(now)

    def _try_round(self, now: float) -> list[Action]:
        """Send the model to the clients in the round that lack it, or wait for the quorum."""
        round = self.round
        # Those back before the round join it; those back during it, only if it is short of its
        # quorum. Not on a probe asked again: a client could log in again at every probe, be
        # trained afresh each time, and hold the round forever.
        if not round.trained or len(self.peers) < self._quorum():
            self._bring_in_standby()
        if len(self.peers) < self._quorum():
            return self._fall_short(now)
        fresh = [p for p in self.peers if p.conn not in round.trained]
        round.trained |= {p.conn for p in fresh}
        round.deadline_s = now + self.waits.round_timeout_s
        if round.closing:  # what the clients are asked for is their attestation of the last
            self.phase = Phase.CLOSING
            return [Send(self._conns(fresh), {"type": "close", "round": round.index})]
        model = self.chain.last.server_model
        train = {"type": "train", "round": round.index, "weights": model.weights.copy()}
        train["bias"] = model.bias
        self.phase = Phase.TRAINING
        return [Send(self._conns(fresh), train)]

    def _fall_short(self, now: float) -> list[Action]:
        round = self.round
        if round.rejoin_deadline_s == math.inf:
            round.rejoin_deadline_s = now + self.waits.rejoin_timeout_s
        elif now >= round.rejoin_deadline_s:
            raise _Stop(
                f"round {round.index} kept losing clients it needs "
                f"({self.setting('min-clients')}) for more than "
                f"{self.waits.rejoin_timeout_s:g} s ({self.setting('rejoin-timeout-s')})"
            )
        self.phase = Phase.SHORT
        round.short_since_s = now
        return []

    def _probe(self) -> list[Action]:
        """Ask the round's contributors for their gradients at the candidate their updates
        make (scaffold)."""
        contributors = [p for p in self.peers if p.name in self.round.received]
        try:
            probe = self.round.start_probe([p.name for p in contributors])
        except ValueError as error:
            raise _Stop(str(error)) from None
        self.round.deadline_s = self.clock.monotonic() + self.waits.round_timeout_s
        self.phase = Phase.PROBING
        return [Send(self._conns(contributors), probe)]

    def _collected(self, now: float, collected: dict, kind: str) -> list[Action] | None:
        """None while a client of the round has yet to send its KIND and there is time; else
        the round's clients that sent none are left out (what that says)."""
        silent = [p for p in self.peers if p.name not in collected]
        if silent and now < self.round.deadline_s:
            return None
        out: list[Action] = []
        for peer in silent:
            why = (
                f"sent no {kind} within {self.waits.round_timeout_s:g} s "
                f"({self.setting('round-timeout-s')})"
            )
            out += self._leave_out(peer, why)
        return out

    def _finish_round(self) -> list[Action]:
        """Aggregate the round's updates into its block and append it; the next round begins
        once it is out."""
        round = self.round
        contributors = [p for p in self.peers if p.name in round.received]
        out = self._announce_mining(round.index)
        mining_started_s, mining_cpu_started_s = self.clock.monotonic(), self.clock.process_time()
        # The protocol caps every number at 1e100, so the weighted sum cannot overflow.
        try:
            block = make_round_block(
                self.chain.last,
                {p.name: round.received[p.name].update for p in contributors},
                attestations={p.name: round.received[p.name].attestation for p in contributors},
                server_key=self.key,
                missing=self._missing(),
            )
        except ValueError as error:  # the quorum the genesis checked makes this a bug of ours
            raise _Stop(f"round {round.index} cannot be aggregated: {error}") from None
        mining_s = self.clock.monotonic() - mining_started_s
        mining_cpu_s = self.clock.process_time() - mining_cpu_started_s
        out += self._append(block)
        scores = {}
        if self.test_data:
            model, X, y = block.server_model, self.test_data.X, self.test_data.y
            scores = {"test_mse": mse(model, X, y), "test_r2": r2(model, X, y)}
        report = RoundReport(
            block,
            self.plan.rounds,
            self.plan.n_clients,
            tuple(
                ClientFigures(p.name, p.n_samples, round.received[p.name].metrics)
                for p in contributors
            ),
            round.started_s,
            round.cpu_started_s,
            round.waiting_s,
            mining_s,
            mining_cpu_s,
            **scores,
        )
        self.phase = Phase.BETWEEN
        return [*out, Report(report)]

    def _append(self, block: Block) -> list[Action]:
        """Verify BLOCK onto the chain, have it written, then announce it to every client."""
        try:
            self.chain.append(block)
        except ChainError as error:  # a bug of ours, never a peer's doing: say so and stop
            raise _Stop(f"the server made a block that does not verify: {error}") from None
        announcement = {"type": "block", "block": block_to_json(block)}
        return [Write(block), Send(self._conns(self.members), announcement)]

    def _announce_mining(self, index: int) -> list[Action]:
        if self.waits.mining_estimate_s <= settings.SLOW_MINING_S:
            return []
        text = (
            f"mining block {index} at {self.plan.difficulty_bits} bits: about "
            f"{self.waits.mining_estimate_s:.0f} s expected"
        )
        return [Say(text), Send(self._conns(self.members), {"type": "waiting", "reason": text})]

    # --- clients coming and going ---------------------------------------------------------

    def _welcome(self, member: Member) -> list[Action]:
        """Send MEMBER the genesis and every block after it, so it holds the chain so far."""
        chain = self.chain
        welcome = {
            "type": "welcome",
            "genesis": block_to_json(chain.genesis),
            "seed": self.plan.seed,
            "rounds": self.plan.rounds,
            "height": len(chain.blocks),
        }
        blocks = [{"type": "block", "block": block_to_json(b)} for b in chain.blocks[1:]]
        return [Send((member.conn,), message) for message in [welcome, *blocks]]

    def _welcome_back(self, member: Member) -> list[Action]:
        """A client of this run has logged in again: catch it up; it takes part from the next
        round (or at once, if the round in progress is short of its quorum)."""
        self.standby.append(member)
        index = self.round_index
        if index > self.plan.rounds:  # the closing block is being gathered: no round is left
            self.absent[member.name] = "came back as the run was closing"
            when = "the run is closing: it gets the closing block"
        elif self.round is None or self.phase is Phase.BETWEEN:  # no round is under way
            self.absent[member.name] = "came back between rounds"
            when = f"it takes part in round {self.chain.last.index + 1}"
        else:
            self.absent[member.name] = f"came back during round {index}; in from round {index + 1}"
            when = "it takes part from the next round (from this one, if it is short)"
        said = Say(
            f"{member.name} is back from {member.address}: sent it the "
            f"{len(self.chain.blocks)} blocks so far; {when}"
        )
        return [*self._welcome(member), said]

    def _bring_in_standby(self) -> None:
        """Move the clients that came back into the round."""
        for member in self.standby:
            self.peers.append(member)
            self.absent.pop(member.name, None)
        self.standby = []
        self.peers.sort(key=lambda p: p.name)  # the order every round hashes and averages in

    def _leave_out(self, member: Member, reason: str) -> list[Action]:
        """Take MEMBER out of the run for REASON, with whatever it sent in this round, tell it
        why, and record it for every block."""
        if member in self.peers and self.round is not None:
            self.round.take_out(member.name)
        self._record_absence(member.name, reason)
        for group in (self.peers, self.standby):
            if member in group:
                group.remove(member)
        return [
            Say(f"{member.name} is left out of the run: {reason}"),
            Disconnect(member.conn, f"left out: {reason}"),
        ]

    def _record_absence(self, name: str, reason: str) -> None:
        """Record REASON, with when, as why NAME is missing from every block until it is back."""
        self.absent[name] = self._worded(reason)

    def _worded(self, reason: str) -> str:
        """REASON as a block's missing field holds it: with the round, within the limit."""
        where = f"round {self.round_index}" if self.round_index else "before round 1"
        # Cut after escaping: printable() cuts before, and each control character it escapes
        # grows to four characters or more.
        worded = printable(f"{reason} ({where})", limit=MAX_REASON_CHARS - 2)
        return worded if len(worded) <= MAX_REASON_CHARS else worded[: MAX_REASON_CHARS - 1] + "…"

    def _note_refusal(self, registration: Registration, reason: str) -> None:
        """A registration refused before the run in the name of an authorized client that has
        not joined: if the run begins without it, its blocks say why (the latest refusal)."""
        if self.chain is not None or not self.participants_known:
            return
        first = registration.messages[0] if registration.messages else {}
        name = first.get("name") if first.get("type") == "register" else None
        if name in self.plan.authorized_keys and all(p.name != name for p in self.peers):
            self._record_absence(name, f"refused: {reason}")

    def _refuse(self, conn: int, address: str, reason: str) -> list[Action]:
        reason = printable(reason)
        return [Say(f"refused {address}: {reason}"), Disconnect(conn, reason)]

    def _status(self, now: float, waiting_for: str, flag: str | None) -> list[Action]:
        """Say what the run waits for and how long it may take (FLAG sets it; None: the wait
        ends then whatever happens), to the log and to the clients in the run: when it changes,
        not over and over."""
        if waiting_for == self.status_said:
            return []
        self.status_said = waiting_for
        left = max(0.0, self._wait_deadline() - now)
        if flag is None:
            text = printable(f"waiting: {waiting_for} in {left:.0f} s")
        else:
            text = printable(f"waiting: {waiting_for}; up to {left:.0f} s more ({flag})")
        return [Say(text), Send(self._conns(self.members), {"type": "waiting", "reason": text})]

    def _quorum(self) -> int:
        """The fewest clients the round in progress may go on with: --min-clients for a round
        block; for the closing block, one attestation (the run's end is sealed by whoever of its
        clients is left, but never by none)."""
        return 1 if self.round.closing else self.plan.min_clients

    def _quorum_flag(self) -> str:
        return "" if self.round.closing else f" ({self.setting('min-clients')})"

    def _wait_deadline(self) -> float:
        """When the wait for clients in progress ends: it gives up, or a resumed run whose
        quorum is back goes on."""
        if self.phase is Phase.SHORT:
            return self.round.rejoin_deadline_s
        if self.phase is Phase.RESUMING and self.quorum_at_s < math.inf:
            return self.quorum_at_s + RESUME_GRACE_S
        return self.deadline_s

    def _missing(self) -> dict[str, str]:
        """Every client of the run not taking part in this block, and why."""
        present = {p.name for p in self.peers}
        participants = self.chain.genesis.run.participants
        return {n: self.absent.get(n, "not connected") for n in participants if n not in present}

    def _member(self, conn: int) -> Member | None:
        return next((m for m in self.members if m.conn == conn), None)

    @staticmethod
    def _conns(members: list[Member]) -> tuple[int, ...]:
        return tuple(m.conn for m in members)


def _names(clients: list[Member] | list[str], most: int = 4) -> str:
    """Up to MOST names of CLIENTS, and how many more."""
    names = [c if isinstance(c, str) else c.name for c in clients]
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


class _Stop(Exception):
    """The run cannot go on; the message says why. SAID: what the step that stopped had already
    done (a client left out, say), which must still be carried out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.said: list[Action] = []


def _then(out: list[Action], step: Callable[[], list[Action]]) -> list[Action]:
    """OUT, then what STEP does; if STEP stops the run, OUT is carried out all the same."""
    try:
        return out + step()
    except _Stop as stop:
        stop.said = [*out, *stop.said]
        raise
