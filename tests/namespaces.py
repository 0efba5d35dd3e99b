"""Network namespaces for the tests that run programs as separate machines: a router and, behind
it, one namespace for each role in ADDRESSES, joined by veth links (test_lossy_network.py relays
between them, test_two_machines.py bridges them). Needs root, `ip` and AF_PACKET sockets."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from processes import WAIT_S, Program

# Addresses that exist only inside the namespaces Network makes.
ADDRESSES = {"srv": "10.203.0.1", "cli1": "10.203.0.2", "cli2": "10.203.0.3"}


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=WAIT_S)


def why_namespaces_cannot_be_made() -> str | None:
    if not hasattr(socket, "AF_PACKET"):
        return "needs Linux AF_PACKET sockets"
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except OSError as error:
        return f"AF_PACKET sockets are unavailable: {error}"
    return None


class Network:
    """Namespaces named NAME-ROLE: a router and, behind it, one for each of ADDRESSES' roles."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.prefix = f"fedchain-{os.getpid()}"
        self.made: list[str] = []
        self.started: list[Program] = []
        self.relay: Program | None = None

    def namespace(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def make(self) -> None:
        for role in ["router", *ADDRESSES]:
            made = ip("netns", "add", self.namespace(role))
            if made.returncode != 0:
                pytest.skip(f"`ip netns add` failed: {made.stderr.strip()}")
            self.made.append(self.namespace(role))
        router = self.namespace("router")
        for role, address in ADDRESSES.items():
            end = self.namespace(role)
            linked = ip(
                "-n",
                router,
                "link",
                "add",
                f"to-{role}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                end,
            )
            if linked.returncode != 0:
                pytest.skip(f"veth links are unavailable: {linked.stderr.strip()}")
            # One TCP segment a frame, so that a lost frame is a lost segment, as on a real
            # link (a veth otherwise passes 64 KB segmentation offloads through whole); no IPv6
            # addresses, so the link carries the run and nothing of the kernel's own.
            for command in (
                ["-n", end, "link", "set", "eth0", "addrgenmode", "none", "gso_max_segs", "1"],
                ["-n", end, "address", "add", f"{address}/24", "dev", "eth0"],
                ["-n", end, "link", "set", "eth0", "up"],
                ["-n", router, "link", "set", f"to-{role}", "addrgenmode", "none", "up"],
            ):
                done = ip(*command)
                assert done.returncode == 0, f"ip {' '.join(command)}: {done.stderr}"

    def start(self, role: str, script: str, *args: str, cwd: Path | None = None) -> Program:
        """Start `python SCRIPT ARGS...` inside ROLE's namespace, in CWD (the test's folder)."""
        prefix = ("ip", "netns", "exec", self.namespace(role))
        program = Program(script, *args, cwd=cwd or self.tmp_path, prefix=prefix)
        self.started.append(program)
        return program

    def tcp_retransmissions(self, role: str) -> int:
        """The segments TCP in ROLE's namespace sent again, from its /proc/net/snmp."""
        snmp = subprocess.run(
            ["ip", "netns", "exec", self.namespace(role), "cat", "/proc/net/snmp"],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=True,
        ).stdout
        names, values = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Tcp:")]
        return int(values[names.index("RetransSegs")])

    def remove(self) -> None:
        """Stop every program started (so no namespace outlives this), then every namespace."""
        for program in reversed(self.started):
            program.kill()
            program.process.stdout.close()
        failed = [(name, ip("netns", "delete", name).stderr) for name in self.made]
        assert not [failure for failure in failed if failure[1]], failed
