"""The whole local stack in the background: `make up` starts it, `make down` stops all of it.

Started, in order: the Samba AD DC with its seeded users (`stack.up`), Azurite on its default
ports, the local Service Bus broker on 5672, the Entra ID sign-in stand-in at
https://localhost:7443 (devstack/entra.py, its users the DC's), function_app.py on the local
Functions host at 127.0.0.1:7071 accepting the stand-in's tokens, and one relay. Each runs as
its own process in its own session (so it outlives `make up`), logs to
`.devstack/logs/<name>.log` and leaves its pid in `.devstack/pids/`. The cloud's keys live in
`.devstack/cloud-secrets` (what Key Vault holds in Azure). `.devstack/env` is a
shell-sourceable file for any outside tool: the API's URL and key, the domain, the DC's LDAPS
URL, CA, admin and password, the OU of in-scope users, and the sign-in stand-in's authority,
CA and client ids. `down` stops every recorded
process (SIGTERM, then SIGKILL after a grace period) and the DC, and removes the pid files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from joserfc.jwk import ECKey

from devstack import cloud, entra_stack, stack
from devstack.azurite import BINARY as AZURITE
from devstack.azurite import OPTIONS as AZURITE_OPTIONS
from devstack.samba import DevstackError, SambaDC
from devstack.servicebus import writeback_queues
from devstack.stack import STATE
from writeback.relay.keys import KeyStore

API_PORT = 7071
BROKER_PORT = 5672
AZURITE_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
HEARTBEAT_SECONDS = 5  # offline after 15 s: the demo shows the fail-fast without a long wait
PUBLISHED = "published-events.jsonl"  # what the Event Grid output binding publishes, locally
PROCESSES = ("relay", "functions", "entra", "servicebus", "azurite")  # stopped in this order


def azurite_connection_string() -> str:
    endpoints = ";".join(
        f"{service.capitalize()}Endpoint=http://127.0.0.1:{port}/devstoreaccount1"
        for service, port in AZURITE_PORTS.items()
    )
    account = f"AccountName=devstoreaccount1;AccountKey={AZURITE_KEY}"
    return f"DefaultEndpointsProtocol=http;{account};{endpoints};"


def broker_connection_string() -> str:
    return (
        f"Endpoint=sb://127.0.0.1:{BROKER_PORT};SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
    )


# What this process spawned and has not stopped: kept so that it can be reaped, never collected
# while it runs (a Popen dropped with its process alive warns, as a leak would).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def _pid_file(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.pid"


def _running(state: Path, name: str) -> bool:
    path = _pid_file(state, name)
    if not path.exists():
        return False
    try:
        os.kill(int(path.read_text()), 0)
    except (ProcessLookupError, ValueError):
        path.unlink()
        return False
    return True


def _spawn(state: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start `argv` detached, its output in logs/<name>.log, its pid in pids/<name>.pid."""
    if _running(state, name):
        return
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "pids").mkdir(parents=True, exist_ok=True)
    with (state / "logs" / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=cloud.ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives `make up`; `down` signals its whole group
        )
    _SPAWNED[process.pid] = process
    _pid_file(state, name).write_text(str(process.pid))


def _wait_for_port(port: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise DevstackError(f"{what} did not listen on port {port} within {seconds:.0f}s")


def health(api_key: str) -> dict[str, object]:
    """The API's health report (a fixed http URL on the loopback host)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{API_PORT}/api/v1/health", headers={"x-functions-key": api_key}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - fixed URL
        return dict(json.loads(response.read()))


def wait_for_relay(api_key: str, seconds: float = 60) -> None:
    """Until the cloud has the relay's heartbeat (the domain is `ok`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            if health(api_key).get("status") == "ok":
                return
        time.sleep(0.2)
    raise DevstackError(f"no relay heartbeat reached the API within {seconds:.0f}s")


def up(state: Path = STATE) -> tuple[stack.Stack, dict[str, str]]:
    """Start everything (what is already running is kept) and write .devstack/env."""
    running = stack.up(state)
    domain = running.domain.dns_domain
    _spawn(state, "azurite", [str(AZURITE), *AZURITE_OPTIONS, *[
        arg for service, port in AZURITE_PORTS.items()
        for arg in (f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port))
    ]])  # fmt: skip
    queues = [
        f"{q.name}:" + ",".join(
            ([f"lock={q.lock_duration:g}", f"max-delivery={q.max_delivery_count}"])
            + (["session"] if q.requires_session else [])
            + ([f"ttl={q.default_ttl:g}"] if q.default_ttl else [])
            + ([f"dedup={q.duplicate_detection_window:g}"] if q.duplicate_detection_window else [])
            + (["dlq-on-expiry"] if q.dead_letter_on_expiration else [])
        )
        for q in writeback_queues([domain])
    ]  # fmt: skip
    _spawn(state, "servicebus", [sys.executable, "-m", "devstack.servicebus", "--port",
           str(BROKER_PORT), *[arg for q in queues for arg in ("--queue", q)]])  # fmt: skip
    _wait_for_port(AZURITE_PORTS["table"], "Azurite")
    _wait_for_port(BROKER_PORT, "the local Service Bus broker")

    secrets_file = state / "cloud.json"
    if not secrets_file.exists() or not _running(state, "functions"):
        api_key = secrets.token_urlsafe(32)
        cloud_key = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.local", "use": "sig"})
        stack.write_full_relay_config(
            running.dc, running.domain, state / "relay", broker_connection_string(),
            relay_id="relay-local", cloud_key=cloud_key,
        )  # fmt: skip
        jwks = KeyStore(state / "relay" / "keys").public_jwks()
        secrets_dir = state / "cloud-secrets"
        cloud.write_cloud_secrets(secrets_dir, cloud_key, {domain: jwks})
        settings = cloud.cloud_settings(
            domains=[domain], servicebus=broker_connection_string(),
            storage=azurite_connection_string(), secrets_dir=secrets_dir.resolve(),
            api_key=api_key, wait_seconds=10, heartbeat_interval=HEARTBEAT_SECONDS,
        )  # fmt: skip
        _stop(state, "entra")  # a new signing key and the DC's users: the stand-in restarts
        sign_in = entra_stack.prepare(state / "entra", running.dc, running.domain, API_PORT)
        settings.update(sign_in.api_settings())
        secrets_file.write_text(json.dumps({"api_key": api_key, "settings": settings}))
        secrets_file.chmod(0o600)
        _stop(state, "relay")
    saved = json.loads(secrets_file.read_text())
    sign_in = entra_stack.stand_in(state / "entra")
    _spawn(state, "entra", [sys.executable, *sign_in.argv()])
    _wait_for_port(entra_stack.PORT, "the Entra ID sign-in stand-in")
    published = (state / "logs" / PUBLISHED).resolve()
    _spawn(state, "functions", [sys.executable, "-m", "devstack.functions_host", "--port",
           str(API_PORT), "--published", str(published)], saved["settings"])  # fmt: skip
    _wait_for_port(API_PORT, "the local Functions host")
    start_relay(state)
    wait_for_relay(saved["api_key"])
    values = {
        "WRITEBACK_API_URL": f"http://127.0.0.1:{API_PORT}/api",
        "WRITEBACK_API_KEY": saved["api_key"],
        "WRITEBACK_DOMAIN": domain,
        "WRITEBACK_DC_URL": running.dc.ldaps_url,
        "WRITEBACK_DC_CA": str(running.dc.ca_file.resolve()),
        "WRITEBACK_DC_ADMIN": running.dc.admin_upn,
        "WRITEBACK_DC_PASSWORD": stack.ADMIN_PASSWORD,
        "WRITEBACK_USERS_OU": running.domain.users_ou,
        "WRITEBACK_RELAY_CONFIG": str((state / "relay" / "relay.toml").resolve()),
        "WRITEBACK_EVENTS_PUBLISHED": str(published),
        "WRITEBACK_SIGNIN_AUTHORITY": f"{entra_stack.AUTHORITY}/{entra_stack.TENANT_ID}/v2.0",
        "WRITEBACK_SIGNIN_CA": str(sign_in.tls.ca_file.resolve()),
        "WRITEBACK_SIGNIN_PAGES_CLIENT_ID": entra_stack.PAGES_CLIENT_ID,
        "WRITEBACK_SIGNIN_API_SCOPE": f"{entra_stack.API_IDENTIFIER_URI}/Writeback.Self",
        "WRITEBACK_PAGES_URL": pages_url(),
    }
    env = state / "env"
    env.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))
    env.chmod(0o600)
    return running, values


def pages_url(port: int = API_PORT) -> str:
    """Where the local host serves the self-service pages: an origin the stand-in registers
    (a redirect URI and a CORS origin) and a browser treats as secure (loopback)."""
    return f"http://localhost:{port}/api/pages/"


def start_relay(state: Path = STATE) -> None:
    _spawn(state, "relay", [sys.executable, "-m", "writeback.relay.cli", "run", "--config",
           str((state / "relay" / "relay.toml").resolve())],
           {"WRITEBACK_RELAY_HEARTBEAT_INTERVAL": str(HEARTBEAT_SECONDS)})  # fmt: skip


def _stop(state: Path, name: str, grace: float = 15.0) -> None:
    path = _pid_file(state, name)
    if not _running(state, name):
        return
    pid = int(path.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    spawned = _SPAWNED.pop(pid, None)
    if spawned is not None:
        spawned.wait(grace)  # reaped: its Popen learns the exit status
    path.unlink(missing_ok=True)


def stop_relay(state: Path = STATE) -> None:
    _stop(state, "relay")


def down(state: Path = STATE) -> None:
    """Stop every process `up` started, then the DC."""
    for name in PROCESSES:
        _stop(state, name)
    stack.down(state)


@contextlib.contextmanager
def borrowed(state: Path = STATE) -> Iterator[tuple[stack.Stack, dict[str, str]]]:
    """The whole local stack for one run (a benchmark): what was running before is left running,
    what this run started is stopped when it ends, also when the run is interrupted or
    terminated, so the machine is left as it was found."""
    with stack.stopped_on_signals():
        before = {name for name in PROCESSES if _running(state, name)}
        dc_before = SambaDC(state / "dc").running
        try:
            yield up(state)
        finally:
            for name in PROCESSES:
                if name not in before:
                    _stop(state, name)
            if not dc_before:
                stack.down(state)
