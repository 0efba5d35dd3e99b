"""A Flower run's settings: Flower's run config (pyproject.toml's [tool.flwr.app.config],
overridden by `flwr run --run-config`) read into the plan the socket server makes from its flags,
each value checked and a bad one named by its key. Flower's config holds no None, so a key left
at its "not given" value (-1, or "") means what leaving the flag out means to server.py."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedchain import settings
from fedchain.checks import check_name
from fedchain.learning.aggregation import BYZANTINE, PROXIMAL, RULES
from fedchain.learning.dataset import DataError
from fedchain.learning.scaffold import DEFAULT_PROXIMAL
from fedchain.ledger.block import MAX_DIFFICULTY_BITS, TargetRecord

NOT_GIVEN = -1
BUNDLED_TEST = settings.bundled_data("test.csv")
BUNDLED_TARGET = TargetRecord(settings.TARGET, settings.TARGET_UNIT)


def bundled_rows(name: str) -> Path:
    """The bundled data file NAME, or a DataError that says how to do without it: Flower runs
    the app from a copy of the package that holds no CSV files, so they come from the installed
    package, or the run names its own."""
    path = settings.bundled_data(name)
    if not path.is_file():
        raise DataError(
            f"the bundled {name} is not beside this copy of the package ({path}): install the "
            "package (pip install .[flower]) or name the rows in the run config "
            "(--run-config \"data='FOLDER' test='FILE'\")"
        )
    return path


class ConfigError(ValueError):
    """A run config value that cannot be used; the message names its key."""


@dataclass(frozen=True)
class FlowerRun:
    """What the ServerApp and every ClientApp of one run take from its config."""

    rounds: int = settings.ROUNDS
    seed: int = settings.RUN_SEED
    difficulty: int = settings.DIFFICULTY_BITS
    clients: int = settings.CLIENTS
    min_clients: int = settings.CLIENTS
    aggregation: str = "fedavg"
    parameters: Mapping[str, float] = field(default_factory=dict)  # the rule's
    chain: Path | None = None  # None: a new runs/DATE-TIME/chain.jsonl
    key: Path = settings.SERVER_KEY_PATH
    test: Path | None = BUNDLED_TEST
    data: Path | None = None  # a folder of client1.csv … clientN.csv; None: the bundled rows
    replicas: Path = settings.REPLICA_DIR
    keys: Path = settings.KEY_DIR
    authorized_keys: Path | None = None  # a file of NAME KEY lines: who may join; None: anyone
    target: TargetRecord = BUNDLED_TARGET
    generations: int = settings.GENERATIONS
    population: int = settings.POPULATION
    round_timeout_s: float = settings.ROUND_TIMEOUT_S
    join_timeout_s: float = settings.JOIN_TIMEOUT_S

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> "FlowerRun":
        """The run CONFIG describes. Raises ConfigError naming the key at fault."""
        read = _Reader(config)
        clients = read.integer("clients", settings.CLIENTS, low=1)
        min_clients = read.integer("min-clients", NOT_GIVEN, low=1)
        if min_clients != NOT_GIVEN and min_clients > clients:
            raise ConfigError(f"min-clients {min_clients} is more than clients {clients}")
        quorum = clients if min_clients == NOT_GIVEN else min_clients
        aggregation = read.text("aggregation", "fedavg")
        if aggregation not in RULES:
            raise ConfigError(
                f"aggregation {aggregation!r} is not one of {', '.join(sorted(RULES))}"
            )
        target = read.text("target", settings.TARGET)
        default_unit = settings.TARGET_UNIT if target == settings.TARGET else ""
        try:
            check_name(target, "target")
            # "" is server.py's default: the bundled unit for the bundled target, else none.
            target_record = TargetRecord(target, read.text("target-unit", "") or default_unit)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return cls(
            rounds=read.integer("rounds", settings.ROUNDS, low=1, high=settings.MAX_ROUNDS),
            seed=read.integer("seed", settings.RUN_SEED, low=0),
            difficulty=read.integer(
                "difficulty", settings.DIFFICULTY_BITS, low=0, high=MAX_DIFFICULTY_BITS
            ),
            clients=clients,
            min_clients=quorum,
            aggregation=aggregation,
            parameters=_rule_parameters(read, aggregation, quorum),
            chain=read.path("chain"),
            key=read.path("key") or settings.SERVER_KEY_PATH,
            test=_test_file(read),
            data=read.path("data"),
            replicas=read.path("replicas") or settings.REPLICA_DIR,
            keys=read.path("keys") or settings.KEY_DIR,
            authorized_keys=read.path("authorized-keys"),
            target=target_record,
            generations=read.integer("generations", settings.GENERATIONS, low=1),
            population=read.integer("population", settings.POPULATION, low=2),
            round_timeout_s=read.seconds("round-timeout-s", settings.ROUND_TIMEOUT_S),
            join_timeout_s=read.seconds("join-timeout-s", settings.JOIN_TIMEOUT_S),
        )


def _rule_parameters(read: "_Reader", aggregation: str, quorum: int) -> dict[str, float]:
    rule = RULES[aggregation]
    byzantine = read.integer("byzantine", NOT_GIVEN, low=0)
    proximal = read.number("proximal", float(NOT_GIVEN))
    if byzantine != NOT_GIVEN and not rule.robust:
        raise ConfigError(f"byzantine is for a robust aggregation, not {aggregation}")
    if proximal != NOT_GIVEN and PROXIMAL not in rule.parameters:
        raise ConfigError(f"proximal is for aggregation scaffold, not {aggregation}")
    if proximal != NOT_GIVEN and proximal < 0:
        raise ConfigError(f"proximal must be at least 0, not {proximal:g}")
    given = {
        BYZANTINE: 1 if byzantine == NOT_GIVEN else byzantine,
        PROXIMAL: DEFAULT_PROXIMAL if proximal == NOT_GIVEN else proximal,
    }
    parameters = {name: float(given[name]) for name in rule.parameters}
    needed = rule.clients_needed(parameters)
    if quorum < needed:
        raise ConfigError(
            f"aggregation {aggregation} needs at least {needed} clients a round, but the "
            f"quorum (min-clients, or clients) is {quorum}"
        )
    return parameters


def _test_file(read: "_Reader") -> Path | None:
    # "" is the bundled test.csv, as server.py's default; "none" scores no round.
    text = read.text("test", "")
    if text == "none":
        return None
    return Path(text) if text else BUNDLED_TEST


class _Reader:
    """Typed reads of a run config, each refusal naming its key."""

    def __init__(self, config: Mapping[str, object]) -> None:
        self.config = config

    def _value(self, key: str, default: object) -> object:
        return self.config.get(key, default)

    def integer(self, key: str, default: int, *, low: int, high: int = 2**63 - 1) -> int:
        value = self._value(key, default)
        if type(value) is not int:
            raise ConfigError(f"{key} must be a whole number, not {value!r}")
        # NOT_GIVEN stands for a left-out flag only where it is the key's default.
        if not (value == NOT_GIVEN == default) and not low <= value <= high:
            raise ConfigError(f"{key} must be {low} to {high}, not {value}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._value(key, default)
        if type(value) not in (int, float):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        return float(value)

    def seconds(self, key: str, default: float) -> float:
        value = self.number(key, default)
        if not 0 < value <= 86_400:
            raise ConfigError(f"{key} must be more than 0 and at most a day, not {value:g}")
        return value

    def text(self, key: str, default: str) -> str:
        value = self._value(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be text, not {value!r}")
        return value

    def path(self, key: str) -> Path | None:
        text = self.text(key, "")
        return Path(text) if text else None
