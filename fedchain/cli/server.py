"""The federated server's command line: `python server.py` or `fedchain-server`."""

import argparse
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain import settings
from fedchain.cli.arguments import (
    add_connection_flags,
    add_output_flags,
    add_run_length_flags,
    column_name,
    epsilon,
    given_flags,
    integer_in,
    parser_for,
    proximal_weight,
    seconds,
    target_unit,
)
from fedchain.cli.console import (
    announce,
    command_for,
    configure_output,
    detail,
    listening_line,
    new_key_note,
    say,
    shown,
    warn,
)
from fedchain.cli.run_summary import show_chain, summarise_run
from fedchain.federation.metrics import MetricsFile, metrics_path_for
from fedchain.federation.plan import RunPlan, differences
from fedchain.federation.server import ChainUnavailable, FederationServer, RunAborted
from fedchain.learning.aggregation import (
    BYZANTINE,
    FEDAVG,
    KNOWN_RULES,
    PROXIMAL,
    ROBUST_RULES,
    RULES,
)
from fedchain.learning.dataset import DataError, Dataset, column_difference, load_dataset
from fedchain.learning.scaffold import DEFAULT_PROXIMAL
from fedchain.learning.schema import Schema, load_schema
from fedchain.ledger.block import TargetRecord
from fedchain.ledger.chain import Chain, continue_chain, verify_chain
from fedchain.ledger.mining import expected_mining_s, tries_per_second
from fedchain.ledger.store import load_chain
from fedchain.trust.authorized import load_authorized_keys
from fedchain.trust.errors import TrustError
from fedchain.trust.keys import existing_key, load_or_create_key, public_hex

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = parser_for(
        description="The federated server: averages the clients' models, round by round, "
        "and records every round on a proof-of-work chain.",
    )
    add_connection_flags(parser, listening=True)
    flag = parser.add_argument
    flag("--clients", type=integer_in(1), default=settings.CLIENTS, help="clients per run")
    flag(
        "--min-clients",
        type=integer_in(1),
        default=None,
        help="the fewest clients a round may go on with; one that drops out, times out or "
        "sends a bad update is left out (default: all of --clients)",
    )
    add_run_length_flags(parser)
    flag(
        "--chain",
        type=Path,
        default=None,
        help="the chain file; must not exist, unless --resume (default: a new "
        f"{settings.RUNS_DIR}/DATE-TIME/{settings.CHAIN_NAME} for each run)",
    )
    flag(
        "--metrics",
        type=Path,
        default=None,
        help="a CSV row per round and client (default: beside the chain, NAME.metrics.csv)",
    )
    flag(
        "--resume",
        action="store_true",
        help="go on with the run recorded in --chain (after a crash, say), with the settings "
        "its genesis records; a flag given must match them; with no file there yet, a new run "
        "starts",
    )
    flag(
        "--test",
        default=str(settings.bundled_data("test.csv")),
        help="held-out CSV to score rounds on ('' for none; default: the bundled test.csv); "
        "fixes the run's columns",
    )
    flag(
        "--target",
        type=column_name,
        default=settings.TARGET,
        help="the column the run predicts, recorded in the genesis (and the --test file's "
        "target column)",
    )
    flag(
        "--target-unit",
        type=target_unit,
        default=None,
        help="the target's unit, recorded in the genesis so predictions say it (default: "
        f"{settings.TARGET_UNIT!r} for the bundled target {settings.TARGET!r}; for another "
        "--target, '': not stated)",
    )
    flag("--seed", type=integer_in(0), default=settings.RUN_SEED, help="the run's seed")
    flag(
        "--round-timeout-s",
        type=seconds,
        default=settings.ROUND_TIMEOUT_S,
        help="how long to wait for every client's update in a round",
    )
    flag(
        "--join-timeout-s",
        type=seconds,
        default=settings.JOIN_TIMEOUT_S,
        help="how long to wait for the clients to join",
    )
    flag(
        "--rejoin-timeout-s",
        type=seconds,
        default=settings.REJOIN_TIMEOUT_S,
        help="below --min-clients (or resuming), how long to wait for clients to come back",
    )
    flag(
        "--register-timeout-s",
        type=seconds,
        default=settings.REGISTER_TIMEOUT_S,
        help="how long a new connection may take to register",
    )
    flag(
        "--key",
        type=Path,
        default=settings.SERVER_KEY_PATH,
        help="the server's Ed25519 key; made on first run, private to its owner",
    )
    flag("--show-key", action="store_true", help="print the public key as 64 hex digits, exit")
    flag(
        "--authorized-keys",
        type=Path,
        default=None,
        help="who may join: one 'NAME HEX' a line (default: open enrolment)",
    )
    flag(
        "--aggregation",
        choices=KNOWN_RULES,
        default=FEDAVG,
        help="how the clients' models make the global model: FedAvg; a rule robust to "
        "--byzantine poisoned updates (coordinate median, trimmed mean, multi-Krum); or "
        "scaffold, which corrects the clients' drift on non-IID data by their gradients and "
        "reaches the pooled optimum",
    )
    flag(
        "--byzantine",
        type=integer_in(0, 1000),
        default=None,
        help="attackers a robust rule assumes: trimmed-mean drops this many values at each "
        "end, krum averages the n - F best-scored (default 1; only for those rules)",
    )
    flag(
        "--proximal",
        type=proximal_weight,
        default=None,
        help="scaffold's proximal weight: how strongly each client's step is held near the "
        f"global model, in its standardised units (default {DEFAULT_PROXIMAL:g})",
    )
    flag(
        "--schema",
        type=Path,
        default=None,
        help="public bounds for every column, a CSV 'column,low,high' (never read off the "
        "data): a private client clips its rows to them; recorded in the genesis",
    )
    flag(
        "--max-epsilon",
        type=epsilon,
        default=None,
        help="admit only clients with differential privacy at this ε or less (needs "
        "--schema; default: any client, private or not)",
    )
    add_output_flags(parser)
    args = parser.parse_args(argv)
    args.given = given_flags(parser, argv)
    return args


def load_run_schema(args: argparse.Namespace, test_data: Dataset | None) -> Schema | str | None:
    """The --schema, checked against the --test columns; or what is wrong with it."""
    if args.max_epsilon is not None and args.schema is None:
        return "--max-epsilon needs --schema: a private client clips its rows to its bounds"
    if args.schema is None:
        return None
    try:
        # Resuming without --schema, it is the Schema the genesis records.
        schema = args.schema if isinstance(args.schema, Schema) else load_schema(args.schema)
        if test_data is not None:
            schema.ranges(test_data.feature_names, args.target)
    except DataError as error:
        return str(error)
    except OSError as error:
        return f"cannot read {args.schema}: {error.strerror}"
    return schema


def aggregation_parameters(args: argparse.Namespace) -> dict[str, float] | str:
    """The rule's parameters from the flags, or what is wrong with them."""
    rule = RULES[args.aggregation]
    if args.byzantine is not None and not rule.robust:
        return f"--byzantine is for a robust --aggregation ({', '.join(ROBUST_RULES)})"
    if args.proximal is not None and PROXIMAL not in rule.parameters:
        takers = " or ".join(name for name, r in RULES.items() if PROXIMAL in r.parameters)
        return f"--proximal is for --aggregation {takers}"
    flags = {
        BYZANTINE: 1 if args.byzantine is None else args.byzantine,
        PROXIMAL: DEFAULT_PROXIMAL if args.proximal is None else args.proximal,
    }
    parameters = {name: float(flags[name]) for name in rule.parameters}
    needed = rule.clients_needed(parameters)
    quorum = args.min_clients or args.clients
    if quorum < needed:
        # Refused now, not in a round that falls short: every round must be aggregable.
        return (
            f"--aggregation {args.aggregation} with --byzantine "
            f"{int(parameters[BYZANTINE])} needs at least {needed} clients a round, but "
            f"{'--min-clients' if args.min_clients else '--clients'} is {quorum}"
        )
    return parameters


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_output(quiet=args.quiet, verbose=args.verbose)
    if args.resume and args.chain is None and not args.show_key:  # before a key is made here
        print(
            "error: --resume needs --chain PATH, the chain of the run to go on with",
            file=sys.stderr,
        )
        return EXIT_USAGE
    recorded = settings_from_genesis(args)
    if isinstance(recorded, int):
        return recorded
    if args.target_unit is None:  # neither typed nor taken from the genesis
        args.target_unit = settings.TARGET_UNIT if args.target == settings.TARGET else ""
    if args.min_clients is not None and args.min_clients > args.clients:
        print(
            f"error: --min-clients {args.min_clients} is more than --clients {args.clients}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    parameters = aggregation_parameters(args)
    if isinstance(parameters, str):
        print(f"error: {parameters}", file=sys.stderr)
        return EXIT_USAGE
    try:
        key, created = load_or_create_key(args.key)
        authorized = load_authorized_keys(args.authorized_keys) if args.authorized_keys else None
    except (TrustError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.show_key:
        if created:
            warn(new_key_note(args.key))
        print(public_hex(key))  # alone on standard output, for scripts to take, even with -q
        return EXIT_OK
    try:
        test_data = load_dataset(args.test, target=args.target) if args.test else None
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if (
        recorded is not None
        and test_data is not None
        and "test" not in args.given
        and column_difference(recorded.features, test_data.feature_names)
    ):
        say(f"{args.test} has other columns than the chain's run: rounds go unscored (--test)")
        test_data = None
    schema = load_run_schema(args, test_data)
    if isinstance(schema, str):
        print(f"error: {schema}", file=sys.stderr)
        return EXIT_USAGE
    plan = RunPlan(
        n_clients=args.clients,
        min_clients=args.min_clients or args.clients,
        rounds=args.rounds,
        difficulty_bits=args.difficulty,
        seed=args.seed,
        server_key=public_hex(key),
        aggregation=args.aggregation,
        aggregation_parameters=parameters,
        features=None if test_data is None else test_data.feature_names,
        authorized_keys=authorized,
        schema=schema,
        max_epsilon=args.max_epsilon,
        target=TargetRecord(args.target, args.target_unit),
    )
    if args.chain is None:
        args.chain = new_run_chain_path()
    args.metrics = args.metrics or metrics_path_for(args.chain)
    rate = tries_per_second()
    mining_s = expected_mining_s(args.difficulty, rate)
    if mining_s > settings.CLIENT_TIMEOUT_S:
        print(
            f"error: --difficulty {args.difficulty} takes about {mining_s:.3g} s to mine a "
            f"block here ({rate:.3g} tries a second), more than the clients wait for the "
            f"server's next message (their --timeout-s, {settings.CLIENT_TIMEOUT_S:g} s by "
            "default)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    resumed = None
    if args.chain.exists():
        # Checked now, to fail before any client joins; a new run's file is made at genesis.
        if not args.resume:
            print(
                f"error: {args.chain} already exists; move it away, choose another --chain, "
                "or --resume to go on with its run",
                file=sys.stderr,
            )
            return EXIT_USAGE
        resumed = open_for_resuming(args, plan)
        if isinstance(resumed, int):
            return resumed
        # The flags matched; the genesis also fixes what they left open (columns, clients).
        plan = RunPlan.from_genesis(resumed.genesis)
        if test_data is not None:  # scored in the chain's column order
            test_data = test_data.in_order(resumed.genesis.feature_names)
    elif args.resume:
        say(f"no chain at {args.chain} yet: a new run starts")
    if not args.resume and args.metrics.exists():
        print(
            f"error: {args.metrics} already exists; move it away or choose another --metrics",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.metrics.parent != args.chain.parent and not args.metrics.parent.is_dir():
        # Found now, not at the first round, when the run would go on losing every figure.
        print(
            f"error: --metrics {args.metrics}: there is no folder {args.metrics.parent}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        made = make_folders(args.chain.parent)
    except OSError as error:
        print(f"error: cannot make a folder for {args.chain}: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return serve(
            args,
            key=key,
            created=created,
            plan=plan,
            resumed=resumed,
            test_data=test_data,
            mining_s=mining_s,
        )
    finally:
        if not args.chain.exists():
            # A run stopped before its genesis leaves no empty runs/DATE-TIME/ behind.
            remove_if_empty(made)
        elif args.quiet:
            # Whatever became of the run, a quiet operator still needs to find its chain.
            announce(f"chain: {args.chain}")


def serve(
    args: argparse.Namespace,
    *,
    key: Ed25519PrivateKey,
    created: bool,
    plan: RunPlan,
    resumed: Chain | None,
    test_data: Dataset | None,
    mining_s: float,
) -> int:
    """Listen, run the federation to its end and sum it up; the exit code."""
    try:
        listener = socket.create_server((args.host, args.port), backlog=16)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return EXIT_USAGE
    listener.settimeout(settings.SEND_TIMEOUT_S)  # accept() is only called once one is waiting
    with listener:
        host, port_number = listener.getsockname()[:2]
        announce(listening_line(host, port_number))  # first, even with -q: others read the port
        made = "made now in" if created else "from"
        say(f"server key {public_hex(key)} ({made} {args.key})")
        say(f"the chain goes to {args.chain}, the metrics to {args.metrics}")
        server = FederationServer(
            listener,
            args.chain,
            say,
            key=key,
            plan=plan,
            resumed=resumed,
            test_data=test_data,
        )
        server.detail = detail
        server.round_timeout_s = args.round_timeout_s
        server.join_timeout_s = args.join_timeout_s
        server.register_timeout_s = args.register_timeout_s
        server.rejoin_timeout_s = args.rejoin_timeout_s
        server.max_frame_bytes = args.max_frame_bytes
        server.mining_estimate_s = mining_s
        server.metrics = MetricsFile(args.metrics)
        try:
            server.run()
        except ChainUnavailable as error:
            warn(f"run stopped: {error}")
            return EXIT_RUN_FAILED
        except RunAborted as error:
            warn(f"run stopped: {error}")
            show_chain(args.chain, say, server_key=public_hex(key))
            return EXIT_RUN_FAILED
        except KeyboardInterrupt:
            if args.chain.exists():
                warn(
                    f"interrupted; {args.chain} holds every block finished so far "
                    f"({command_for('server')} --resume --chain {args.chain} goes on with it)"
                )
            else:
                warn("interrupted before the run began; no chain file was made")
            return EXIT_RUN_FAILED
        finally:
            server.metrics.close()
    say("run complete")
    complete = summarise_run(
        args.chain, args.metrics, test_data, args.target, say, server_key=public_hex(key)
    )
    return EXIT_OK if complete else EXIT_RUN_FAILED


def make_folders(folder: Path) -> list[Path]:
    """Make FOLDER and any parent missing; the folders made, innermost first."""
    missing = [folder, *folder.parents]
    made = [path for path in missing if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each of FOLDERS, innermost first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # something was put there since: it is not ours to remove
            return


def settings_from_genesis(args: argparse.Namespace) -> RunPlan | int | None:
    """Resuming, every run setting the flags leave unset taken from the genesis of --chain, so
    `--resume --chain PATH` alone goes on with the run it records; a flag given is compared
    with it now. The genesis's plan; the exit code if a flag given differs, having said which;
    None if not resuming or the chain cannot be read or verified (open_for_resuming then says
    why)."""
    if not (args.resume and args.chain is not None and args.chain.exists()):
        return None
    try:  # verified first: settings are never taken from a chain that does not verify
        recorded = RunPlan.from_genesis(verify_chain(load_chain(args.chain).blocks).genesis)
    except (OSError, ValueError, IndexError):  # ChainFileError and ChainError are ValueErrors
        return None
    parameters = recorded.aggregation_parameters
    genesis_settings = {
        "clients": recorded.n_clients,
        "min_clients": recorded.min_clients,
        "rounds": recorded.rounds,
        "difficulty": recorded.difficulty_bits,
        "seed": recorded.seed,
        "aggregation": recorded.aggregation,
        "byzantine": int(parameters[BYZANTINE]) if BYZANTINE in parameters else None,
        "proximal": parameters.get(PROXIMAL),
        "schema": recorded.schema,
        "max_epsilon": recorded.max_epsilon,
    }
    if recorded.target is not None:
        genesis_settings |= {"target": recorded.target.column, "target_unit": recorded.target.unit}
    # A flag given that differs is named now, before the flags are checked against each other:
    # else a value taken from the genesis would be blamed as if it had been typed.
    found = [
        f"{_FLAGS[name]} is {_said(name, getattr(args, name))}, but the chain's genesis records "
        f"{_said(name, value)}"
        for name, value in genesis_settings.items()
        if name in _FLAGS and name in args.given and getattr(args, name) != value
    ]
    if recorded.target is None and "target_unit" in args.given:
        found.append(
            "--target-unit is given, but the chain's genesis records no target (it is older "
            "than chain format 10)"
        )
    if found and "key" in args.given:  # named too, but no key is made to find out
        try:
            key = existing_key(args.key)
        except (TrustError, OSError):
            key = None
        if key is None or public_hex(key) != recorded.server_key:
            shown = f"{public_hex(key)[:16]}…" if key is not None else f"at {args.key} (none yet)"
            found.append(
                f"the server key {shown} (--key) is not the one the chain was made with, "
                f"{recorded.server_key[:16]}…"
            )
    if found:
        print(
            f"error: {args.chain} cannot be resumed: the flags differ from its run:\n  "
            + "\n  ".join(found),
            file=sys.stderr,
        )
        return EXIT_USAGE
    for name, value in genesis_settings.items():
        if name not in args.given:
            setattr(args, name, value)
    return recorded


# The run settings a genesis records, by the flag that sets them (the schema is compared later,
# by its bounds).
_FLAGS = {
    "clients": "--clients",
    "min_clients": "--min-clients",
    "rounds": "--rounds",
    "difficulty": "--difficulty",
    "seed": "--seed",
    "aggregation": "--aggregation",
    "byzantine": "--byzantine",
    "proximal": "--proximal",
    "max_epsilon": "--max-epsilon",
    "target": "--target",
    "target_unit": "--target-unit",
}


def _said(name: str, value: object) -> str:
    """A flag's value in a refusal: the target's names quoted, so an empty unit shows as ''."""
    return repr(value) if name in ("target", "target_unit") else str(value)


def open_for_resuming(args: argparse.Namespace, plan: RunPlan) -> Chain | int:
    """The chain of --chain, verified and open for appending, if PLAN (the flags') matches its
    genesis; else the exit code, having said why. A chain refused is left as it is."""

    def resumable(chain: Chain) -> None:  # checked before the file is touched
        if not chain.genesis.signed:
            raise _NotResumed("is a format-1 chain, which records too little to resume")
        if found := differences(plan, RunPlan.from_genesis(chain.genesis)):
            raise _NotResumed(
                "cannot be resumed: the flags differ from its run:\n  " + "\n  ".join(found)
            )
        if chain.closed:
            raise _NotResumed(f"holds a complete run ({len(chain.blocks)} blocks)", complete=True)

    try:
        chain, dropped = continue_chain(args.chain, accept=resumable)
    except _NotResumed as refusal:
        if refusal.complete:
            say(f"the run of {args.chain} is already complete; nothing to resume")
            verified = show_chain(args.chain, say, server_key=plan.server_key)
            return EXIT_OK if verified else EXIT_RUN_FAILED
        print(f"error: {args.chain} {refusal}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as error:  # ChainFileError and ChainError are ValueErrors
        print(f"error: cannot resume {args.chain}: {shown(error)}", file=sys.stderr)
        return EXIT_USAGE
    if dropped:
        warn(f"warning: {args.chain}: {dropped}; that block is made again")
    return chain


class _NotResumed(Exception):
    """A chain --resume will not go on with; COMPLETE if only because its run is over."""

    def __init__(self, reason: str, *, complete: bool = False) -> None:
        super().__init__(reason)
        self.complete = complete


def new_run_chain_path() -> Path:
    """A chain file of its own for a new run: runs/DATE-TIME/chain.jsonl (with -2, -3, … if
    two runs start in the same second)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder, n = settings.RUNS_DIR / stamp, 1
    while folder.exists():
        n += 1
        folder = settings.RUNS_DIR / f"{stamp}-{n}"
    return folder / settings.CHAIN_NAME


if __name__ == "__main__":
    raise SystemExit(main())
