"""The HTTP API end to end against raw ldap3 modifies on the same DC; function_app's cold import.

On the local stack (Samba DC, Azurite, local Service Bus broker, the relay as a process,
function_app.py on the local Functions host): N admin resets over HTTP, sequentially (latency
p50/p95/p99) and at concurrency 4 (throughput), against the baseline of N raw ldap3 replaces of
unicodePwd over LDAPS on the same DC in the same run (sequential, and 4 connections at once).
Then the cold import time of function_app.py in a fresh interpreter, against `import
azure.functions` alone. Run with `python -m bench.api` (as root: it starts the local DC).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ldap3
from joserfc.jwk import ECKey

from devstack import cloud, seed, stack
from devstack.azurite import Azurite
from devstack.servicebus import LocalServiceBus, writeback_queues
from writeback.relay.keys import KeyStore
from writeback.relay.ldap import ValidatingTls
from writeback.relay.policy import encode_unicode_pwd

PASSWORD = "Bench-Http-Pa55word!"


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49]:6.1f}  p95 {cuts[94]:6.1f}  p99 {cuts[98]:6.1f} ms"


def raw_modify(running: stack.Stack, dns: list[str]) -> list[float]:
    connection = ldap3.Connection(
        ldap3.Server("localhost", port=636, use_ssl=True, get_info=ldap3.NONE,
                     tls=ValidatingTls(str(running.dc.ca_file))),
        user=running.domain.relay.upn, password=running.domain.relay.password, auto_bind=True,
    )  # fmt: skip
    value = encode_unicode_pwd(PASSWORD)
    times = []
    for dn in dns:
        started = time.perf_counter()
        connection.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [value])]})
        times.append(1000 * (time.perf_counter() - started))
        if connection.result["result"] != 0:
            raise SystemExit(f"baseline failed: {connection.result['description']}")
    connection.unbind()
    return times


def http_reset(url: str, key: str, upn: str) -> float:
    body = json.dumps({"user": upn, "newPassword": PASSWORD, "initiator": "admin"}).encode()
    request = urllib.request.Request(  # noqa: S310 - http to the local host
        f"{url}/v1/passwords/reset", data=body, method="POST",
        headers={"x-functions-key": key, "Content-Type": "application/json"},
    )  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - see above
        answer = json.loads(response.read())
    if answer.get("reason") != "applied":
        raise SystemExit(f"HTTP reset failed: {answer}")
    return 1000 * (time.perf_counter() - started)


def cold_import(statement: str, runs: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    root = Path(__file__).resolve().parent.parent
    return min(
        float(subprocess.check_output([sys.executable, "-c", code], cwd=root, text=True))  # noqa: S603
        for _ in range(runs)
    )


def main() -> None:  # noqa: PLR0915 - one benchmark, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="resets per measurement")
    count = parser.parse_args().requests
    running = stack.up()
    admin = running.dc.admin_connection()
    domain = running.domain

    def users(prefix: str) -> list[seed.Account]:
        return [
            seed.create_user(admin, domain.users_ou, domain.dns_domain, seed.unique_name(prefix))
            for _ in range(count)
        ]

    raw_users, raw_parallel, http_users, http_parallel = (
        users("rawb"), users("rawp"), users("httpb"), users("httpp")
    )  # fmt: skip
    admin.unbind()
    raw_times = raw_modify(running, [u.dn for u in raw_users])
    quarter = count // 4
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda part: raw_modify(running, part),
                      [[u.dn for u in raw_parallel[i::4]] for i in range(4)]))  # fmt: skip
    raw_rate = count / (time.perf_counter() - started)

    with (
        tempfile.TemporaryDirectory() as state_dir,
        Azurite() as storage,
        LocalServiceBus(writeback_queues([domain.dns_domain])) as bus,
    ):
        state = Path(state_dir)
        cloud_key = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.bench", "use": "sig"})
        config, _ = stack.write_full_relay_config(
            running.dc, domain, state / "relay", bus.connection_string, relay_id="relay-bench",
            cloud_key=cloud_key,
        )  # fmt: skip
        jwks = KeyStore(state / "relay" / "keys").public_jwks()
        secrets_dir = cloud.write_cloud_secrets(
            state / "secrets", cloud_key, {domain.dns_domain: jwks}
        )
        key = secrets.token_urlsafe(32)
        settings = cloud.cloud_settings(
            domains=[domain.dns_domain], servicebus=bus.connection_string,
            storage=storage.connection_string, secrets_dir=secrets_dir, api_key=key,
        )  # fmt: skip
        port = cloud.free_port()
        host = cloud.start_host(settings, port, state / "host.log")
        with (state / "relay.log").open("ab") as log:
            relay = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "writeback.relay.cli", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + 60
            while True:  # the first heartbeat makes the domain available
                try:
                    http_reset(url, key, http_users[0].upn)
                    break
                except (urllib.error.HTTPError, SystemExit):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            http_times = [http_reset(url, key, u.upn) for u in http_users]
            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda u: http_reset(url, key, u.upn), http_parallel))
            http_rate = count / (time.perf_counter() - started)
        finally:
            cloud.stop_process(relay)
            cloud.stop_process(host)

    print(f"{count} admin resets each, same DC, same run ({quarter} per worker at concurrency 4)")
    print(f"  raw ldap3 modify, sequential : {percentiles(raw_times)}")
    print(f"  HTTP API end to end          : {percentiles(http_times)}")
    ratio = statistics.median(http_times) / statistics.median(raw_times)
    print(f"  p50 ratio HTTP / raw         : {ratio:.1f}x")
    print(f"  throughput at concurrency 4  : raw {raw_rate:.1f}/s, HTTP {http_rate:.1f}/s "
          f"({100 * http_rate / raw_rate:.0f}% of raw)")  # fmt: skip
    app = cold_import("import function_app")
    base = cold_import("import azure.functions")
    print(f"cold import of function_app.py: {1000 * app:.0f} ms "
          f"(import azure.functions alone: {1000 * base:.0f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
