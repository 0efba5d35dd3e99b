"""What a chain's models predict: the target its genesis records (chain formats 10 to 17), or the
one the reader names for an older chain, and a line saying what a prediction's unit is and, for
a logarithm, how to get back to the unit inside it."""

from fedchain import settings
from fedchain.ledger.block import Block


def chain_target(genesis: Block, named: str | None = None) -> tuple[str, str | None]:
    """The column GENESIS's run predicts and its unit ("" where the run did not state one; None
    where the chain records no target, and then NAMED, or the bundled target, is taken on the
    reader's word). ValueError if NAMED differs from the column the chain records."""
    recorded = genesis.run.target if genesis.targeted else None
    if recorded is None:
        return named or settings.TARGET, None
    if named is not None and named != recorded.column:
        raise ValueError(f"the chain's run predicts {recorded.column!r}; --target is {named!r}")
    return recorded.column, recorded.unit


def unit_line(value: str, unit: str | None) -> str | None:
    """A line saying what unit VALUE (a column of predictions, say) is in; None if the chain
    does not say. A unit 'ln(U)' is a logarithm: numpy.exp(VALUE) gives U."""
    if unit is None:
        return None
    if not unit:
        return f"{value}'s unit is not stated by the run (the server's --target-unit)"
    inside = exp_gives(unit)
    return f"{value} is in {unit}" + (f": numpy.exp({value}) gives {inside}" if inside else "")


def target_phrase(column: str, unit: str) -> str:
    """COLUMN and its recorded UNIT in a few words, for a run's settings."""
    if not unit:
        return f"{column} (its unit not stated)"
    inside = exp_gives(unit)
    back = f" (numpy.exp of a prediction gives {inside})" if inside else ""
    return f"{column}, in {unit}{back}"


def exp_gives(unit: str) -> str | None:
    """The unit numpy.exp takes a prediction in UNIT back to, if UNIT is a logarithm 'ln(U)'."""
    if unit.startswith("ln(") and unit.endswith(")") and len(unit) > len("ln()"):
        return unit[3:-1]
    return None
