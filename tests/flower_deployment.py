"""A Flower deployment on loopback for the tests: a SuperLink with TLS and SuperNode
authentication, SuperNodes that are clients of this project, and `flwr run` against them, all
real processes in a tmp folder. Every process started here, and every process those start, is
stopped when the deployment ends, and its ports are checked to be closed."""

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flower_certificates import Certificates, make_certificates
from services import WAIT_S, Service, free_port, is_listening

# flwr, flower-superlink and flower-supernode sit beside the interpreter; not resolved, so a
# venv's bin stays the venv's.
BIN = Path(sys.executable).parent
RUN_WAIT_S = 300.0  # a whole `flwr run`
PORT_TRIES = 5
CONNECTION = "deploy"  # the connection's name in FLWR_HOME/config.toml
# Flower reports to its makers, looks for a newer release, and installs an app's dependencies
# from a package index at each run unless told not to.
QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


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
                started[label].ports.clear()  # another program's, maybe: not to be checked
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
