"""The relay end to end: signed, sealed requests over the local broker, applied to the Samba DC."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from joserfc.jwk import ECKey, KeySet

from devstack import seed
from devstack.servicebus import LocalServiceBus, writeback_queues
from devstack.stack import write_full_relay_config
from tests.testbed import TestBed
from writeback import sealing
from writeback.protocol import Initiator, Operation, Reason
from writeback.protocol.messages import OutcomeMessage, RequestMessage, Secrets
from writeback.relay import bootstrap, cli
from writeback.relay.config import Config
from writeback.relay.keys import KeyStore
from writeback.relay.ldap import sid_to_str
from writeback.transport import requests_queue
from writeback.transport.servicebus import ServiceBusCloud
from writeback.transport.settings import ServiceBusSettings

NEW = "Relay-Applied-Pa55!"
NewUser = Callable[..., seed.Account]
CanBind = Callable[[seed.Account, str], bool]
Read = Callable[[str, list[str]], dict[str, str]]


@pytest.fixture(scope="module")
def bus(testbed: TestBed) -> Iterator[LocalServiceBus]:
    domain = testbed.domain.dns_domain
    with LocalServiceBus(writeback_queues([domain])) as running:
        yield running


@dataclass
class Cloud:
    """The cloud side, as the Functions app will be: seal, sign, send, wait, verify."""

    transport: ServiceBusCloud
    signing_key: ECKey
    relay_keys: KeySet
    domain: str
    connection_string: str

    async def ask(
        self,
        operation: Operation,
        user: str,
        secrets: Secrets | None,
        *,
        request_id: str | None = None,
        expires_in: int = 60,
        signer: ECKey | None = None,
        initiator: Initiator | None = Initiator.SELF_SERVICE,
        unlock: bool = False,
        wait: float = 15.0,
    ) -> OutcomeMessage | None:
        request_id = request_id or f"req-{uuid.uuid4()}"
        now = int(time.time())
        message = RequestMessage(
            id=request_id,
            domain=self.domain,
            operation=operation,
            user=user,
            issued_at=now - 1,
            expires_at=now + expires_in,
            initiator=initiator if operation is Operation.RESET else None,
            unlock=unlock,
            reply_session=self.transport.reply_session,
        )
        token = sealing.seal_request(message, secrets, self.relay_keys, signer or self.signing_key)
        await self.transport.send_request(self.domain, request_id, token, now + expires_in)
        answer = await self.transport.wait_for_outcome(request_id, time.time() + wait)
        return None if answer is None else sealing.verify_outcome(answer, self.relay_keys)

    async def dead_letters(self) -> list[tuple[str | None, str | None]]:
        async with ServiceBusClient.from_connection_string(self.connection_string) as client:
            receiver = client.get_queue_receiver(
                requests_queue(self.domain),
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                max_wait_time=2,
            )
            async with receiver:
                found = await receiver.receive_messages(max_message_count=20, max_wait_time=2)
                for message in found:
                    await receiver.complete_message(message)
        return [(m.dead_letter_reason, m.dead_letter_error_description) for m in found]


@pytest.fixture
async def cloud(testbed: TestBed, bus: LocalServiceBus, tmp_path: Path) -> AsyncIterator[Cloud]:
    """A running relay (the real agent, built from relay.toml) and the cloud side to drive it."""
    config_path, cloud_key = write_full_relay_config(
        testbed.dc, testbed.domain, tmp_path, bus.connection_string, relay_id="relay-it"
    )
    keys = KeyStore(tmp_path / "keys")
    # Three wrong current passwords per user, below the test domain's lockout threshold of 5.
    relay = bootstrap.build(
        Config.load(config_path, environ={"WRITEBACK_RELAY_CHANGE_ATTEMPTS": "3"})
    )
    stop = asyncio.Event()
    running = asyncio.create_task(relay.agent.run(stop))
    settings = ServiceBusSettings(connection_string=bus.connection_string)
    side = Cloud(
        ServiceBusCloud(settings, None),
        cloud_key,
        sealing.public_keyset(keys.public_jwks(), "relay jwks"),
        testbed.domain.dns_domain,
        bus.connection_string,
    )
    yield side
    stop.set()
    await running
    await relay.close()
    await side.transport.close()


class TestOperations:
    async def test_reset_change_unlock_expire(
        self, cloud: Cloud, testbed: TestBed, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """Each operation travels sealed and signed, is applied to AD and answered applied."""
        user = new_user("e2e")
        reset = await cloud.ask(Operation.RESET, user.upn, Secrets(NEW))
        assert reset is not None
        assert (reset.reason, reset.relay) == (Reason.APPLIED, "relay-it")
        assert can_bind(user, NEW)
        change = await cloud.ask(Operation.CHANGE, user.upn, Secrets("Changed-Pa55!", NEW))
        assert change is not None
        assert change.reason is Reason.APPLIED
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"])
        unlock = await cloud.ask(Operation.UNLOCK, user.upn, None)
        assert unlock is not None
        assert unlock.reason is Reason.APPLIED
        assert can_bind(user, "Changed-Pa55!")
        expire = await cloud.ask(Operation.EXPIRE, user.upn, None)
        assert expire is not None
        assert expire.reason is Reason.APPLIED
        assert not can_bind(user, "Changed-Pa55!")  # must change at next logon

    async def test_wrong_current_passwords_are_throttled_before_ad_locks_the_account(
        self, cloud: Cloud, new_user: NewUser, read: Read, can_bind: CanBind
    ) -> None:
        """Three wrong current passwords reach the DC (badPwdCount 3); the fourth change, even
        with the right one, is answered account.throttled without asking the DC, so the
        account is not locked out and its password still works."""
        user = new_user("guessed")
        for n in range(3):
            wrong = await cloud.ask(
                Operation.CHANGE, user.upn, Secrets("Next-Pa55word!", f"Wrong-0ld-{n}!")
            )
            assert wrong is not None
            assert wrong.reason is Reason.OLD_PASSWORD_MISMATCH
        assert read(user.dn, ["badPwdCount"]) == {"badPwdCount": "3"}
        right = await cloud.ask(
            Operation.CHANGE, user.upn, Secrets("Next-Pa55word!", user.password)
        )
        assert right is not None
        assert right.reason is Reason.ACCOUNT_THROTTLED
        assert read(user.dn, ["badPwdCount", "lockoutTime"])["badPwdCount"] == "3"
        assert can_bind(user, user.password)

    async def test_the_throttle_is_one_count_for_a_sid_and_a_upn_of_one_user(
        self, cloud: Cloud, testbed: TestBed, new_user: NewUser, admin: Any, read: Read
    ) -> None:
        """Wrong current passwords sent by UPN, by objectSid and as CORP\\sam count for one
        account: after three (the limit), a fourth by SID is throttled without reaching the DC,
        and every outcome names the account's objectGUID."""
        user = new_user("spelled")
        admin.search(user.dn, "(objectClass=*)", "BASE", attributes=["objectSid", "objectGUID"])
        raw = admin.response[0]["raw_attributes"]
        sid, guid = sid_to_str(raw["objectSid"][0]), str(uuid.UUID(bytes_le=raw["objectGUID"][0]))
        names = [user.upn, sid, f"{testbed.dc.names.netbios}\\{user.sam}", sid]
        answers = []
        for n, name in enumerate(names):
            answer = await cloud.ask(
                Operation.CHANGE, name, Secrets("Next-Pa55word!", f"Wrong-0ld-{n}!")
            )
            assert answer is not None
            answers.append(answer)
        assert [a.reason for a in answers] == [Reason.OLD_PASSWORD_MISMATCH] * 3 + [
            Reason.ACCOUNT_THROTTLED
        ]
        assert {a.account.guid if a.account else None for a in answers} == {guid}
        assert read(user.dn, ["badPwdCount"]) == {"badPwdCount": "3"}

    async def test_rejections_reach_the_caller(
        self, cloud: Cloud, testbed: TestBed, new_user: NewUser
    ) -> None:
        """Directory refusals come back with their precise reason and message."""
        user = new_user("rej")
        short = await cloud.ask(Operation.RESET, user.upn, Secrets("Sh0rt!"))
        wrong = await cloud.ask(Operation.CHANGE, user.upn, Secrets(NEW, "Wrong-0ld-Pa55!"))
        outside = await cloud.ask(
            Operation.RESET, new_user("out", ou=testbed.domain.outside_ou).upn, Secrets(NEW)
        )
        assert [o.reason if o else None for o in (short, wrong, outside)] == [
            Reason.POLICY_LENGTH,
            Reason.OLD_PASSWORD_MISMATCH,
            Reason.USER_OUT_OF_SCOPE,
        ]
        assert short is not None
        assert "at least 8" in short.message


class TestRefusals:
    async def test_forged_request_is_dead_lettered_and_unanswered(
        self, cloud: Cloud, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A request signed by an untrusted key changes nothing and is dead-lettered."""
        user = new_user("forged")
        stranger = ECKey.generate_key("P-256", parameters={"kid": "cloud.sig.evil", "use": "sig"})
        answer = await cloud.ask(Operation.RESET, user.upn, Secrets(NEW), signer=stranger, wait=3)
        assert answer is None
        assert ("request.invalid_signature", "signed by an unknown key 'cloud.sig.evil'") in (
            await cloud.dead_letters()
        )
        assert can_bind(user, user.password)

    async def test_a_resent_request_is_not_applied_twice(
        self, cloud: Cloud, new_user: NewUser, read: Callable[[str, list[str]], dict[str, str]]
    ) -> None:
        """The same request id sent again is dropped; AD was written once (pwdLastSet unchanged)."""
        user = new_user("replay")
        request_id = f"req-{uuid.uuid4()}"
        first = await cloud.ask(Operation.RESET, user.upn, Secrets(NEW), request_id=request_id)
        assert first is not None
        assert first.reason is Reason.APPLIED
        written = read(user.dn, ["pwdLastSet"])["pwdLastSet"]
        again = await cloud.ask(
            Operation.RESET, user.upn, Secrets(NEW), request_id=request_id, wait=3
        )
        assert again is None
        assert read(user.dn, ["pwdLastSet"])["pwdLastSet"] == written

    async def test_no_password_in_any_log(
        self, cloud: Cloud, new_user: NewUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A scan of everything logged during real requests finds no password."""
        caplog.set_level(logging.DEBUG)
        user = new_user("logs")
        await cloud.ask(Operation.RESET, user.upn, Secrets(NEW))
        await cloud.ask(Operation.CHANGE, user.upn, Secrets("Logged-Pa55!", "Wrong-0ld-Pa55!"))
        text = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
        assert caplog.records
        for secret in (NEW, "Logged-Pa55!", "Wrong-0ld-Pa55!", user.password):
            assert secret not in text


class TestTwoRelays:
    async def test_two_relays_share_one_queue(
        self,
        testbed: TestBed,
        bus: LocalServiceBus,
        tmp_path: Path,
        new_user: NewUser,
        can_bind: CanBind,
    ) -> None:
        """Two relays (own ids, keys, journals) share one queue; each request is handled once."""
        first, cloud_key = write_full_relay_config(
            testbed.dc, testbed.domain, tmp_path / "a", bus.connection_string, relay_id="relay-a"
        )
        second, _ = write_full_relay_config(
            testbed.dc,
            testbed.domain,
            tmp_path / "b",
            bus.connection_string,
            relay_id="relay-b",
            cloud_key=cloud_key,
        )
        relays = [bootstrap.build(Config.load(path, environ={})) for path in (first, second)]
        stop = asyncio.Event()
        running = [asyncio.create_task(relay.agent.run(stop)) for relay in relays]
        union = {
            "keys": [
                *KeyStore(tmp_path / "a" / "keys").public_jwks()["keys"],  # type: ignore[misc]
                *KeyStore(tmp_path / "b" / "keys").public_jwks()["keys"],
            ]
        }  # type: ignore[misc]
        cloud = Cloud(
            ServiceBusCloud(ServiceBusSettings(connection_string=bus.connection_string), None),
            cloud_key,
            sealing.public_keyset(union, "domain jwks"),
            testbed.domain.dns_domain,
            bus.connection_string,
        )
        users = [new_user("pair") for _ in range(12)]
        try:
            outcomes = await asyncio.gather(
                *(cloud.ask(Operation.RESET, user.upn, Secrets(NEW)) for user in users)
            )
        finally:
            stop.set()
            await asyncio.gather(*running)
            for relay in relays:
                await relay.close()
            await cloud.transport.close()
        assert all(o is not None and o.reason is Reason.APPLIED for o in outcomes)
        handled = [relay.agent.handled for relay in relays]
        assert sum(handled) == len(users)  # each request exactly once, by one of the two
        assert {o.relay for o in outcomes if o is not None} <= {"relay-a", "relay-b"}
        assert all(can_bind(user, NEW) for user in users)


class TestStatus:
    async def test_status_while_running_and_after_stop(
        self,
        testbed: TestBed,
        bus: LocalServiceBus,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`writeback-relay status` reports a running relay as healthy and a stopped one as not."""
        config_path, _ = write_full_relay_config(
            testbed.dc, testbed.domain, tmp_path, bus.connection_string, relay_id="relay-st"
        )
        relay = bootstrap.build(Config.load(config_path, environ={}))
        stop = asyncio.Event()
        running = asyncio.create_task(relay.agent.run(stop))
        deadline = time.monotonic() + 15
        code = 1
        while code != 0 and time.monotonic() < deadline:
            capsys.readouterr()
            code = await asyncio.to_thread(cli.main, ["status", "--config", str(config_path)])
            if code != 0:
                await asyncio.sleep(0.2)
        healthy_report = capsys.readouterr().out
        stop.set()
        await running
        await relay.close()
        stopped = cli.main(["status", "--config", str(config_path)])
        stopped_report = capsys.readouterr().out
        assert code == 0
        assert "health: ok" in healthy_report
        assert "relay-st for corp.example.test, running" in healthy_report
        assert stopped == 1
        assert "stopped" in stopped_report
        assert "journal:" in stopped_report


class TestDoctor:
    def test_full_relay_config_checks_keys_journal_and_service_bus(
        self,
        testbed: TestBed,
        bus: LocalServiceBus,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """With a whole relay.toml, doctor also checks the keys, the journal and Service Bus."""
        config_path, _ = write_full_relay_config(
            testbed.dc, testbed.domain, tmp_path, bus.connection_string, relay_id="relay-doc"
        )
        code = cli.main(["doctor", "--config", str(config_path)])
        report = capsys.readouterr().out
        assert code == 0, report
        assert "[ok  ] relay keys: active relay-doc.enc." in report
        assert "[ok  ] cloud keys: 1 signing key(s) trusted" in report
        assert f"[ok  ] service bus: receive {requests_queue(testbed.domain.dns_domain)}" in report

    def test_unreachable_service_bus_is_a_failure(
        self,
        testbed: TestBed,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A Service Bus nobody listens on fails the check, naming it."""
        dead = (
            "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=v;"
            "UseDevelopmentEmulator=true;"
        )
        config_path, _ = write_full_relay_config(
            testbed.dc, testbed.domain, tmp_path, dead, relay_id="relay-doc"
        )
        text = config_path.read_text().replace("[servicebus]", "[servicebus]\nretry_total = 0")
        config_path.write_text(text)
        code = cli.main(["doctor", "--config", str(config_path)])
        report = capsys.readouterr().out
        assert code == 1
        assert "[FAIL] service bus: probe: connect" in report


class TestOutages:
    async def test_dc_down_then_back(
        self, cloud: Cloud, testbed: TestBed, admin: Any, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """With the DC stopped a request fails fast as directory.unavailable; once it is back the
        same relay applies the next request without a restart."""
        user = new_user("outage")
        testbed.dc.stop()
        try:
            started = time.time()
            down = await cloud.ask(Operation.RESET, user.upn, Secrets(NEW))
            took = time.time() - started
        finally:
            testbed.dc.start()
            admin.unbind()  # the restart ended the tests' own administrator session too
            assert admin.bind()
        assert down is not None
        assert down.reason is Reason.DIRECTORY_UNAVAILABLE
        assert took < 15
        back = await cloud.ask(Operation.RESET, user.upn, Secrets(NEW))
        assert back is not None
        assert back.reason is Reason.APPLIED
        assert can_bind(user, NEW)

    # pyamqp (azure-servicebus 7.15.0) leaves its socket and transport unclosed when the peer
    # disappears under a connected client, which is exactly what this test does to it.
    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    async def test_broker_restarted_mid_run(
        self, testbed: TestBed, tmp_path: Path, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """Service Bus goes away and comes back: the relay backs off, reconnects, serves again."""
        domain = testbed.domain.dns_domain
        entities = writeback_queues([domain])
        first = LocalServiceBus(entities)
        first.start()
        port = int(first.connection_string.split(":")[2].split(";")[0])
        config_path, cloud_key = write_full_relay_config(
            testbed.dc, testbed.domain, tmp_path, first.connection_string, relay_id="relay-bus"
        )
        relay = bootstrap.build(Config.load(config_path, environ={}))
        stop = asyncio.Event()
        running = asyncio.create_task(relay.agent.run(stop))
        keys = sealing.public_keyset(KeyStore(tmp_path / "keys").public_jwks(), "keys")
        user = new_user("busout")
        second = LocalServiceBus(entities, port=port)
        try:
            await asyncio.sleep(1.0)  # the relay is connected and receiving
            await asyncio.to_thread(first.stop)
            deadline = time.monotonic() + 15
            while "Service Bus" not in (relay.agent.last_error or ""):
                assert time.monotonic() < deadline, "the relay never noticed the outage"
                await asyncio.sleep(0.1)
            await asyncio.to_thread(second.start)
            cloud = Cloud(
                ServiceBusCloud(
                    ServiceBusSettings(connection_string=second.connection_string), None
                ),
                cloud_key,
                keys,
                domain,
                second.connection_string,
            )
            outcome = await cloud.ask(Operation.RESET, user.upn, Secrets(NEW), wait=60)
            await cloud.transport.close()
        finally:
            stop.set()
            await running
            await relay.close()
            await asyncio.to_thread(second.stop)
            gc.collect()  # reap the SDK's leaked socket here, under this test's warning filter
        assert outcome is not None
        assert outcome.reason is Reason.APPLIED
        assert can_bind(user, NEW)
