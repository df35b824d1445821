"""The cloud side on the local stack: its keys in a local secrets directory and its app settings.

What Key Vault holds in Azure (the cloud's signing key, each domain's relay JWKS) is written as
owner-only files for `LocalSecrets`; the settings are those of local.settings.sample.json with
the local endpoints filled in (Azurite, the local broker). `start_host` runs function_app.py on
the local Functions host as its own process, as `func start` would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from joserfc.jwk import ECKey

from writeback.cloud.secrets import SIGNING_KEY_SECRET, relay_keys_secret

ROOT = Path(__file__).resolve().parent.parent


def write_cloud_secrets(directory: Path, cloud_key: ECKey, relay_jwks: dict[str, dict]) -> Path:
    """The secrets directory: the cloud's private signing key and each domain's relay JWKS."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    values = {SIGNING_KEY_SECRET: json.dumps(cloud_key.as_dict(private=True))}
    for domain, jwks in relay_jwks.items():
        values[relay_keys_secret(domain)] = json.dumps(jwks)
    for name, value in values.items():
        path = directory / name
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(value)
    return directory


def cloud_settings(
    *,
    domains: list[str],
    servicebus: str,
    storage: str,
    secrets_dir: Path,
    api_key: str,
    wait_seconds: float = 10,
    heartbeat_interval: float = 5,
) -> dict[str, str]:
    """The app settings of the local cloud side (the names local.settings.sample.json lists)."""
    return {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": storage,
        "ServiceBusConnection": servicebus,
        "WRITEBACK_DOMAINS": ",".join(domains),
        "WRITEBACK_SECRETS_DIR": str(secrets_dir),
        "WRITEBACK_API_KEYS": api_key,
        # As in Azure, the host runs the sweeper on its timer and loads the audit-stream trigger
        # (fed through the host's admin API locally: there is no Event Hubs).
        "WRITEBACK_SWEEP_SCHEDULE": "0 */1 * * * *",
        "WRITEBACK_AUDIT_HUB": "insights-logs-auditlogs",
        "WRITEBACK_AUDIT_CONSUMER_GROUP": "$Default",
        "WRITEBACK_WAIT_SECONDS": str(wait_seconds),
        "WRITEBACK_REQUEST_LIFETIME_SECONDS": "120",
        "WRITEBACK_HEARTBEAT_INTERVAL_SECONDS": str(heartbeat_interval),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_host(
    settings: dict[str, str], port: int, log: Path, deadline: float = 30.0
) -> subprocess.Popen[bytes]:
    """function_app.py on the local host at 127.0.0.1:`port`, answering once this returns. What
    its Event Grid output bindings publish goes to published-events.jsonl beside `log`."""
    environ = {**os.environ, **settings}
    published = log.with_name("published-events.jsonl")
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "devstack.functions_host", "--port", str(port)),
                *("--published", str(published)),
            ],
            cwd=ROOT,
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    until = time.monotonic() + deadline
    url = f"http://127.0.0.1:{port}/api/v1/health"
    while time.monotonic() < until:
        if process.poll() is not None:
            raise RuntimeError(f"the Functions host exited ({process.returncode}); see {log}")
        try:
            urllib.request.urlopen(url, timeout=1)
        except urllib.error.HTTPError:
            return process  # it answers (401 without a key): ready
        except OSError:
            time.sleep(0.1)  # not listening yet; polled against the deadline above
        else:
            return process
    process.kill()
    raise RuntimeError(f"the Functions host did not answer within {deadline:.0f}s; see {log}")


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
