"""The `writeback` command line end to end: its own HTTP client → function_app.py on the local
Functions host → Service Bus (local broker) → relay process → Samba AD DC, and back. The CLI runs
in the test process (`main([...])`, stdin and environment patched), as an administrator would
run it against the API."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable

import pytest

from devstack import seed
from tests.e2e.conftest import LocalCloud
from writeback.client.cli import main

pytestmark = pytest.mark.timeout(300)
NEW = "Writeback-Admin-Pa55!"
SECOND = "Second-Admin-Pa55w0rd!"
SHORT = "Ab1!x"
USED: list[str] = [NEW, SECOND, SHORT]  # every password sent, scanned for in the logs
NewUser = Callable[..., seed.Account]
CanBind = Callable[[seed.Account, str], bool]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(
    ready: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Run:
    """Run `writeback` against the local stack: argv, then the text on stdin, if any; the exit
    code, stdout and stderr."""
    monkeypatch.setenv("WRITEBACK_API_URL", ready.url)
    monkeypatch.setenv("WRITEBACK_API_KEY", ready.api_key)
    monkeypatch.delenv("WRITEBACK_TOKEN", raising=False)

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


class TestCommands:
    def test_a_reset_is_applied_and_its_status_is_completed(
        self, cli: Run, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A reset with --password-stdin is applied in AD, and `status` of its request id shows
        it completed and applied."""
        user = new_user("cmdreset")
        code, out, _ = cli("--json", "reset", user.upn, "--unlock", "--password-stdin", stdin=NEW)
        answer = json.loads(out)
        assert (code, answer["status"], answer["reason"]) == (0, "applied", "applied")
        assert can_bind(user, NEW)
        code, out, _ = cli("status", answer["requestId"])
        assert code == 0
        assert out.splitlines()[:2] == ["status:   applied", "reason:   applied"]
        assert f"request:  {answer['requestId']}" in out
        code, out, _ = cli("status", answer["requestId"], "--wait", "5", "--json")
        assert (code, json.loads(out)["state"]) == (0, "completed")

    def test_a_change_and_an_unlock(self, cli: Run, new_user: NewUser, can_bind: CanBind) -> None:
        """A change reads the current and the new password from stdin; an unlock needs none."""
        user = new_user("cmdchange")
        code, out, _ = cli(
            "change", user.upn, "--password-stdin", stdin=f"{user.password}\n{SECOND}\n"
        )
        assert (code, out.splitlines()[0]) == (0, "status:   applied")
        assert can_bind(user, SECOND)
        code, out, _ = cli("unlock", user.upn)
        assert (code, out.splitlines()[0]) == (0, "status:   applied")

    def test_a_rejection_exits_1_with_its_reason(self, cli: Run, new_user: NewUser) -> None:
        """A password the domain's policy refuses is printed as rejected, exit 1."""
        user = new_user("cmdreject")
        code, out, _ = cli("reset", user.upn, "--password-stdin", stdin=SHORT + "\n")
        assert code == 1
        assert out.splitlines()[:2] == ["status:   rejected", "reason:   policy.length"]

    def test_health_exits_0(self, cli: Run, ready: LocalCloud) -> None:
        """`health` lists the domain as ok, with its relay, and exits 0."""
        code, out, _ = cli("health")
        assert code == 0
        assert out.splitlines()[:2] == ["health:   ok", f"{ready.domain}: ok"]
        assert "relay-e2e" in out

    def test_a_wrong_key_is_one_line(self, cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
        """The API's 401 for a wrong key is one line naming the variable, exit 1."""
        monkeypatch.setenv("WRITEBACK_API_KEY", "not-the-key-" + "x" * 30)
        code, out, err = cli("health")
        assert (code, out) == (1, "")
        assert err.startswith("writeback: not authenticated: ")
        assert err.rstrip().endswith("check WRITEBACK_API_KEY")

    def test_an_unknown_domain_names_the_field(self, cli: Run) -> None:
        """A user whose suffix routes to no domain is the API's 400 naming `user`, exit 2."""
        code, _, err = cli("unlock", "someone@unknown.example")
        assert code == 2
        assert "field user:" in err
        assert "user.unknown_domain" in err


class TestNoSecrets:
    def test_no_password_or_key_in_any_log(self, local_cloud: LocalCloud) -> None:
        """No log line of the host or the relay holds a password sent by the CLI or the key."""
        text = local_cloud.log_text()
        for secret in {*USED, local_cloud.api_key}:
            assert secret not in text
