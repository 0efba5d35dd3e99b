"""A client's side of a federated run: train the global model on rows that never leave this
process, send back only the weights, and keep a verified replica of the chain.

The channel is TLS 1.3, and the server's key is pinned (given, or trusted on first use). Every
block the server sends is checked before its model is trusted: it links to this replica's last
block, its hash, work and signatures are right, this client's signed update and attestation are
in it exactly as sent, and its global model is what the run's rule makes of the client models
it records (FedAvg, a robust rule, or scaffold's step from the clients' gradients).
"""

import enum
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.checks import printable
from fedchain.learning.aggregation import PROXIMAL, RULES
from fedchain.learning.corrected_training import CorrectedProblem, gradient, train_corrected
from fedchain.learning.dataset import DataError, Dataset
from fedchain.learning.linear_model import LinearModel
from fedchain.learning.local_training import (
    LocalProblem,
    derive_seed,
    proximal_weight,
    train_and_score,
)
from fedchain.learning.poisoning import Poison
from fedchain.learning.privacy import MECHANISM, PrivateRelease
from fedchain.learning.release_file import in_order, load_or_release, release_path
from fedchain.learning.schema import parse_schema
from fedchain.ledger.block import (
    FORMAT_RULES,
    Block,
    ClientUpdate,
    PrivacyStatement,
    TrainingSettings,
)
from fedchain.ledger.chain import ChainTip, continue_chain, verify_tip
from fedchain.ledger.correction import global_gradient, probe_point
from fedchain.ledger.signatures import (
    attestation_message,
    probe_message,
    sign_hex,
    sign_privacy,
    signature_holds,
    update_message,
)
from fedchain.ledger.store import ChainReader, ChainWriter, block_from_json, updates_from_json
from fedchain.ledger.verification import ChainError, verify_genesis
from fedchain.trust.errors import TrustError
from fedchain.trust.handshake import login_message
from fedchain.trust.keys import public_hex, sign
from fedchain.trust.known_servers import KnownServers
from fedchain.trust.tls import client_context, peer_public_hex
from fedchain.wire.frames import receive_message, send_message
from fedchain.wire.messages import BUSY, MAX_PROBES, ProtocolError, validate_message

RETRY_INTERVAL_S = 0.2


class ClientFailed(RuntimeError):
    """The run cannot go on for this client; the message says why."""


class ServerBusy(ClientFailed):
    """The server turned this connection away for now; trying again may get in."""


class Stage(enum.Enum):
    """Where a client is in a run, and so which message it may take next."""

    LOGGING_IN = "waiting for the login challenge"
    JOINING = "waiting to be welcomed"
    CATCHING_UP = "catching up on the blocks it lacked"
    READY = "waiting for the next round"
    AWAITING_BLOCK = "waiting for the block of the round it trained"
    AWAITING_CLOSE = "waiting for the block that closes the run"
    DONE = "finished"


_EXPECTED = {
    Stage.LOGGING_IN: {"challenge"},
    Stage.JOINING: {"welcome", "waiting"},
    Stage.CATCHING_UP: {"block"},
    # A block while ready: a round this client sat out, having come back during it.
    Stage.READY: {"train", "close", "done", "block", "waiting"},
    # A probe (scaffold runs) asks for our gradient at the round's candidate; it comes again
    # if a client leaves before answering, since the candidate then changes.
    Stage.AWAITING_BLOCK: {"block", "waiting", "probe"},
    Stage.AWAITING_CLOSE: {"block", "waiting"},
    Stage.DONE: set(),
}


@dataclass(frozen=True)
class PrivacyWish:
    """A client's choice of differential privacy: its budget, and what keeping it needs."""

    epsilon: float
    delta: float
    target: str  # the column it predicts, which the run's schema bounds too
    folder: Path  # where its one release is kept (learning/release_file.py)


class FederatedClient:
    def __init__(
        self,
        *,
        name: str,
        data: Dataset,
        seed: int | None,
        generations: int,
        population: int,
        replica: Path | None,
        say: Callable[[str], None],
        key: Ed25519PrivateKey,
        min_difficulty: int = settings.MIN_DIFFICULTY_BITS,
        max_rounds: int = settings.MAX_ROUNDS,
        target: str | None = None,
    ) -> None:
        self.name = name
        # The column DATA's y is, said at registration and held against the genesis's; None:
        # not said (a run records a target only from format 10 on).
        self.target = target
        self.key = key
        self.public_key = public_hex(key)
        self.min_difficulty = min_difficulty
        self.max_rounds = max_rounds  # a genesis planning more rounds is refused
        self.server_key = ""  # pinned when the channel is opened
        self.data = data
        # Built now as well as after the welcome, so rows too large to use fail before joining.
        self.problem = LocalProblem.from_data(data.X, data.y)
        self.corrected = CorrectedProblem(self.problem)
        self.seed = seed
        self.generations = generations
        self.population = population
        self.replica = replica
        # Where the replica goes when REPLICA is None, named after the run's genesis.
        self.replica_folder = settings.REPLICA_DIR
        self.say = say
        self.stage = Stage.LOGGING_IN
        self.detail: Callable[[str], None] = lambda line: None  # what only -v shows
        # The verified replica: on disk, with only its tip in memory. Kept across connections:
        # the server may come back.
        self.chain: ChainTip | None = None
        self.height = 0  # the blocks the server held when it welcomed this connection
        self.caught_up = 0  # how many of them this client has checked or taken
        self.ours: Iterator[Block] | None = None  # while catching up: our replica, read along
        self.rounds = 0  # as the genesis planned it
        self.sent: ClientUpdate | None = None  # the update awaiting its block
        # Scaffold: the updates each probe we answered showed, in the round after the block
        # PROBES_AFTER; kept across connections, so a server that reconnects asks no more.
        self.probes: list[dict[str, ClientUpdate]] = []
        self.probes_after = ""
        self.attestation = ""  # what we sent with it: our signature of the last block
        self.poison: Poison | None = None  # for the demo and tests: an attacker's updates
        # Differential privacy: what the client asked for, then its release and statement (made
        # once the server's schema is known, at the first login).
        self.privacy: PrivacyWish | None = None
        self.release: PrivateRelease | None = None
        self.statement: PrivacyStatement | None = None
        self.schema_text = ""

    def registration(self, challenge: bytes = bytes(32), schema: str | None = None) -> dict:
        """Our registration, signing the server's CHALLENGE for this connection; a private
        client first releases its sums under the run's SCHEMA, and states how."""
        login = login_message(self.server_key or "0" * 64, challenge, self.name)
        message = {
            "type": "register",
            "name": self.name,
            "feature_names": list(self.data.feature_names),
            "n_samples": self.n_samples,
            "public_key": self.public_key,
            "login_signature": sign(self.key, login),
        }
        if self.target is not None:
            message["target"] = self.target
        if self.privacy is not None:
            self._make_private(schema)
            message["n_samples"] = self.n_samples
            message["privacy"] = {
                "mechanism": self.statement.mechanism,
                "epsilon": self.statement.epsilon,
                "delta": self.statement.delta,
                "signature": bytes.fromhex(self.statement.signature),
            }
        return message

    @property
    def n_samples(self) -> int:
        """The rows this client declares: a private client's noisy count."""
        return self.data.n_samples if self.release is None else self.release.n_samples

    def _make_private(self, schema_text: str | None) -> None:
        """Release this client's sums under the run's schema (or take the release it made
        before), train on them alone from now on, and sign what it promises."""
        if schema_text is None:
            raise ClientFailed(
                "the server's run has no schema (the server's --schema): a private client needs "
                "public bounds to clip its rows to, so it does not join"
            )
        if self.release is not None:
            if schema_text != self.schema_text:
                raise ClientFailed("the server's schema changed since this client joined")
            return
        wish = self.privacy
        try:
            schema = parse_schema(schema_text, source="the server's schema")
            path = release_path(wish.folder, self.name)
            made, new = load_or_release(
                path,
                self.data,
                target=wish.target,
                schema=schema,
                epsilon=wish.epsilon,
                delta=wish.delta,
            )
            problem = LocalProblem.from_moments(made.moments)
        except DataError as error:
            raise ClientFailed(str(error)) from None
        except OSError as error:
            raise ClientFailed(f"cannot keep this client's release in {path}: {error}") from None
        except ValueError as error:  # bounds so wide that the sums in data units overflow
            raise ClientFailed(
                f"the server's schema is of no use to this client: {error}"
            ) from None
        self.release, self.schema_text, self.problem = made, schema_text, problem
        self.corrected = CorrectedProblem(self.problem)
        self.statement = sign_privacy(
            self.key,
            server_key=self.server_key,
            name=self.name,
            mechanism=MECHANISM,
            epsilon=wish.epsilon,
            delta=wish.delta,
            schema_digest=schema.digest(),
        )
        clipped = f"; the bounds clipped {self.release.clipped} values" if new else ""
        self.say(
            f"{self.name}: trains on its sums released {'now' if new else 'before'} with "
            f"(ε {wish.epsilon:g}, δ {wish.delta:g})-differential privacy, kept in {path}"
            f"{clipped}"
        )

    def run(self, sock: ssl.SSLSocket, max_frame_bytes: int, server_key: str) -> ChainTip:
        """Take part in a run over SOCK, whose server holds SERVER_KEY (pinned when the
        channel was opened); return the verified chain (its tip: the blocks are in the
        replica). Called again on a new connection after a lost one, it goes on with the chain
        it holds."""
        self.connect(server_key)
        while self.stage is not Stage.DONE:
            reply = self.step(receive_message(sock, max_frame_bytes=max_frame_bytes))
            if reply is not None:
                send_message(sock, reply)
        return self.chain

    def connect(self, server_key: str) -> None:
        """Begin a connection to the server holding SERVER_KEY: every connection logs in."""
        self.server_key = server_key
        self.stage = Stage.LOGGING_IN

    def step(self, message: dict) -> dict | None:
        """Take the server's MESSAGE; return the reply to send, if it asks for one. Raises
        ClientFailed on a message this client refuses. No I/O but the replica's file: any
        transport that carries messages can drive it."""
        kind = message["type"]
        self.detail(f"{self.name}: the server sent {kind!r} while it was {self.stage.value}")
        if kind == "refused":
            raise refusal(printable(message["reason"]), self.stage)
        if kind not in _EXPECTED[self.stage]:
            raise ClientFailed(
                f"the server sent a {kind!r} message while this client was {self.stage.value}"
            )
        if kind == "challenge":
            registration = self.registration(message["challenge"], message.get("schema"))
            self.stage = Stage.JOINING
            return registration
        if kind == "train":
            return self._train(message)
        if kind == "probe":
            return self._answer_probe(message)
        if kind == "close":
            return self._attest_last(message)
        if kind == "welcome":
            self._accept_welcome(message)
        elif kind == "block":
            self._accept_block(message["block"])
        elif kind == "waiting":
            self.say(f"{self.name}: the server says: {printable(message['reason'])}")
        else:
            self._finish(message)
        return None

    def close(self) -> None:
        """Close the replica's file."""
        self._stop_reading_ours()
        if self.chain is not None and self.chain.store is not None:
            self.chain.store.close()

    def _accept_welcome(self, message: dict) -> None:
        genesis = self._parse_block(message["genesis"])
        height = message["height"]
        if self.chain is None:
            self._accept_genesis(genesis, message)
        elif genesis != self.chain.genesis:
            raise ClientFailed(
                f"the server came back with another run (genesis {genesis.hash[:16]}…), not the "
                f"one this client holds (genesis {self.chain.genesis.hash[:16]}…)"
            )
        else:
            self._check_height(height, self.rounds)
        held = self.chain.length
        if height < held:
            # It lost blocks we verified and kept: a server whose history shrank is refused.
            raise ClientFailed(
                f"the server holds {height} blocks, but this client verified {held}: "
                f"block {height} onwards is missing from the server's chain"
            )
        self.height = height
        self.stage = Stage.CATCHING_UP if height > 1 else Stage.READY
        self.caught_up = 1  # the server's next block to check against ours, or to take
        self._stop_reading_ours()
        if held > 1 and height > 1:  # the blocks we hold are checked against the replica's
            self.ours = iter(ChainReader(self.chain.store.path))
            self._read_ours()  # past the genesis, checked above
        if height > held:
            self.say(f"{self.name}: catching up on blocks {held} to {height - 1}")

    def _accept_genesis(self, genesis: Block, message: dict) -> None:
        try:
            verify_genesis(genesis, min_difficulty=self.min_difficulty)
        except ChainError as error:
            raise ClientFailed(f"the server's genesis block is invalid: {error}") from None
        if not genesis.signed:
            raise ClientFailed("the server's genesis block is unsigned (format 1)")
        if RULES[genesis.aggregation].scaled and genesis.version == FORMAT_RULES:
            # It still verifies, as old chains must, but a run started in it lets a client steer
            # the average by the row count it claims.
            raise ClientFailed(
                "the run records krum in the legacy format 3, which averages the kept models by "
                "the row counts clients claim; this client joins krum runs in format 5 only"
            )
        run = genesis.run
        if run.server_key != self.server_key:
            raise ClientFailed(
                f"the genesis names server key {run.server_key}, not the key of the server we "
                f"are talking to, {self.server_key}"
            )
        if run.participants.get(self.name) != self.public_key:
            raise ClientFailed("the genesis does not admit this client with its own key")
        if run.target is not None and self.target is not None and run.target.column != self.target:
            # Before any training: its model would be averaged with models of another quantity.
            raise ClientFailed(
                f"the run predicts {run.target.column!r}; this client's --target is {self.target!r}"
            )
        if run.rounds != message["rounds"] or run.seed != message["seed"]:
            raise ClientFailed("the welcome's rounds or seed differ from the genesis's")
        if run.rounds > self.max_rounds:
            raise ClientFailed(
                f"the genesis plans {run.rounds} rounds, more than this client takes part in "
                f"(--max-rounds {self.max_rounds})"
            )
        # Before the replica is made: a server claiming a longer chain than its run can hold
        # would have the client wait for blocks that cannot come.
        self._check_height(message["height"], run.rounds)
        self._check_privacy_terms(genesis)
        self.take_columns_of(genesis)
        if self.seed is None:
            self.seed = message["seed"]
        self.rounds = run.rounds
        path = self.replica or self.replica_folder / f"{self.name}-{genesis.hash[:12]}.jsonl"
        if path.exists():  # this client has been in this run before, and was restarted
            self.chain = self._continue_replica(path, genesis)
            return
        try:
            writer = ChainWriter(path)
        except OSError as error:
            raise ClientFailed(f"cannot make the replica {path}: {error}") from None
        try:
            self.chain = ChainTip(genesis, store=writer, min_difficulty=self.min_difficulty)
        except ChainError as error:
            writer.close()
            raise ClientFailed(f"the server's genesis block is invalid: {error}") from None
        except OSError as error:
            writer.close()
            raise ClientFailed(f"cannot write block 0 to {path}: {error}") from None
        self.say(f"joined; genesis {genesis.hash[:16]}… verified; replica in {path}")

    def take_columns_of(self, genesis: Block) -> None:
        """Train in the run's column order from now on (columns are matched by name: the
        model's weights follow the genesis's order)."""
        if genesis.feature_names == self.data.feature_names:
            return
        try:
            ours = self.data.feature_names
            self.data = self.data.in_order(genesis.feature_names)
        except DataError as error:
            raise ClientFailed(
                f"the run's features do not fit this client's rows: {error}"
            ) from None
        if self.release is None:
            self.problem = LocalProblem.from_data(self.data.X, self.data.y)
        else:
            sums = in_order(self.release.moments, ours, genesis.feature_names)
            self.problem = LocalProblem.from_moments(sums)
        # The corrected search reads its own copy of the rows: it must see the run's order
        # too, or it fits each weight to another column.
        self.corrected = CorrectedProblem(self.problem)

    def _check_height(self, height: int, rounds: int) -> None:
        """A run of ROUNDS has at most the genesis, its rounds and the closing block."""
        if height > rounds + 2:
            raise ClientFailed(
                f"the server claims to hold {height} blocks, but the genesis plans {rounds} "
                f"rounds: a run holds at most {rounds + 2} blocks (the genesis, the rounds and "
                "the closing block)"
            )

    def _check_privacy_terms(self, genesis: Block) -> None:
        """The genesis records what this client stated, exactly, and nothing if it stated
        nothing."""
        terms = genesis.run.privacy
        recorded = None if terms is None else terms.statements.get(self.name)
        if recorded != self.statement:
            raise ClientFailed(
                "the genesis records another privacy statement for this client than it made"
                if self.statement is not None and recorded is not None
                else "the genesis records no privacy statement for this private client"
                if self.statement is not None
                else "the genesis records a privacy statement for this client, which made none"
            )
        if terms is not None and self.statement is not None and terms.schema != self.schema_text:
            raise ClientFailed("the genesis records another schema than the server sent")

    def _continue_replica(self, path: Path, genesis: Block) -> ChainTip:
        def of_this_run(chain: ChainTip) -> None:  # checked before the file is touched
            if chain.genesis != genesis:
                raise ClientFailed(
                    f"the replica {path} holds another run (genesis "
                    f"{chain.genesis.hash[:16]}…), not this one ({genesis.hash[:16]}…); "
                    "choose another --replica"
                )

        try:
            chain, dropped = continue_chain(
                path, min_difficulty=self.min_difficulty, accept=of_this_run, tip_only=True
            )
        except (OSError, ValueError) as error:  # ChainFileError and ChainError are ValueErrors
            raise ClientFailed(f"cannot go on with the replica {path}: {error}") from None
        if dropped:
            self.say(f"{self.name}: {path}: {dropped}")
        self.say(
            f"joined again; genesis {genesis.hash[:16]}… verified; going on with the "
            f"{chain.length} blocks of {path}"
        )
        return chain

    def _train(self, message: dict) -> dict:
        index = message["round"]
        received = LinearModel(message["weights"], message["bias"])
        if index != self.chain.last.index + 1 or index > self.rounds:
            raise ClientFailed(f"the server asked for round {index} out of turn")
        if received != self.chain.last.server_model:
            raise ClientFailed(f"the global model for round {index} is not the one on the chain")
        started = time.perf_counter()
        # A long search is said to be under way, so the terminal never sits silent for long.
        notice = threading.Timer(
            settings.SLOW_TRAINING_S,
            self.say,
            [
                f"{self.name}: round {index}: still training ({self.n_samples} rows, "
                f"{len(self.data.feature_names)} columns, population {self.population})…"
            ],
        )
        notice.daemon = True
        notice.start()
        probes = RULES[self.chain.genesis.aggregation].probes
        correction = global_gradient(self.chain.last) if probes else None
        try:
            if correction is None:
                result = train_and_score(
                    self.problem,
                    received,
                    seed=derive_seed(self.seed, self.name, index),
                    generations=self.generations,
                    population=self.population,
                    proximal=proximal_weight(index),
                )
            else:  # the global gradient at this model is on the chain, verified: correct by it
                result = train_corrected(
                    self.corrected,
                    received,
                    correction,
                    seed=derive_seed(self.seed, self.name, index),
                    proximal=self.chain.genesis.parameters[PROXIMAL],
                    generations=self.generations,
                    population=self.population,
                )
            start_gradient = gradient(self.problem, received) if probes else None
        except ValueError as error:
            raise ClientFailed(f"cannot train round {index}'s global model: {error}") from None
        finally:
            notice.cancel()
        train_s = time.perf_counter() - started
        trained, before, after = result.model, result.received_mse, result.trained_mse
        if self.poison is not None:
            seed = derive_seed(self.seed, self.name, index)
            trained = self.poison.apply(received, trained, seed=seed)
            self.say(f"round {index}: ATTACKING (--poison {self.poison}): sending a poisoned model")
        self.say(
            f"round {index}: trained in {train_s:.2f} s, local MSE {before:.4f} -> {after:.4f}"
        )
        training = TrainingSettings(self.seed, self.generations, self.population)
        sent_gradient = () if start_gradient is None else tuple(map(float, start_gradient))
        unsigned = ClientUpdate(trained, self.n_samples, training=training, gradient=sent_gradient)
        signed = update_message(
            genesis_hash=self.chain.genesis.hash,
            index=index,
            previous_hash=self.chain.last.hash,
            name=self.name,
            update=unsigned,
        )
        signature = sign_hex(self.key, signed)  # remembered: checking it in the block is free
        # Only the model, the row count, how it trained, two numbers about it and signatures
        # leave this process.
        update = {
            "type": "update",
            "round": index,
            "weights": trained.weights.copy(),
            "bias": trained.bias,
            "n_samples": self.n_samples,
            "metrics": {"local_mse_before": before, "local_mse": after, "train_s": train_s},
            "seed": training.seed,
            "generations": training.generations,
            "population": training.population,
            "signature": bytes.fromhex(signature),
            "attestation": self._attestation_of_last(),
        }
        if start_gradient is not None:
            update["gradient"] = start_gradient
        try:
            validate_message(update)  # our own fault, if it fails: say so, not "the server's"
        except ProtocolError as error:
            raise ClientFailed(f"our round {index} update cannot be sent: {error}") from None
        self.sent = replace(unsigned, signature=signature)
        self.stage = Stage.AWAITING_BLOCK
        return update

    def _answer_probe(self, message: dict) -> dict:
        """Our gradient at the round's candidate, signed with it: the block must then record
        the candidate its models make, or our signature will not verify there. Each answer
        tells the server our curvature along one more direction, so a round gets at most two,
        and only at the FedAvg of updates its clients signed."""
        index = message["round"]
        if index != self.chain.last.index + 1 or not RULES[self.chain.genesis.aggregation].probes:
            raise ClientFailed(f"the server sent a probe for round {index} out of turn")
        if self.probes_after != self.chain.last.hash:  # a new round (a new connection is not)
            self.probes, self.probes_after = [], self.chain.last.hash
        if len(self.probes) == MAX_PROBES:
            raise ClientFailed(
                f"the server probed round {index} a third time: a client answers at most "
                f"{MAX_PROBES} probes a round (the second only after a client left)"
            )
        candidate = LinearModel(message["weights"], message["bias"])
        if candidate.n_features != self.problem.n_features:
            raise ClientFailed(
                f"the server's candidate for round {index} has {candidate.n_features} weights"
            )
        updates = self._probed_updates(message, index)
        if candidate != probe_point(tuple(updates), updates):
            raise ClientFailed(
                f"the server's candidate for round {index} is not the FedAvg of the updates "
                "its probe shows"
            )
        self.probes.append(updates)
        try:
            at_candidate = gradient(self.problem, candidate)
        except ValueError as error:
            raise ClientFailed(f"cannot take round {index}'s candidate: {error}") from None
        signed = probe_message(
            genesis_hash=self.chain.genesis.hash,
            index=index,
            previous_hash=self.chain.last.hash,
            name=self.name,
            candidate=candidate,
            gradient=tuple(map(float, at_candidate)),
        )
        signature = sign_hex(self.key, signed)
        self.sent = replace(
            self.sent, probe_gradient=tuple(map(float, at_candidate)), probe_signature=signature
        )
        answer = {
            "type": "gradient",
            "round": index,
            "gradient": at_candidate,
            "signature": bytes.fromhex(signature),
        }
        try:
            validate_message(answer)
        except ProtocolError as error:
            raise ClientFailed(f"our round {index} gradient cannot be sent: {error}") from None
        return answer

    def _probed_updates(self, message: dict, index: int) -> dict[str, ClientUpdate]:
        """The updates a probe of round INDEX shows, checked: ours as we sent it, every other
        signed by its client for this round, and, in a second probe, the first probe's except
        those of the clients it names as having left since (gone, or back with a new update)."""
        try:
            updates = updates_from_json(message["updates"])
        except (ValueError, TypeError) as error:
            raise ClientFailed(
                f"the server's probe for round {index} shows malformed updates: {error}"
            ) from None
        unprobed = replace(self.sent, probe_gradient=(), probe_signature="")
        if updates.get(self.name) != unprobed:
            raise ClientFailed(
                f"the server's probe for round {index} does not show our update as we sent it"
            )
        participants = self.chain.genesis.run.participants
        for name, update in updates.items():
            signed = update_message(
                genesis_hash=self.chain.genesis.hash,
                index=index,
                previous_hash=self.chain.last.hash,
                name=name,
                update=update,
            )
            if name not in participants or not signature_holds(
                participants[name], update.signature, signed
            ):
                raise ClientFailed(
                    f"the server's probe for round {index} shows an update of "
                    f"{printable(name)} that it did not sign for this round"
                )
        if not self.probes:
            return updates  # LEFT may name a client whose earlier probe we never saw
        first, left = self.probes[0], set(message["left"])
        if strangers := sorted(left - set(first)):
            raise ClientFailed(
                f"the server's second probe of round {index} says {names(strangers)} left, "
                "but its first probe did not show them"
            )
        if changed := [n for n in first if n not in left and updates.get(n) != first[n]]:
            raise ClientFailed(
                f"the server's second probe of round {index} drops or changes the updates of "
                f"{names(changed)}, which it does not say left"
            )
        if not left and updates != first:  # the same probe again (a lost connection) is not new
            raise ClientFailed(
                f"the server probed round {index} a second time at another point, naming no "
                "client that left since its first probe"
            )
        return updates

    def _attestation_of_last(self) -> bytes:
        """Our signature over the last block we verified, which the next block records."""
        message = attestation_message(genesis_hash=self.chain.genesis.hash, block=self.chain.last)
        self.attestation = sign_hex(self.key, message)
        return bytes.fromhex(self.attestation)

    def _attest_last(self, message: dict) -> dict:
        index = message["round"]
        if index != self.rounds + 1 or self.chain.last.index != self.rounds:
            raise ClientFailed(f"the server asked to close the run at block {index} out of turn")
        self.stage = Stage.AWAITING_CLOSE
        return {"type": "attest", "round": index, "attestation": self._attestation_of_last()}

    def _accept_block(self, text: str) -> None:
        block = self._parse_block(text)
        if self.stage is Stage.CATCHING_UP:
            self._catch_up(block)
            return
        index = self.chain.last.index + 1
        if self.chain.closed:
            raise ClientFailed(
                f"the server sent block {block.index} after the closing block: the genesis "
                f"plans {self.rounds} rounds, and block {self.rounds + 1} closed the run"
            )
        # Judged before it is appended: the replica never holds a block without what we sent.
        if block.index != index:
            raise ClientFailed(f"block {block.index} arrived where block {index} was due")
        awaited = self.stage in (Stage.AWAITING_BLOCK, Stage.AWAITING_CLOSE)
        if self.stage is Stage.AWAITING_BLOCK and block.client_model.get(self.name) != self.sent:
            raise ClientFailed(f"block {block.index} does not hold our update as we sent it")
        if awaited and block.attestations.get(self.name) != self.attestation:
            raise ClientFailed(f"block {block.index} does not hold our attestation as we sent it")
        self._append(block)
        self.sent = None
        self.stage = Stage.READY
        if not block.cli:
            self.say(f"block {block.index} closes the run: attested by {names(block.attestations)}")
            return
        others = names(c for c in block.cli if c != self.name) or "no other client"
        gone = f"; missing: {names(block.missing)}" if block.missing else ""
        ours = "our signed update is in it as sent, with" if awaited else "a round we sat out, by"
        rule = RULES[block.aggregation].title
        self.say(
            f"block {block.index} verified: {ours} {others}{gone}; {rule} and every signature "
            f"check out (hash {block.hash[:16]}…)"
        )

    def _catch_up(self, block: Block) -> None:
        """The server's next block after a (re)join: one we hold must be exactly ours; a newer
        one is verified and kept like any other."""
        position = self.caught_up
        if self.ours is not None:
            ours = self._read_ours()
            if block != ours:
                raise ClientFailed(
                    f"the server's block {position} (hash {printable(block.hash[:16])}…) "
                    f"contradicts the one this client verified (hash {ours.hash[:16]}…)"
                )
        else:
            if block.index != position:
                raise ClientFailed(f"block {block.index} arrived where block {position} was due")
            self._append(block)
        self.caught_up += 1
        if self.ours is not None and self.caught_up == self.chain.length:
            self._stop_reading_ours()  # every block we held is checked: the rest are new
        if self.caught_up == self.height:
            self.sent = None  # a round it had trained is either on the chain now or asked again
            self.stage = Stage.DONE if self.chain.closed else Stage.READY
            self.say(
                f"{self.name}: caught up: {self.height} blocks verified, the last "
                f"{self.chain.last.hash[:16]}…"
            )
            if self.chain.closed:
                self.say(f"run complete: {self.height} blocks verified, in {self.chain.store.path}")

    def _read_ours(self) -> Block:
        """The next block of our replica, read from its file."""
        try:
            return next(self.ours)
        except StopIteration:
            reason = f"it holds fewer than the {self.chain.length} blocks verified"
        except (OSError, ValueError) as error:  # ChainFileError is a ValueError
            reason = shown_error(error)
        raise ClientFailed(f"cannot read the replica {self.chain.store.path} back: {reason}")

    def _stop_reading_ours(self) -> None:
        if self.ours is not None:
            self.ours.close()  # the generator closes the file
            self.ours = None

    def _append(self, block: Block) -> None:
        try:
            self.chain.append(block)
        except ChainError as error:
            raise ClientFailed(f"the server's block does not verify: {error}") from None
        except OSError as error:
            raise ClientFailed(
                f"cannot write block {block.index} to the replica: {error}"
            ) from None

    def _finish(self, message: dict) -> None:
        held = self.chain.length
        if message["blocks"] != held or not self.chain.closed:
            raise ClientFailed(
                f"the server ended the run after {self.chain.rounds_done} of {self.rounds} "
                "rounds, with a chain we do not hold"
            )
        self.stage = Stage.DONE
        self.say(f"run complete: {held} blocks verified, in {self.chain.store.path}")

    @staticmethod
    def _parse_block(text: str) -> Block:
        try:
            return block_from_json(text)
        except (ValueError, TypeError) as error:
            raise ClientFailed(f"the server sent a malformed block: {error}") from None


def take_part(
    client: FederatedClient,
    host: str,
    port: int,
    *,
    within_s: float,
    timeout_s: float,
    server_key: str | None,
    known_servers: KnownServers,
    max_frame_bytes: int,
    reconnect_s: float = settings.RECONNECT_TIMEOUT_S,
) -> ChainTip:
    """Connect over TLS 1.3, pin the server's key and take part in its run; return the verified
    chain. One loop, one deadline: a server not listening yet, cutting the handshake or busy is
    tried again until WITHIN_S has passed (so start order is free); one that vanishes mid-run
    (killed, or restarted) is looked for again for RECONNECT_S, with the key it had, and the
    client then catches up on the blocks it missed and goes on."""
    address = f"{host}:{port}"
    window_s, flag = within_s, "--connect-timeout-s"
    deadline = time.monotonic() + window_s
    waiting_said = False  # once a window; a lost server's line says it already
    cut: OSError | None = None  # the last handshake that failed, if none has held since

    def try_again(give_up: str, note: str | None = None) -> None:
        if time.monotonic() + RETRY_INTERVAL_S > deadline:
            raise ClientFailed(give_up) from None
        if note is not None:
            client.say(note)

    try:
        for attempt in itertools.count():
            time.sleep(RETRY_INTERVAL_S if attempt else 0)
            connect_s = min(timeout_s, max(deadline - time.monotonic(), 0.1))
            try:
                raw = socket.create_connection((host, port), timeout=connect_s)
            except OSError as error:
                waiting = (
                    f"no server at {address} yet ({error.strerror or error}); retrying for up "
                    f"to {window_s:g} s ({flag})"
                )
                try_again(
                    f"{address} did not complete a TLS 1.3 handshake: {cut}"
                    if cut is not None
                    else f"no server at {address} within {window_s:g} s ({flag}): {error}",
                    None if waiting_said else waiting,
                )
                waiting_said = True
                continue
            raw.settimeout(timeout_s)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a message is one send
            try:
                sock = client_context().wrap_socket(raw)
            except OSError as error:  # ssl.SSLError is one
                raw.close()
                cut = error  # a server shedding idle newcomers closes before the handshake
                try_again(f"{address} did not complete a TLS 1.3 handshake: {error}")
                continue
            with sock:
                cut = None
                # A server that comes back must hold the same key.
                server_key = pin(sock, address, server_key, known_servers, client.say)
                client.say(
                    f"{client.name}: connected to {address} over TLS 1.3 with "
                    f"{client.data.n_samples} rows"
                )
                try:
                    return client.run(sock, max_frame_bytes, server_key)
                except ServerBusy as error:
                    try_again(
                        f"{error}; no room within {window_s:g} s ({flag})",
                        f"{client.name}: {error}; trying again",
                    )
                except TimeoutError:
                    raise  # a server that is there but silent is not looked for again
                except OSError as error:  # ConnectionClosed is one
                    client.say(
                        f"{client.name}: lost the server ({shown_error(error)}) while "
                        f"{client.stage.value}; trying to reconnect for up to {reconnect_s:g} s "
                        "(--reconnect-timeout-s)"
                    )
                    window_s, flag = reconnect_s, "--reconnect-timeout-s"
                    deadline, waiting_said = time.monotonic() + window_s, True
    finally:
        client.close()


def refusal(reason: str, stage: Stage) -> ClientFailed:
    """The error for the server's refusal, worded by what it was: a busy server (worth another
    try), the run stopped for everyone, this client left out of it, or this client turned away."""
    if reason.startswith(BUSY) and stage is Stage.JOINING:
        return ServerBusy(f"the server refused: {reason}")
    meanings = {
        "run stopped: ": "the server stopped the run",
        "left out: ": "the server left this client out of the run",
    }
    for opening, meaning in meanings.items():
        if reason.startswith(opening):
            return ClientFailed(f"{meaning}: {reason.removeprefix(opening)}")
    return ClientFailed(f"the server refused: {reason}")


def names(clients: Iterable[str], most: int = 8) -> str:
    """CLIENTS' names for a line of the log: a server chooses how many there are, so a few are
    shown and the rest counted."""
    clients = list(clients)
    shown = ", ".join(clients[:most])
    return shown + (f" and {len(clients) - most} more" if len(clients) > most else "")


def shown_error(error: BaseException) -> str:
    return printable(str(error) or type(error).__name__)


def pin(
    sock: ssl.SSLSocket,
    address: str,
    server_key: str | None,
    known_servers: KnownServers,
    say: Callable[[str], None],
) -> str:
    """The key the server at ADDRESS presents over SOCK, checked: SERVER_KEY if given, else the
    one KNOWN_SERVERS holds for the address, else trusted on first use and remembered."""
    try:
        presented = peer_public_hex(sock)
        if server_key is None and not known_servers.check(address, presented):
            known_servers.remember(address, presented)
            say(
                f"trusting server {address} on first use: key {presented} "
                f"(recorded in {known_servers.path})"
            )
    except TrustError as error:  # ServerKeyChanged names both keys and the line to remove
        raise ClientFailed(str(error)) from None
    if server_key is not None and presented != server_key:
        raise ClientFailed(
            f"the server at {address} presents key {presented}, not the pinned "
            f"--server-key {server_key}"
        )
    return presented


def prepare_replica(replica: Path | None) -> None:
    """Check an existing replica (a restarted client goes on with it) and make the replica's
    folder now, before joining a run: a replica that cannot be continued fails here."""
    if replica is not None and replica.exists():
        try:
            verify_tip(ChainReader(replica))  # a line at a time: a long replica costs no more
        except (OSError, ValueError) as error:  # ChainFileError and ChainError are ValueErrors
            raise ValueError(
                f"{replica} cannot be continued: {error}; move it away or choose another --replica"
            ) from None
    (replica.parent if replica is not None else settings.REPLICA_DIR).mkdir(
        parents=True, exist_ok=True
    )
