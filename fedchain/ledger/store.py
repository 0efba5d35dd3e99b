"""Keep a chain on disk as JSON Lines: one block a line, appended and fsync'ed one block at a time.

JSON is only the storage format; what the hash covers is the binary encoding in block.py. Reading
is strict (exact keys, floats written as floats, no NaN), because a value that parses loosely could
hash the same as the value that was written while reading differently to a person.
"""

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedchain.checks import check_name, describe
from fedchain.files import create_whole, write_all
from fedchain.learning.linear_model import LinearModel
from fedchain.ledger.block import (
    CORRECTED,
    FORMAT_CORRECTED,
    FORMAT_SECTIONS,
    PRIVACY,
    RULES,
    SCALED,
    SIGNED,
    TARGET,
    Block,
    ClientUpdate,
    PrivacyStatement,
    PrivacyTerms,
    RunRecord,
    Section,
    TargetRecord,
    TrainingSettings,
)

# Format 1's keys; each section a format adds (block.py) adds its own, as _STORED says.
_BLOCK_KEYS = {
    "version",
    "index",
    "timestamp",
    "previous_hash",
    "difficulty",
    "feature_names",
    "aggregation",
    "cli",
    "client_model",
    "server_model",
    "nonce",
    "hash",
}
_UPDATE_KEYS = {"weights", "bias", "n_samples"}
_TRAINING_KEYS = {"seed", "generations", "population"}
_RUN_KEYS = {"rounds", "seed", "server_key", "participants", "min_clients"}
_TARGET_KEYS = {"column", "unit"}
_PRIVACY_KEYS = {"schema", "max_epsilon", "statements"}
_STATEMENT_KEYS = {"mechanism", "epsilon", "delta", "signature"}


class ChainFileError(ValueError):
    """A chain file that cannot be read, naming the line (block) and what is wrong."""


@dataclass(frozen=True)
class LoadedChain:
    blocks: list[Block]
    dropped_tail: str | None  # what was cut off a torn last line, or None if the file was whole
    whole_bytes: int  # where the last whole block's line ends: a writer continues from here


def block_to_json(block: Block) -> str:
    """One line of JSON (no newline) holding every field of BLOCK."""
    sections = block.sections
    record = {
        "version": block.version,
        "index": block.index,
        "timestamp": block.timestamp,
        "previous_hash": block.previous_hash,
        "difficulty": block.difficulty,
        "feature_names": list(block.feature_names),
        "aggregation": block.aggregation,
        "cli": list(block.cli),
        "client_model": {
            name: _update_to_record(block.client_model[name], sections) for name in block.cli
        },
        "server_model": _model_to_record(block.server_model),
        "nonce": block.nonce,
        "hash": block.hash,
    }
    for section in sections:
        _STORED[section].write(block, record)
    # repr-style floats round-trip exactly; allow_nan=False is a second guard behind LinearModel.
    return json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def block_from_json(line: str) -> Block:
    """Parse one line written by block_to_json; raise ValueError or TypeError naming the fault."""
    try:
        record = json.loads(
            line, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_nan
        )
    except RecursionError:
        raise ValueError("nested too deeply to be a block") from None
    if not isinstance(record, dict):
        raise TypeError("a block must be a JSON object")
    # A version this program does not know is read as format 1, and verification refuses it.
    sections = FORMAT_SECTIONS.get(record.get("version"), ())
    _expect_keys("block", record, _BLOCK_KEYS.union(*(_STORED[s].keys for s in sections)))
    client_model = {
        name: _update_from_record(f"client_model[{name!r}]", entry, sections)
        for name, entry in _typed("client_model", record["client_model"], dict).items()
    }
    server = _typed("server_model", record["server_model"], dict)
    _expect_keys("server_model", server, {"weights", "bias"})
    extra = {}
    for section in sections:
        extra |= _STORED[section].read(record, sections)
    return Block(
        version=record["version"],
        index=record["index"],
        timestamp=_typed("timestamp", record["timestamp"], float),
        previous_hash=record["previous_hash"],
        difficulty=record["difficulty"],
        feature_names=tuple(_typed("feature_names", record["feature_names"], list)),
        aggregation=record["aggregation"],
        cli=tuple(_typed("cli", record["cli"], list)),
        client_model=client_model,
        server_model=_model_from_record("server_model", server),
        nonce=record["nonce"],
        hash=_typed("hash", record["hash"], str),
        **extra,
    )


def updates_to_json(updates: Mapping[str, ClientUpdate]) -> str:
    """A scaffold round's signed updates, in order, as one line of JSON: what a probe shows the
    clients, so each can work out the candidate it is asked about."""
    sections = FORMAT_SECTIONS[FORMAT_CORRECTED]
    record = {name: _update_to_record(update, sections) for name, update in updates.items()}
    return json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def updates_from_json(text: str) -> dict[str, ClientUpdate]:
    """Parse what updates_to_json wrote, in its order; ValueError or TypeError naming the fault."""
    try:
        record = json.loads(
            text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_nan
        )
    except RecursionError:
        raise ValueError("nested too deeply to be a round's updates") from None
    return {
        check_name(name, "a client's name"): _update_from_record(
            f"updates[{name!r}]", entry, FORMAT_SECTIONS[FORMAT_CORRECTED]
        )
        for name, entry in _typed("updates", record, dict).items()
    }


def _update_to_record(update: ClientUpdate, sections: tuple[Section, ...]) -> dict:
    record = {**_model_to_record(update.model), "n_samples": update.n_samples}
    for section in sections:
        _STORED[section].write_update(update, record)
    return record


def _update_from_record(where: str, entry: object, sections: tuple[Section, ...]) -> ClientUpdate:
    _expect_keys(where, entry, _UPDATE_KEYS.union(*(_STORED[s].update_keys for s in sections)))
    model = _model_from_record(where, entry)
    extra = {}
    for section in sections:
        extra |= _STORED[section].read_update(where, entry)
    return ClientUpdate(model, entry["n_samples"], **extra)


def _float_lists(where: str, record: object) -> dict[str, tuple]:
    return {
        name: tuple(_typed(f"{where}[{name!r}]", values, list))
        for name, values in _typed(where, record, dict).items()
    }


def _write_signed(block: Block, record: dict) -> None:
    run = block.run
    record["run"] = (
        None
        if run is None
        else {
            "rounds": run.rounds,
            "seed": run.seed,
            "server_key": run.server_key,
            "participants": dict(sorted(run.participants.items())),
            "min_clients": run.min_clients,
        }
    )
    record["attestations"] = dict(sorted(block.attestations.items()))
    record["missing"] = dict(sorted(block.missing.items()))
    record["server_signature"] = block.server_signature


def _read_signed(record: dict, sections: tuple[Section, ...]) -> dict:
    run = record["run"]
    return {
        "run": None if run is None else _run_from_record(run, sections),
        "attestations": _typed("attestations", record["attestations"], dict),
        "missing": _typed("missing", record["missing"], dict),
        "server_signature": _typed("server_signature", record["server_signature"], str),
    }


def _write_training(update: ClientUpdate, record: dict) -> None:
    if update.signed:
        training = update.training
        record["training"] = {
            "seed": training.seed,
            "generations": training.generations,
            "population": training.population,
        }
        record["signature"] = update.signature


def _read_training(where: str, entry: dict) -> dict:
    training = entry["training"]
    _expect_keys(f"{where}.training", training, _TRAINING_KEYS)
    return {
        "training": TrainingSettings(**training),
        "signature": _typed(f"{where}.signature", entry["signature"], str),
    }


def _write_privacy(block: Block, record: dict) -> None:
    # Stored inside the genesis's run, and read with it (_run_from_record).
    if block.run is not None:
        record["run"]["privacy"] = _privacy_to_record(block.run.privacy)


def _write_target(block: Block, record: dict) -> None:
    # Stored inside the genesis's run, and read with it (_run_from_record).
    if block.run is not None:
        target = block.run.target
        record["run"]["target"] = {"column": target.column, "unit": target.unit}


def _write_rules(block: Block, record: dict) -> None:
    record["parameters"] = dict(sorted(block.parameters.items()))
    record["choice"] = {name: list(values) for name, values in sorted(block.choice.items())}


def _read_rules(record: dict, _: tuple[Section, ...]) -> dict:
    return {
        "parameters": _typed("parameters", record["parameters"], dict),
        "choice": _float_lists("choice", record["choice"]),
    }


def _write_search(block: Block, record: dict) -> None:
    record["search"] = {name: list(values) for name, values in sorted(block.search.items())}


def _read_search(record: dict, _: tuple[Section, ...]) -> dict:
    return {"search": _float_lists("search", record["search"])}


def _write_gradients(update: ClientUpdate, record: dict) -> None:
    record["gradient"] = list(update.gradient)
    record["probe_gradient"] = list(update.probe_gradient)
    record["probe_signature"] = update.probe_signature


def _read_gradients(where: str, entry: dict) -> dict:
    return {
        "gradient": tuple(_typed(f"{where}.gradient", entry["gradient"], list)),
        "probe_gradient": tuple(_typed(f"{where}.probe_gradient", entry["probe_gradient"], list)),
        "probe_signature": _typed(f"{where}.probe_signature", entry["probe_signature"], str),
    }


def _write_scale(block: Block, record: dict) -> None:
    record["scale"] = list(block.scale)


def _read_scale(record: dict, _: tuple[Section, ...]) -> dict:
    return {"scale": tuple(_typed("scale", record["scale"], list))}


def _nothing_written(_: object, __: dict) -> None:
    pass


def _nothing_read(_: object, __: object) -> dict:
    return {}


@dataclass(frozen=True)
class _Stored:
    """How a block section (block.py) is kept in JSON: the keys it adds to a block and to each
    client's update, how they are written (after format 1's, in the order of the format's
    sections) and how they are read back (as the Block's or ClientUpdate's arguments)."""

    keys: frozenset[str] = frozenset()
    update_keys: frozenset[str] = frozenset()
    write: Callable[[Block, dict], None] = _nothing_written
    write_update: Callable[[ClientUpdate, dict], None] = _nothing_written
    read: Callable[[dict, tuple[Section, ...]], dict] = _nothing_read
    read_update: Callable[[str, dict], dict] = _nothing_read


_STORED = {
    SIGNED: _Stored(
        frozenset({"run", "attestations", "missing", "server_signature"}),
        frozenset({"training", "signature"}),
        _write_signed,
        _write_training,
        _read_signed,
        _read_training,
    ),
    PRIVACY: _Stored(write=_write_privacy),
    TARGET: _Stored(write=_write_target),
    RULES: _Stored(frozenset({"parameters", "choice"}), write=_write_rules, read=_read_rules),
    CORRECTED: _Stored(
        frozenset({"search"}),
        frozenset({"gradient", "probe_gradient", "probe_signature"}),
        _write_search,
        _write_gradients,
        _read_search,
        _read_gradients,
    ),
    SCALED: _Stored(frozenset({"scale"}), write=_write_scale, read=_read_scale),
}


def _run_from_record(record: object, sections: tuple[Section, ...]) -> RunRecord:
    private, targeted = PRIVACY in sections, TARGET in sections
    keys = _RUN_KEYS | ({"privacy"} if private else set()) | ({"target"} if targeted else set())
    _expect_keys("run", record, keys)
    return RunRecord(
        rounds=record["rounds"],
        seed=record["seed"],
        server_key=_typed("run.server_key", record["server_key"], str),
        participants=_typed("run.participants", record["participants"], dict),
        min_clients=record["min_clients"],
        privacy=_privacy_from_record(record["privacy"]) if private else None,
        target=_target_from_record(record["target"]) if targeted else None,
    )


def _target_from_record(record: object) -> TargetRecord:
    _expect_keys("run.target", record, _TARGET_KEYS)
    return TargetRecord(
        column=_typed("run.target.column", record["column"], str),
        unit=_typed("run.target.unit", record["unit"], str),
    )


def _privacy_to_record(privacy: PrivacyTerms) -> dict:
    return {
        "schema": privacy.schema,
        "max_epsilon": privacy.max_epsilon,
        "statements": {
            name: {
                "mechanism": s.mechanism,
                "epsilon": s.epsilon,
                "delta": s.delta,
                "signature": s.signature,
            }
            for name, s in sorted(privacy.statements.items())
        },
    }


def _privacy_from_record(record: object) -> PrivacyTerms:
    _expect_keys("run.privacy", record, _PRIVACY_KEYS)
    limit = record["max_epsilon"]
    statements = {}
    for name, entry in _typed("run.privacy.statements", record["statements"], dict).items():
        where = f"run.privacy.statements[{name!r}]"
        _expect_keys(where, entry, _STATEMENT_KEYS)
        statements[name] = PrivacyStatement(
            mechanism=_typed(f"{where}.mechanism", entry["mechanism"], str),
            epsilon=_typed(f"{where}.epsilon", entry["epsilon"], float),
            delta=_typed(f"{where}.delta", entry["delta"], float),
            signature=_typed(f"{where}.signature", entry["signature"], str),
        )
    return PrivacyTerms(
        schema=_typed("run.privacy.schema", record["schema"], str),
        max_epsilon=None if limit is None else _typed("run.privacy.max_epsilon", limit, float),
        statements=statements,
    )


class ChainWriter:
    """Appends blocks to a new chain file, each one on disk before append() returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a run never writes over a chain that is already there
            raise FileExistsError(_exists(self.path))
        self._fd = -1  # the file is made with its first block

    @classmethod
    def continuing(cls, path: str | Path, whole_bytes: int) -> "ChainWriter":
        """A writer that appends to the chain file PATH after its first WHOLE_BYTES, which
        load_chain found to be whole blocks: a torn last line past them is cut off first."""
        writer = cls.__new__(cls)
        writer.path = Path(path)
        writer._fd = os.open(writer.path, os.O_RDWR)
        try:
            os.ftruncate(writer._fd, whole_bytes)
            os.lseek(writer._fd, 0, os.SEEK_END)
            if whole_bytes and os.pread(writer._fd, 1, whole_bytes - 1) != b"\n":
                write_all(writer._fd, b"\n")  # a whole last block written without its newline
            os.fsync(writer._fd)
        except BaseException:
            writer.close()
            raise
        return writer

    def append(self, block: Block) -> None:
        # One line per block, then fsync: after a crash the file holds whole blocks and at
        # most one torn last line, which load_chain recognises and drops.
        line = (block_to_json(block) + "\n").encode("utf-8")
        if self._fd < 0:
            # The file appears whole, holding its first block, or not at all, so a crash never
            # leaves an empty or half-made chain file to be refused as already there.
            try:
                self._fd = create_whole(self.path, line, mode=0o644)
            except FileExistsError:
                raise FileExistsError(_exists(self.path)) from None
            return
        write_all(self._fd, line)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ChainWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _exists(path: Path) -> str:
    return f"{path} already exists; move it away or choose another file"


def load_chain(path: str | Path) -> LoadedChain:
    """Read every block of PATH; a torn last line is dropped and reported, other damage raised."""
    reader = ChainReader(path)
    blocks = list(reader)
    return LoadedChain(blocks, reader.dropped_tail, reader.whole_bytes)


class ChainReader:
    """The blocks of a chain file, one line at a time, so that a long chain is checked in
    constant memory. Once they are all read, DROPPED_TAIL and WHOLE_BYTES say what was cut off a
    torn last line (None if nothing was) and where the last whole block's line ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.dropped_tail: str | None = None
        self.whole_bytes = 0

    def __iter__(self) -> Iterator[Block]:
        self.dropped_tail, self.whole_bytes = None, 0
        # OSError (a missing file, say) is the caller's to report.
        with self.path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                if raw.endswith(b"\n"):
                    block = _parse_line(self.path, number, raw[:-1])
                elif _looks_torn(raw):
                    # A crash mid-append leaves a prefix of the last line and no newline after it.
                    self.dropped_tail = (
                        f"line {number}: {len(raw)} bytes of an unfinished block dropped"
                    )
                    return
                else:  # a last line without its newline, whole or damaged: either is said
                    block = _parse_line(self.path, number, raw)
                self.whole_bytes += len(raw)
                yield block


def _looks_torn(tail: bytes) -> bool:
    """True if TAIL is the start of a block line cut short, not a whole line or other bytes."""
    opening = b'{"version":'
    if not (tail.startswith(opening) or opening.startswith(tail)):
        return False
    try:
        text = tail.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason != "unexpected end of data":
            return False  # bad bytes in the middle, not a cut
        text = tail[: error.start].decode("utf-8")  # the cut split a character: drop its start
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        # Cut short, JSON fails for want of what should follow: at the very end, or in a
        # string left open. Anywhere else, the line was damaged, not cut.
        return error.msg.startswith("Unterminated string") or error.pos >= len(text) - 3
    except (ValueError, RecursionError):
        return False
    return False


def _parse_line(path: Path, number: int, raw: bytes) -> Block:
    try:
        return block_from_json(raw.decode("utf-8"))
    except RecursionError:
        raise ChainFileError(
            f"{path}: line {number} (block {number - 1}): nested too deeply"
        ) from None
    except (ValueError, TypeError) as error:
        raise ChainFileError(f"{path}: line {number} (block {number - 1}): {error}") from None


def _model_to_record(model: LinearModel) -> dict:
    return {"weights": [float(w) for w in model.weights], "bias": model.bias}


def _model_from_record(where: str, record: dict) -> LinearModel:
    weights = _typed(f"{where}.weights", record["weights"], list)
    for w in weights:
        _typed(f"{where}.weights", w, float)
    return LinearModel(weights, _typed(f"{where}.bias", record["bias"], float))


def _typed(where: str, value: object, kind: type) -> object:
    if type(value) is not kind:
        raise TypeError(f"{where} must be a JSON {kind.__name__}, not {describe(value)}")
    return value


def _expect_keys(where: str, record: object, keys: set[str]) -> None:
    if not isinstance(record, dict):
        raise TypeError(f"{where} must be a JSON object")
    if missing := keys - record.keys():
        raise ValueError(f"{where} lacks {', '.join(sorted(missing))}")
    if extra := record.keys() - keys:
        # Whoever wrote the file chose these names: show a few, short and escaped.
        shown = ", ".join(describe(name) for name in sorted(extra)[:5])
        raise ValueError(f"{where} has unknown field(s) {shown}")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("a JSON object repeats a key")
    return record


def _refuse_nan(constant: str) -> float:
    raise ValueError(f"{constant} is not a finite number")
