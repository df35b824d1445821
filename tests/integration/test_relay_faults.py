"""The relay killed at the worst moment, again and again: AD written once, the outcome `applied`.

The relay runs as a real process (`writeback-relay run`). With the test-only failpoint it kills
itself with SIGKILL right after AD accepted a reset, before the journal or the caller hear of it.
A fresh relay process then gets the request again (its lock expired) and must answer `applied`
without writing a second time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack import seed
from devstack.servicebus import LocalServiceBus, writeback_queues
from devstack.stack import write_full_relay_config
from tests.testbed import TestBed
from writeback import sealing
from writeback.protocol import Initiator, Operation, Reason
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.relay.keys import KeyStore
from writeback.relay.pipeline import AFTER_DIRECTORY_WRITE, FAILPOINT_ENV
from writeback.transport.servicebus import ServiceBusCloud
from writeback.transport.settings import ServiceBusSettings

ROUNDS = 5
LOCK_SECONDS = 2.0
PASSWORD_PREFIX = "Sturdy-Restart!"


@pytest.fixture(scope="module")
def fast_bus(testbed: TestBed) -> Iterator[LocalServiceBus]:
    """A broker whose request locks expire quickly, so a dead relay's request comes back soon."""
    domain = testbed.domain.dns_domain
    with LocalServiceBus(
        writeback_queues([domain], lock_duration=LOCK_SECONDS, max_delivery_count=10)
    ) as bus:
        yield bus


def start_relay(config: Path, log: Path, failpoint: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "writeback.relay.cli", "run", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_for_exit(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process.returncode
        time.sleep(0.05)
    return None


def stop(process: subprocess.Popen[bytes]) -> int | None:
    process.send_signal(signal.SIGTERM)
    code = wait_for_exit(process, 30)
    if code is None:
        process.kill()
        process.wait(5)
    return code


class TestKilledBetweenWriteAndOutcome:
    async def test_crash_loop(  # noqa: PLR0917 - pytest injects fixtures positionally
        self,
        testbed: TestBed,
        fast_bus: LocalServiceBus,
        tmp_path: Path,
        new_user: Callable[..., seed.Account],
        read: Callable[[str, list[str]], dict[str, str]],
        can_bind: Callable[[seed.Account, str], bool],
    ) -> None:
        """Five times: kill -9 after the AD write, restart; applied once, answered applied."""
        config, cloud_key = write_full_relay_config(
            testbed.dc, testbed.domain, tmp_path, fast_bus.connection_string, relay_id="relay-crash"
        )
        relay_keys = sealing.public_keyset(KeyStore(tmp_path / "keys").public_jwks(), "keys")
        cloud = ServiceBusCloud(
            ServiceBusSettings(connection_string=fast_bus.connection_string), None
        )
        log = tmp_path / "relay.log"
        passwords: list[str] = []
        try:
            for round_number in range(ROUNDS):
                user = new_user("crash")
                password = f"{PASSWORD_PREFIX}{round_number}"
                passwords.append(password)
                request_id = f"crash-{uuid.uuid4()}"
                now = int(time.time())
                message = RequestMessage(
                    id=request_id,
                    domain=testbed.domain.dns_domain,
                    operation=Operation.RESET,
                    user=user.upn,
                    issued_at=now,
                    expires_at=now + 300,
                    initiator=Initiator.ADMIN,
                    reply_session=cloud.reply_session,
                )
                dying = start_relay(config, log, AFTER_DIRECTORY_WRITE)
                await cloud.send_request(
                    testbed.domain.dns_domain,
                    request_id,
                    sealing.seal_request(message, Secrets(password), relay_keys, cloud_key),
                    now + 300,
                )
                assert wait_for_exit(dying, 60) == -signal.SIGKILL, log.read_text()[-3000:]
                written = read(user.dn, ["pwdLastSet"])["pwdLastSet"]
                assert can_bind(user, password)  # AD took the write before the relay died

                survivor = start_relay(config, log, None)
                try:
                    answer = await cloud.wait_for_outcome(request_id, time.time() + 60)
                finally:
                    assert stop(survivor) == 0
                assert answer is not None, log.read_text()[-3000:]
                outcome = sealing.verify_outcome(answer, relay_keys)
                assert outcome.reason is Reason.APPLIED
                assert "earlier delivery" in outcome.detail
                assert read(user.dn, ["pwdLastSet"])["pwdLastSet"] == written  # not written twice
        finally:
            await cloud.close()
        logged = log.read_text()
        assert '"event": "relay_started"' in logged
        for password in passwords:
            assert password not in logged
