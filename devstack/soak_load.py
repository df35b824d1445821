"""The chaos soak's workload: writes through the HTTP API, one user at a time, with the DC read
before and after each.

A pool of seeded users is shared by `concurrency` callers; a caller takes an idle user, sends one
write for it (chosen by a `random.Random` seeded with the run's seed and the write's number) and
follows it to a final outcome as a careful caller would: the same request id again after `503
agent.unavailable` / `transport.unavailable` or a broken connection, and `GET
/api/v1/requests/{id}` after a `504` pending or a `409` (its first try did arrive). Operations for
one user are sequential, so the version of the user's `unicodePwd` in the DC's replication
metadata, read before and after, says exactly how many times that request wrote a password. The
soak knows every password it sends; it never logs or prints one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import queue
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from http.client import HTTPException
from typing import Any

from devstack import seed
from devstack.samba import SambaDC
from devstack.soak_directory import DirectoryProbe

RESENDABLE = {"agent.unavailable", "transport.unavailable"}  # docs/api.md: same id again
# operation label: (weight, HTTP path, the reason expected when no fault gets in the way)
OPERATIONS: dict[str, tuple[int, str, str]] = {
    "admin reset": (22, "v1/passwords/reset", "applied"),
    "self-service reset": (14, "v1/passwords/reset", "applied"),
    "change": (24, "v1/passwords/change", "applied"),
    "unlock": (10, "v1/accounts/unlock", "applied"),
    "expire": (8, "v1/passwords/expire", "applied"),
    "too short": (8, "v1/passwords/reset", "policy.length"),
    "wrong current": (6, "v1/passwords/change", "old_password.mismatch"),
}
MAX_MISMATCHES = 2  # per user and run: well below the lockout threshold (5) and the throttle


@dataclasses.dataclass
class PoolUser:
    """A soak user and what the soak knows of it: its password, and whether AD makes it change
    that password at next logon."""

    account: seed.Account
    password: str
    must_change: bool = False
    mismatches: int = 0
    initial_version: int = 0


@dataclasses.dataclass
class Sent:
    """One write: what was sent, every answer the caller got, and the DC before and after."""

    number: int
    request_id: str
    operation: str
    user: str  # the UPN
    new_password: str | None
    force_change: bool
    expected: str
    answers: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    final: dict[str, Any] | None = None
    final_status: int = 0
    version_before: int = 0
    version_after: int = 0
    pwd_last_set_after: str = ""

    @property
    def writes_password(self) -> bool:
        return self.new_password is not None and self.expected == "applied"

    @property
    def written(self) -> int:
        """How many times the DC's unicodePwd changed while this request was the user's."""
        return self.version_after - self.version_before


class Caller:
    """The API's HTTP caller: sends a write and follows it to its final answer."""

    def __init__(self, url: str, api_key: str, deadline: float) -> None:
        self.url = url
        self.api_key = api_key
        self.deadline = deadline

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"x-functions-key": self.api_key, "Content-Type": "application/json"}
        request = urllib.request.Request(  # noqa: S310 - http to the local host
            f"{self.url}/{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - see above
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw or b"{}")
            except ValueError:
                return error.code, {}

    def follow(self, sent: Sent, path: str, body: dict[str, Any]) -> None:
        """Send, resend and poll until the request's answer is final or the deadline passes."""
        until = time.monotonic() + self.deadline
        posting = True
        while time.monotonic() < until:
            try:
                if posting:
                    status, answer = self.call("POST", path, body)
                else:
                    status, answer = self.call("GET", f"v1/requests/{sent.request_id}")
            except (OSError, HTTPException, ValueError):
                sent.answers.append((0, "connection"))
                time.sleep(0.3)  # the host's storage or broker is restarting: try again
                continue
            reason = str(answer.get("reason") or answer.get("error") or "")
            sent.answers.append((status, reason))
            if reason not in RESENDABLE:
                sent.final = None  # a 503 answered earlier is not the last word any more
            if status == 409 and reason == "request.duplicate":
                posting = False  # it arrived before: look it up
            elif status == 404 and not posting:
                posting = True  # never recorded: send it again
            elif reason in RESENDABLE:
                sent.final, sent.final_status = answer, status  # final unless a resend lands
                time.sleep(0.3)
            elif answer.get("state") == "completed":
                sent.final, sent.final_status = answer, status
                return
            elif answer.get("state") == "pending":
                posting = False
            else:
                time.sleep(0.3)  # 5xx without an outcome (storage down): the same id again


def new_password(number: int) -> str:
    return f"Sk{number:05d}-{secrets.token_hex(3)}!aA"


def choose(rng: random.Random, user: PoolUser) -> str:
    """The next operation for a user: weighted, within the limits that keep outcomes known."""
    while True:
        names = list(OPERATIONS)
        operation = rng.choices(names, [OPERATIONS[n][0] for n in names])[0]
        if operation == "wrong current" and user.mismatches >= MAX_MISMATCHES:
            continue
        return operation


def plan(number: int, operation: str, user: PoolUser, rng: random.Random) -> tuple[Sent, dict]:
    """The request to send, and the record of it."""
    upn = user.account.upn
    request_id = f"soak-{uuid.uuid4()}"
    body: dict[str, Any] = {"user": upn, "requestId": request_id}
    password: str | None = None
    force = False
    if operation in ("admin reset", "self-service reset", "too short"):
        password = f"q{number % 10000:04d}Z!" if operation == "too short" else new_password(number)
        admin = operation != "self-service reset"
        force = admin and rng.random() < 0.3
        body |= {"newPassword": password, "initiator": "admin" if admin else "self-service"}
        if admin:
            body |= {"unlock": rng.random() < 0.5, "forceChangeAtNextLogon": force}
    elif operation in ("change", "wrong current"):
        password = new_password(number)
        old = user.password if operation == "change" else f"Wrong-{secrets.token_hex(4)}9!"
        body |= {"oldPassword": old, "newPassword": password}
    expected = OPERATIONS[operation][2]
    sent = Sent(number, request_id, operation, upn, password, force, expected)
    return sent, body


@dataclasses.dataclass
class Workload:
    """The run's users and every write sent, with the passwords the log scan looks for."""

    users: dict[str, PoolUser]
    sent: list[Sent] = dataclasses.field(default_factory=list)
    passwords: set[str] = dataclasses.field(default_factory=set)


def create_users(dc: SambaDC, domain: seed.SeededDomain, count: int) -> Workload:
    """`count` fresh users in the writeback OU, each with its own known password."""
    admin = dc.admin_connection()
    probe = DirectoryProbe(dc)
    workload = Workload({})
    try:
        for index in range(count):
            password = new_password(90000 + index)
            account = seed.create_user(
                admin, domain.users_ou, domain.dns_domain, seed.unique_name("soak"), password
            )
            version, _ = probe.read(account.dn)
            workload.users[account.upn] = PoolUser(account, password, initial_version=version)
            workload.passwords.add(password)
    finally:
        admin.unbind()
        probe.close()
    return workload


def run(
    workload: Workload,
    caller: Caller,
    probe: DirectoryProbe,
    *,
    writes: int,
    concurrency: int,
    seed_value: int,
    progress: Callable[[int], None] = lambda done: None,
) -> None:
    """Send `writes` writes at `concurrency`, one user at a time; fills `workload.sent`."""
    idle: queue.Queue[PoolUser] = queue.Queue()
    users = list(workload.users.values())
    for user in random.Random(seed_value).sample(users, len(users)):  # noqa: S311 - reproducible
        idle.put(user)
    numbers = itertools.count()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def one(number: int, user: PoolUser) -> None:
        rng = random.Random(f"{seed_value}:{number}")  # noqa: S311 - a reproducible choice
        operation = choose(rng, user)
        sent, body = plan(number, operation, user, rng)
        with lock:
            workload.passwords.update(body.get(k) or "" for k in ("newPassword", "oldPassword"))
            workload.passwords.discard("")
        if operation == "wrong current":
            user.mismatches += 1
        sent.version_before, _ = probe.read(user.account.dn)
        caller.follow(sent, OPERATIONS[operation][1], body)
        sent.version_after, sent.pwd_last_set_after = probe.read(user.account.dn)
        learn(user, sent)
        with lock:
            workload.sent.append(sent)
            progress(len(workload.sent))

    def work() -> None:
        while not errors:
            with lock:
                number = next(numbers)
            if number >= writes:
                return
            user = idle.get()
            try:
                one(number, user)
            except BaseException as exc:  # a probe past its deadline: stop the run, report it
                errors.append(exc)
            finally:
                idle.put(user)

    threads = [threading.Thread(target=work, name=f"soak-caller-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def learn(user: PoolUser, sent: Sent) -> None:
    """What the DC now holds for the user: a password written while this request was the user's
    is this request's (one write per user at a time); expire and must-change from pwdLastSet."""
    if sent.new_password is not None and sent.written >= 1:
        user.password = sent.new_password
    user.must_change = sent.pwd_last_set_after == "0"
