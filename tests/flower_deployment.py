"""A Flower deployment on loopback for the tests: a SuperLink with TLS and SuperNode
authentication, SuperNodes that are clients of this project, and `flwr run` against them, all
real processes in a tmp folder. Every process started here, and every process those start, is
stopped when the deployment ends, and its ports are checked to be closed."""

import datetime as dt
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# flwr, flower-superlink and flower-supernode sit beside the interpreter; not resolved, so a
# venv's bin stays the venv's.
BIN = Path(sys.executable).parent
WAIT_S = 60.0  # a watchdog for every wait on Flower
RUN_WAIT_S = 300.0  # a whole `flwr run`
POLL_S = 0.05
STOP_S = 15.0  # how long a stopped process may take before it is killed
PORT_TRIES = 5
CONNECTION = "deploy"  # the connection's name in FLWR_HOME/config.toml
# Flower reports to its makers, looks for a newer release, and installs an app's dependencies
# from a package index at each run unless told not to.
QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


@dataclass(frozen=True)
class Certificates:
    """A CA, and a server certificate it signed for 127.0.0.1."""

    ca: Path
    server_cert: Path
    server_key: Path


def make_certificates(folder: Path) -> Certificates:
    """A fresh CA and the SuperLink's certificate (P-256), written to FOLDER."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedchain test CA")])
    ca = (
        _valid_for_a_day(x509.CertificateBuilder(), now)
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    loopback = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = (
        _valid_for_a_day(x509.CertificateBuilder(), now)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .add_extension(loopback, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    made = Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    made.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    made.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    made.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return made


def _valid_for_a_day(builder: x509.CertificateBuilder, now: dt.datetime):
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's key pair in OpenSSH format: (private, public). Flower's node
    authentication takes NIST EC keys only (an Ed25519 key, as our clients sign with, is
    refused), so this is P-256 and has nothing to do with the client's key on the chain."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return private, public


def free_port() -> int:
    """A loopback port free a moment ago. flower-superlink cannot take port 0 and say which
    port it got, so the caller may lose a race for it and must retry on a bind failure."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A long-running Flower program, its output going to LOG (read back to see how it is),
    in a session of its own so that it and what it starts can be stopped together."""

    def __init__(self, name: str, args: list[str], *, log: Path, env: Mapping[str, str]) -> None:
        self.name, self.log, self.ports = name, log, []
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = WAIT_S) -> re.Match | None:
        """The first match of PATTERN in the output; None if the program ended without it.
        Raises TimeoutError if it neither prints it nor ends in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ended = self.process.poll() is not None  # before reading: no line is missed
            if match := re.search(pattern, self.output, re.MULTILINE):
                return match
            if ended:
                return None
            time.sleep(POLL_S)
        raise TimeoutError(f"{self.name} printed nothing matching {pattern!r}:\n{self.output}")

    def wait_exit(self, timeout_s: float = WAIT_S) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Stop the program and everything it started (Flower's SuperExec runs in a session
        of its own, and starts a process per run or message); kill what outlives STOP_S."""
        family = [self.process.pid, *_descendants(self.process.pid)]
        groups = {group for pid in family if (group := _group_of(pid)) is not None}
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        while time.monotonic() < deadline and _alive(family):
            self.process.poll()  # reap our own child
            time.sleep(POLL_S)
        for group in groups:
            _signal_group(group, signal.SIGKILL)
        for pid in _alive(family):
            os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=WAIT_S)
        deadline = time.monotonic() + STOP_S
        while (left := _members(groups)) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if left:
            raise RuntimeError(f"{self.name}: processes {left} outlived SIGKILL")


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command (state, ppid, pgrp, …); None if it's gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            yield int(entry.name), fields


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, fields in _processes():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _group_of(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[2])


def _signal_group(group: int, signum: int) -> None:
    with suppress(ProcessLookupError):  # all gone already
        os.killpg(group, signum)


def _members(groups: set[int]) -> list[int]:
    """The live processes of GROUPS, including any started after the family was listed."""
    return [pid for pid, fields in _processes() if int(fields[2]) in groups and fields[0] != "Z"]


def _alive(pids: list[int]) -> list[int]:
    """The PIDS still running (a zombie has ended: only its parent's wait is missing)."""
    return [pid for pid in pids if (fields := _stat(pid)) is not None and fields[0] != "Z"]


@dataclass
class Deployment:
    """A SuperLink on PORT with its certificates in FOLDER; `flwr` commands reach it through
    the connection CONNECTION of the FLWR_HOME in ENV."""

    folder: Path
    certificates: Certificates
    env: dict[str, str]
    services: list[Service] = field(default_factory=list)
    port: int = 0

    def flwr(self, *args: str, timeout_s: float = WAIT_S) -> subprocess.CompletedProcess:
        """`flwr ARGS`, to its end."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.folder,
            timeout=timeout_s,
        )

    def start_superlink(self) -> Service:
        """The SuperLink, on a free port (another port if one is taken meanwhile)."""
        for _ in range(PORT_TRIES):
            port = free_port()
            superlink = self._start(
                "superlink",
                "flower-superlink",
                "--ssl-ca-certfile",
                str(self.certificates.ca),
                "--ssl-certfile",
                str(self.certificates.server_cert),
                "--ssl-keyfile",
                str(self.certificates.server_key),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            )
            if superlink.wait_for(r"Uvicorn running on https://127\.0\.0\.1:\d+"):
                self.port = port
                superlink.ports.append(port)
                self._write_connection()
                return superlink
            if "address already in use" not in superlink.output:
                raise RuntimeError(f"the SuperLink did not start:\n{superlink.output}")
        raise RuntimeError(f"no free port for the SuperLink in {PORT_TRIES} tries")

    def _write_connection(self) -> None:
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n'
            f"root-certificates = '{self.certificates.ca}'\n"
        )

    def register(self, *public_keys: Path) -> None:
        """Let in the nodes holding PUBLIC_KEYS' private keys; together, since each `flwr`
        takes over a second to start."""
        with ThreadPoolExecutor() as pool:
            answers = list(
                pool.map(
                    lambda key: self.flwr("supernode", "register", str(key), CONNECTION),
                    public_keys,
                )
            )
        for done in answers:
            if done.returncode != 0 or "registered" not in done.stdout:
                raise RuntimeError(f"flwr supernode register failed:\n{done.stdout}{done.stderr}")

    def start_supernodes(
        self, nodes: Mapping[str, tuple[Mapping[str, str], Path]]
    ) -> dict[str, Service]:
        """SuperNodes by label, each with its node config (text values) and private key,
        started together. Returns once the SuperLink has let each in, or it has ended (its exit
        code and output say why)."""
        started = {label: self._start_supernode(label, *nodes[label]) for label in nodes}
        for _ in range(PORT_TRIES):
            # A node serves its runtime API, then activates itself at the SuperLink, which
            # names it; a node the SuperLink refuses ends instead.
            lost = [
                label
                for label, node in started.items()
                if not node.wait_for(r"SuperNode ID: \d+")
                and "address already in use" in node.output
            ]
            if not lost:
                return started
            for label in lost:
                started[label] = self._start_supernode(label, *nodes[label])
        raise RuntimeError(f"no free port for SuperNodes {lost} in {PORT_TRIES} tries")

    def _start_supernode(self, label: str, node_config: Mapping[str, str], key: Path) -> Service:
        # Each has its own FLWR_HOME, where it installs the run's app.
        config = " ".join(f"{name}='{_literal(value)}'" for name, value in node_config.items())
        port = free_port()
        node = self._start(
            label,
            "flower-supernode",
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--root-certificates",
            str(self.certificates.ca),
            "--auth-supernode-private-key",
            str(key),
            "--node-config",
            config,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            home=self.folder / f"home-{label}",
        )
        node.ports.append(port)
        return node

    def _start(self, label: str, program: str, *args: str, home: Path | None = None) -> Service:
        env = dict(self.env)
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
            env["FLWR_HOME"] = str(home)
        log = self.folder / f"{label}.log"
        service = Service(label, [str(BIN / program), *args], log=log, env=env)
        self.services.append(service)
        return service

    def run(self, app: Path, run_config: Mapping[str, object]) -> subprocess.CompletedProcess:
        """`flwr run APP deploy --stream --run-config …`, to the run's end."""
        return self.flwr(
            "run",
            str(app),
            CONNECTION,
            "--stream",
            "--run-config",
            format_run_config(run_config),
            timeout_s=RUN_WAIT_S,
        )

    def stop(self, service: Service) -> None:
        service.stop()
        still = [port for port in service.ports if is_listening(port)]
        if still:
            raise RuntimeError(f"{service.name} stopped but port(s) {still} still listen")

    def stop_all(self) -> None:
        """Stop every service, even when one of them cannot be; then say which could not."""
        failures = []
        for service in reversed(self.services):
            try:
                self.stop(service)
            except RuntimeError as error:
                failures.append(str(error))
        if failures:
            raise RuntimeError("; ".join(failures))


def format_run_config(run_config: Mapping[str, object]) -> str:
    """RUN_CONFIG as `flwr run --run-config` reads it: TOML values, text as literal strings."""
    parts = []
    for name, value in run_config.items():
        if isinstance(value, str | Path):
            parts.append(f"{name}='{_literal(str(value))}'")
        elif isinstance(value, bool | int | float):
            parts.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
        else:
            raise TypeError(f"run config {name}: {value!r} is not text, a number or a bool")
    return " ".join(parts)


def _literal(text: str) -> str:
    # A TOML literal string ('…') has no escapes; Flower's parser splits pairs at blanks
    # outside quotes.
    if "'" in text or "\n" in text:
        raise ValueError(f"{text!r} cannot be a value on Flower's command line")
    return text


@contextmanager
def deployment(folder: Path) -> Iterator[Deployment]:
    """A SuperLink with TLS and SuperNode authentication, in FOLDER; every process started
    through the Deployment is stopped at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **QUIET,
        "FLWR_HOME": str(folder / "flwr-home"),
        # flwr and the SuperLink start Flower's other programs by name.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("PYTHONPATH", None)  # the app must import fedchain from its FAB, not the checkout
    deployed = Deployment(folder, make_certificates(folder / "certs"), env)
    try:
        deployed.start_superlink()
        yield deployed
    finally:
        deployed.stop_all()
