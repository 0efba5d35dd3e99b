"""What a transport tells the server's protocol (events) and what the protocol asks of it
(actions). A connection is a number the transport chooses; the protocol never sees a socket.

A transport that only does request and reply drives the same protocol: each message a client
sends is one Spoke, and the Sends addressed to that client are its reply."""

from dataclasses import dataclass

from fedchain.federation.round_report import RoundReport
from fedchain.ledger.block import Block

# --- events: the transport to the protocol ---------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """A newcomer past the TLS handshake has sent its first messages (the registration, which
    signs CHALLENGE, the challenge this connection was sent)."""

    conn: int
    address: str  # host:port, for the log
    challenge: bytes
    messages: tuple[dict, ...]


@dataclass(frozen=True)
class Spoke:
    """A registered client's connection had bytes to read: the whole messages among them (none
    if they were only part of one)."""

    conn: int
    messages: tuple[dict, ...]


@dataclass(frozen=True)
class BadFrame:
    """A registered client sent bytes that are not a frame of the protocol."""

    conn: int
    error: str


@dataclass(frozen=True)
class Closed:
    """A registered client closed its connection."""

    conn: int


@dataclass(frozen=True)
class SendFailed:
    """A message could not be delivered to a registered client."""

    conn: int
    error: str


Event = Registration | Spoke | BadFrame | Closed | SendFailed


# --- actions: the protocol to the transport --------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send MESSAGE to each connection of TO, in order (one that cannot take it is a SendFailed)."""

    to: tuple[int, ...]
    message: dict


@dataclass(frozen=True)
class Disconnect:
    """Close CONN, first sending it a refusal with REFUSAL as its reason, if one is given."""

    conn: int
    refusal: str | None = None


@dataclass(frozen=True)
class TurnAwayNewcomers:
    """Refuse every connection that has not registered yet, for REASON."""

    reason: str


@dataclass(frozen=True)
class Say:
    """A line for the log."""

    text: str


@dataclass(frozen=True)
class Detail:
    """A line only a person asking for details (-v) sees."""

    text: str


@dataclass(frozen=True)
class Write:
    """Write BLOCK, which the protocol has verified, to the chain file (block 0 makes the file)."""

    block: Block


@dataclass(frozen=True)
class Report:
    """A round is written and announced: say how it went and record its figures."""

    round: RoundReport


@dataclass(frozen=True)
class Abort:
    """The run cannot go on, for REASON: tell every client and stop."""

    reason: str


Action = Send | Disconnect | TurnAwayNewcomers | Say | Detail | Write | Report | Abort
