"""The rules every edge applies to names, whole numbers and magnitudes, and safe descriptions of a
value for an error message. The block, the wire, the data loader and the command lines all call
these, so a name the loader accepts is one the protocol and the chain accept too.
"""

MAX_NAME_CHARS = 64  # client, feature and rule names: short enough to read in a terminal
MAX_FEATURES = 10_000
MAX_INT = 2**63 - 1  # the largest count, seed or round a message or flag may carry
MAX_U64 = 2**64 - 1  # the widest integer a block encodes
MAX_MAGNITUDE = 1e100  # weights and biases beyond this are refused: their squares must stay finite


def check_name(value: object, what: str = "a name") -> str:
    """Return VALUE if it is a usable name: 1..64 printable characters, no spaces around it."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if not 0 < len(value) <= MAX_NAME_CHARS:
        raise ValueError(f"{what} must be 1..{MAX_NAME_CHARS} characters, not {describe(value)}")
    # Names reach terminals and the chain: printable keeps them readable and rules out the
    # unencodable surrogates; no outer spaces keeps 'cli1' and 'cli1 ' from being two clients.
    if not value.isprintable() or value != value.strip():
        raise ValueError(f"{what} {describe(value)} must be printable, with no spaces around it")
    return value


def check_names(values: object, what: str = "names", *, max_count: int = MAX_FEATURES) -> tuple:
    """Return VALUES (a list or tuple) as a tuple if every entry is a name and none repeats."""
    if not isinstance(values, list | tuple):
        raise TypeError(f"{what} must be a list of names, not {type(values).__name__}")
    if len(values) > max_count:
        raise ValueError(f"{what} must hold at most {max_count} names, not {len(values)}")
    for value in values:
        check_name(value, f"an entry of {what}")
    if len(set(values)) != len(values):
        repeated = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"{what} has a repeated name, {describe(repeated[0])}")
    return tuple(values)


def check_int(value: object, low: int, high: int, what: str = "a number") -> int:
    """Return VALUE if it is an int (not a bool) in LOW..HIGH."""
    if high >= MAX_INT and low in (0, 1):
        expected = "a positive integer" if low else "a non-negative integer"
    else:
        expected = f"an integer in {low}..{high}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be {expected}, not {describe(value)}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be {expected}, not {describe(value)}")
    return value


def check_magnitude(value: object, what: str = "a number") -> float:
    """Return VALUE if it is a real number no larger than MAX_MAGNITUDE in size."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    # Comparing, not converting: an int too large for a float is refused, not an OverflowError.
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
        raise ValueError(f"{what} must be finite and at most {MAX_MAGNITUDE:g} in size")
    return value


def describe(value: object) -> str:
    """A short, safe description of a value someone else sent, for an error message."""
    # Never repr() what a peer built: it may be huge, deeply nested, or slow to print.
    if isinstance(value, str):
        return printable(repr(value[:40]) + ("…" if len(value) > 40 else ""))
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    return f"a {type(value).__name__}"


def printable(text: str, limit: int = 300) -> str:
    """TEXT made safe to print and send on: control characters escaped, length capped."""
    # Others choose what goes into error messages; none of it may move a terminal's cursor.
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("…" if len(text) > limit else "")
