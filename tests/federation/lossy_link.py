"""A lossy link for the network-namespace test, as netem would make one (this kernel has no netem).

`relay IF...` is an Ethernet switch with a delay line: run in the middle namespace, it takes every
frame off each veth with an AF_PACKET socket, drops it at random or holds it for a delay with
jitter, then sends it out of the port its destination was learned on (or every other port). TCP
in the other namespaces sees real loss and real delay, and retransmits. It prints what it did on
SIGTERM, and on SIGUSR1 (then counts afresh). `ping HOST` sends ICMP echoes through the link and
prints the round trips and the losses; `sink HOST` and `send HOST PORT` move bytes over TCP
through it, enough for TCP to lose segments and send them again."""

import argparse
import heapq
import os
import random
import selectors
import signal
import socket
import statistics
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15  # frames carry a virtio_net_hdr: checksums left to finish stay offloaded
VNET_HDR_BYTES = 10
VIRTIO_NET_HDR_GSO_NONE = 0
BROADCAST = b"\xff" * 6


def open_port(name: str) -> socket.socket:
    # Protocol 0 until bound, so no frame of another interface slips in before the bind.
    port = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    port.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    port.bind((name, ETH_P_ALL))
    port.setblocking(False)
    return port


def relay(interfaces: list[str], *, delay_ms: float, jitter_ms: float, loss: float) -> int:
    """Forward frames among INTERFACES, each copy lost with probability LOSS or delayed."""
    ports = [open_port(name) for name in interfaces]
    selector = selectors.DefaultSelector()
    for index, port in enumerate(ports):
        selector.register(port, selectors.EVENT_READ, index)
    where: dict[bytes, int] = {}  # a learned MAC address -> the port it was last seen on
    due: list[tuple[float, int, int, bytes, float]] = []  # (send at, sequence, port, frame, got at)
    last_due: dict[tuple[int, int], float] = {}  # each direction keeps its frames' order
    held_s: list[float] = []
    counts = {"received": 0, "sent": 0, "dropped": 0, "segmentation offloads": 0, "send errors": 0}
    sequence = 0
    signals: list[int] = []  # handled in the loop, not in the middle of a print

    signal.signal(signal.SIGTERM, lambda signum, frame: signals.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: signals.append(signum))
    signal.signal(signal.SIGUSR1, lambda signum, frame: signals.append(signum))

    def report(heading: str) -> None:
        summary = ", ".join(f"{name} {count}" for name, count in counts.items())
        print(f"{heading}: {summary}", flush=True)
        if held_s:
            ms = sorted(1000 * s for s in held_s)
            print(
                f"{heading} held: min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, "
                f"max {ms[-1]:.1f} ms",
                flush=True,
            )

    print(
        f"relaying {' '.join(interfaces)}: delay {delay_ms:g}±{jitter_ms:g} ms, loss {loss:.0%}",
        flush=True,
    )
    while True:
        while signals:
            if signals.pop(0) != signal.SIGUSR1:
                report("relayed")
                return 0
            report("so far")  # and count afresh, so that a test can tell its phases apart
            counts = dict.fromkeys(counts, 0)
            held_s = []
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, out, frame, got_at = heapq.heappop(due)
            try:
                ports[out].send(frame)
            except OSError as error:  # a full queue or a link going down: the frame is lost
                counts["send errors"] += 1
                print(f"send on {interfaces[out]} failed: {error}", flush=True)
                continue
            counts["sent"] += 1
            held_s.append(time.monotonic() - got_at)
        timeout_s = max(0.0, due[0][0] - time.monotonic()) if due else 0.5
        for key, _ in selector.select(timeout_s):
            into = key.data
            while True:
                try:
                    frame, address = ports[into].recvfrom(65536 + VNET_HDR_BYTES)
                except BlockingIOError:
                    break
                if address[2] == socket.PACKET_OUTGOING:  # our own sends, seen on the way out
                    continue
                got_at = time.monotonic()
                counts["received"] += 1
                if frame[1] != VIRTIO_NET_HDR_GSO_NONE:  # several segments would be lost at once
                    counts["segmentation offloads"] += 1
                destination = frame[VNET_HDR_BYTES : VNET_HDR_BYTES + 6]
                source = frame[VNET_HDR_BYTES + 6 : VNET_HDR_BYTES + 12]
                where[source] = into
                known = where.get(destination)
                if destination != BROADCAST and known is not None:
                    outs = [known] if known != into else []
                else:
                    outs = [out for out in range(len(ports)) if out != into]
                for out in outs:
                    if random.random() < loss:
                        counts["dropped"] += 1
                        continue
                    wait_s = random.uniform(delay_ms - jitter_ms, delay_ms + jitter_ms) / 1000
                    send_at = max(got_at + wait_s, last_due.get((into, out), 0.0))
                    last_due[into, out] = send_at
                    sequence += 1
                    heapq.heappush(due, (send_at, sequence, out, frame, got_at))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, sequence: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
    payload = struct.pack("!d", time.monotonic())
    return struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, sequence) + payload


def ping(host: str, *, count: int, interval_ms: float, wait_s: float) -> int:
    """Send COUNT echoes to HOST, one every INTERVAL_MS, once one has come back (ARP done)."""
    ident = os.getpid() & 0xFFFF
    rtts_ms: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp:

        def collect(until: float) -> None:
            while (left_s := until - time.monotonic()) > 0:
                icmp.settimeout(left_s)
                try:
                    packet = icmp.recv(2048)
                except TimeoutError:
                    return
                body = packet[(packet[0] & 0x0F) * 4 :]
                kind, _, _, their_ident, sequence = struct.unpack("!BBHHH", body[:8])
                if kind == 0 and their_ident == ident and len(body) >= 16:
                    (sent_at,) = struct.unpack("!d", body[8:16])
                    rtts_ms[sequence] = 1000 * (time.monotonic() - sent_at)

        for _ in range(50):  # the first echoes may wait for ARP, or be lost
            icmp.sendto(echo_request(ident, 0), (host, 0))
            collect(time.monotonic() + 0.2)
            if 0 in rtts_ms:
                break
        else:
            print(f"ping {host}: no answer", flush=True)
            return 1
        for sequence in range(1, count + 1):
            icmp.sendto(echo_request(ident, sequence), (host, 0))
            collect(time.monotonic() + interval_ms / 1000)
        collect(time.monotonic() + wait_s)
    ms = sorted(rtt for sequence, rtt in rtts_ms.items() if sequence > 0)
    print(
        f"ping {host}: {count} sent, {len(ms)} received, {count - len(ms)} lost; "
        f"rtt min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms",
        flush=True,
    )
    return 0


def sink(host: str, *, timeout_s: float) -> int:
    """Take one TCP connection on HOST, any port, and read it to its end."""
    with socket.create_server((host, 0)) as listener:
        listener.settimeout(timeout_s)
        print(f"listening on {host}:{listener.getsockname()[1]}", flush=True)
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(timeout_s)
            n_bytes = 0
            while chunk := connection.recv(1 << 16):
                n_bytes += len(chunk)
    print(f"received {n_bytes} bytes", flush=True)
    return 0


def send(host: str, port: int, *, n_bytes: int, timeout_s: float) -> int:
    """Send N_BYTES to HOST:PORT over TCP, and wait for the far end to close (all of it read)."""
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        connection.sendall(bytes(n_bytes))
        connection.shutdown(socket.SHUT_WR)
        connection.recv(1)
    print(f"sent {n_bytes} bytes", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    relaying = commands.add_parser("relay", help="forward frames among these interfaces")
    relaying.add_argument("interfaces", nargs="+")
    relaying.add_argument("--delay-ms", type=float, default=50.0)
    relaying.add_argument("--jitter-ms", type=float, default=10.0)
    relaying.add_argument("--loss", type=float, default=0.01, help="probability a frame is lost")
    pinging = commands.add_parser("ping", help="measure round trips and losses to a host")
    pinging.add_argument("host")
    pinging.add_argument("--count", type=int, default=1000)
    pinging.add_argument("--interval-ms", type=float, default=1.0)
    pinging.add_argument("--wait-s", type=float, default=1.0)
    sinking = commands.add_parser("sink", help="read one TCP connection to its end")
    sinking.add_argument("host")
    sending = commands.add_parser("send", help="send bytes to a sink")
    sending.add_argument("host")
    sending.add_argument("port", type=int)
    sending.add_argument("--bytes", type=int, default=2_000_000, dest="n_bytes")
    for command in (sinking, sending):
        command.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "relay":
        return relay(
            args.interfaces, delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, loss=args.loss
        )
    if args.command == "sink":
        return sink(args.host, timeout_s=args.timeout_s)
    if args.command == "send":
        return send(args.host, args.port, n_bytes=args.n_bytes, timeout_s=args.timeout_s)
    return ping(args.host, count=args.count, interval_ms=args.interval_ms, wait_s=args.wait_s)


if __name__ == "__main__":
    sys.exit(main())
