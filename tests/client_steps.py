"""The fake server's scripts (tests/fake_server.py) played to a FederatedClient in this process,
through its step(): no socket, no thread, no process. Every message goes through the wire's
encoding both ways, so the client sees what it would have decoded, and every reply is checked
and kept as the bytes it would have sent."""

import contextlib

from chain_helpers import SERVER_KEY
from fake_server import Session

from fedchain.federation.client import ClientFailed, FederatedClient
from fedchain.trust.keys import public_hex
from fedchain.wire.frames import HEADER, ConnectionClosed, decode_payload, encode_message


class Refused(ConnectionClosed):
    """The client refused a message: it would hang up, so the script's connection ends."""


def wire(message: dict) -> tuple[bytes, dict]:
    """MESSAGE as a frame, and as the peer decodes that frame."""
    frame = encode_message(message)
    return frame, decode_payload(frame[HEADER.size :])


class StepSession(Session):
    """A script's session whose messages go straight to CLIENT.step()."""

    def __init__(self, client: FederatedClient, key, sent: bytearray) -> None:
        self.client, self.sent = client, sent
        self.replies: list[dict] = []
        self.failure: ClientFailed | None = None
        super().__init__(None, self._reply(client.step(wire(CHALLENGE)[1])), key)

    def _reply(self, reply: dict) -> dict:
        frame, decoded = wire(reply)
        self.sent += frame
        return decoded

    def send(self, message: dict) -> None:
        try:
            reply = self.client.step(wire(message)[1])
        except ClientFailed as error:
            self.failure = error
            raise Refused(str(error)) from None
        if reply is not None:
            self.replies.append(self._reply(reply))

    def receive(self) -> dict:
        assert self.replies, "the client has nothing to say: it would wait for the server"
        return self.replies.pop(0)


CHALLENGE = {"type": "challenge", "challenge": bytes(32)}
# What ends a fake server's connection without failing its script, as in FakeServer.
ENDS = (ConnectionClosed, ConnectionResetError)


def play(client: FederatedClient, script, *, key=SERVER_KEY, sent=None) -> ClientFailed | None:
    """Play SCRIPT(session) (or SCRIPTS in turn, one a connection, if given a list) to CLIENT,
    whose replies go, framed, to SENT if given; return the failure the client refused with, if
    it did. A script that ends its connection (crash()) has the client connect again, as a
    client that lost its server does. The client is closed at the end."""
    sent = bytearray() if sent is None else sent
    try:
        for one in script if isinstance(script, list) else [script]:
            client.connect(public_hex(key))
            session = StepSession(client, key, sent)
            with contextlib.suppress(*ENDS):
                one(session)
            if session.failure is not None:
                return session.failure
        return None
    finally:
        client.close()  # as take_part() does: the replica's file is then whole for the test
