"""Azurite, the official Azure Storage emulator, for development and tests.

Starts the pinned npm `azurite` (devstack/package.json; `make deps` installs it) on 127.0.0.1,
in memory or, given a `location`, persisting its data to that directory (so a restart keeps it),
with blob, queue and table services on ports it picks itself (port 0: several Azurites may run
at once, for tests and the dev stack) or on fixed ports (the dev stack uses Azure's
defaults, 10000-10002). Ready means every service announced its port and accepts a connection;
stop leaves no process behind. The account and key in `connection_string` are Azurite's published
development credentials, not a secret; it must never listen on anything but loopback.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

BINARY = Path(__file__).resolve().parent / "node_modules" / ".bin" / "azurite"
HOST = "127.0.0.1"
ACCOUNT = "devstoreaccount1"
# Azurite's (and the old Storage Emulator's) well-known development key.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEFAULT_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}
SERVICES = tuple(DEFAULT_PORTS)
OPTIONS = (
    "--inMemoryPersistence",
    "--silent",
    "--skipApiVersionCheck",
    "--disableTelemetry",
    "--loose",
)
# "Azurite Table service is successfully listening at http://127.0.0.1:33477"
_LISTENING = re.compile(
    r"Azurite (Blob|Queue|Table) service is successfully listening at \S+:(\d+)"
)


class AzuriteError(RuntimeError):
    """Azurite is not installed, did not start in time, or exited."""


class Azurite:
    """One in-memory Azurite process; a context manager (`with Azurite() as storage: ...`).

    `ports` maps service ("blob", "queue", "table") to a fixed port; a service left out gets a
    free one chosen at start. Without `location`, data lives in memory and is gone when it stops;
    with it, Azurite keeps its data in that directory (`--location`) and a restart finds it.
    """

    def __init__(
        self,
        ports: dict[str, int] | None = None,
        binary: Path = BINARY,
        *,
        location: Path | None = None,
    ) -> None:
        unknown = set(ports or {}) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown Azurite services: {sorted(unknown)}")
        self._wanted = {service: (ports or {}).get(service, 0) for service in SERVICES}
        self._binary = binary
        self.location = location
        self._process: subprocess.Popen[str] | None = None
        self._output: list[str] = []
        self._reader: threading.Thread | None = None
        self.ports: dict[str, int] = {}

    @classmethod
    def on_default_ports(cls) -> Azurite:
        """An Azurite where Azure's tools expect it (`UseDevelopmentStorage=true`)."""
        return cls(dict(DEFAULT_PORTS))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start Azurite and return once every service accepts connections."""
        if self._process is not None:
            raise AzuriteError("this Azurite is already running")
        if not self._binary.exists():
            raise AzuriteError(f"{self._binary} not found: run `make deps` (npm ci in devstack/)")
        arguments = [str(self._binary), *OPTIONS]
        if self.location is not None:
            self.location.mkdir(parents=True, exist_ok=True)
            arguments.remove("--inMemoryPersistence")
            arguments += ["--location", str(self.location)]
        for service, port in self._wanted.items():
            arguments += [f"--{service}Host", HOST, f"--{service}Port", str(port)]
        self._output = []
        self.ports = {}
        self._process = subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, so stop reaches any child
        )
        self._reader = threading.Thread(target=self._read, name="azurite-output", daemon=True)
        self._reader.start()
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Azurite (SIGTERM, then SIGKILL after `timeout`); nothing is left running."""
        process, self._process = self._process, None
        self.ports = {}
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> Azurite:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def endpoint(self, service: str) -> str:
        """The URL of a service ("blob", "queue", "table") for the development account."""
        if service not in self.ports:
            raise AzuriteError("Azurite is not running")
        return f"http://{HOST}:{self.ports[service]}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """An explicit development connection string naming the endpoints this Azurite uses."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint('blob')};QueueEndpoint={self.endpoint('queue')};"
            f"TableEndpoint={self.endpoint('table')};"
        )

    @property
    def output(self) -> str:
        """What Azurite printed so far (with --silent: start-up lines and errors only)."""
        return "".join(self._output)

    # -- internals ------------------------------------------------------------------------
    def _read(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        for line in process.stdout:
            self._output.append(line)
            match = _LISTENING.search(line)
            if match:
                self.ports[match.group(1).lower()] = int(match.group(2))

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                if self._reader is not None:
                    self._reader.join(1.0)  # collect the last words
                raise AzuriteError(f"azurite exited with {code}:\n{self.output}")
            if len(self.ports) == len(SERVICES) and all(map(_accepts, self.ports.values())):
                return
            time.sleep(0.05)
        raise AzuriteError(f"azurite not ready after {timeout:.0f} s:\n{self.output}")


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def _signal_group(process: subprocess.Popen[str], signum: signal.Signals) -> None:
    # start_new_session made the process the leader of a group with its own id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
