"""What trust costs, measured on this machine: `python -m fedchain.trust.cost` prints the figures.

A figure, not a test: speed goals live in benchmarks, never in timed tests.
"""

import multiprocessing
import socket
import statistics
import time
from multiprocessing.connection import Connection

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.trust.handshake import login_message, new_challenge, verify_login
from fedchain.trust.keys import public_hex, sign
from fedchain.trust.tls import client_context, peer_public_hex, server_context

TIMEOUT_S = 10.0


def handshake_cost_ms(n_handshakes: int = 200) -> float:
    """The median time of one loopback TCP connect, TLS 1.3 handshake and one byte each way."""
    # The server runs in its own process, as it does in a run: two threads of one process
    # would wait on each other's turn at the GIL and double the figure.
    spawn = multiprocessing.get_context("spawn")
    ports, theirs = spawn.Pipe()
    server = spawn.Process(target=_serve, args=(theirs, n_handshakes), daemon=True)
    server.start()
    try:
        if not ports.poll(TIMEOUT_S * 3):
            raise TimeoutError("the benchmark's TLS server did not start")
        address = ("127.0.0.1", ports.recv())
        client, times_s = client_context(), []
        for _ in range(n_handshakes):
            start = time.perf_counter()
            raw = socket.create_connection(address, timeout=TIMEOUT_S)
            with client.wrap_socket(raw) as tls:
                peer_public_hex(tls)  # the pin check is part of every connection
                # The byte back means the server has finished its side of the handshake too.
                tls.sendall(b"x")
                tls.recv(1)
            times_s.append(time.perf_counter() - start)
    finally:
        server.join(TIMEOUT_S)
        if server.is_alive():
            server.kill()
    return statistics.median(times_s) * 1000


def _serve(ports: Connection, n_handshakes: int) -> None:
    context = server_context(Ed25519PrivateKey.generate())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT_S)
        ports.send(listener.getsockname()[1])
        for _ in range(n_handshakes):
            connection, _ = listener.accept()
            connection.settimeout(TIMEOUT_S)
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.sendall(tls.recv(1))


def login_cost_ms(n_logins: int = 1000) -> float:
    """The median time for a client to sign a login and the server to verify it."""
    client, server = Ed25519PrivateKey.generate(), public_hex(Ed25519PrivateKey.generate())
    client_hex, times_s = public_hex(client), []
    for _ in range(n_logins):
        start = time.perf_counter()
        challenge = new_challenge()
        signature = sign(client, login_message(server, challenge, "cli1"))
        assert verify_login(client_hex, signature, server, challenge, "cli1")
        times_s.append(time.perf_counter() - start)
    return statistics.median(times_s) * 1000


def server_context_cost_ms(n_contexts: int = 20) -> float:
    """The median time to build the server's TLS context (certificate and temporary files)."""
    key, times_s = Ed25519PrivateKey.generate(), []
    for _ in range(n_contexts):
        start = time.perf_counter()
        server_context(key)
        times_s.append(time.perf_counter() - start)
    return statistics.median(times_s) * 1000


if __name__ == "__main__":
    print(f"TLS 1.3 connection on loopback (median): {handshake_cost_ms():.2f} ms")
    print(f"login signed and verified (median):      {login_cost_ms():.3f} ms")
    print(f"server TLS context, once per run:        {server_context_cost_ms():.2f} ms")
