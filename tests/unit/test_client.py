"""The `writeback` command line against a real local HTTP server that answers like the API.

The server (http.server on 127.0.0.1, a free port) serves canned JSON per route and records every
request it receives, so the tests see exactly what the client sends: the headers, the path and
the body. They prove the exit codes and the one-line messages, that secrets never come from
arguments, and that a password appears nowhere but in the JSON body of its one request.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from writeback.client import api, arguments
from writeback.client.cli import main

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
KEY = "unit-test-api-key-0123456789abcdefghij"
TOKEN = "eyJ0eXAiOiJKV1QifQ.unit-test-token.signature"
NEW = "Client-New-Pa55!"
OLD = "Client-Old-Pa55!"
RESET = "/api/v1/passwords/reset"
CHANGE = "/api/v1/passwords/change"
UNLOCK = "/api/v1/accounts/unlock"
EXPIRE = "/api/v1/passwords/expire"
HEALTH = "/api/v1/health"
USER = "alice@corp.example.com"
Body = dict[str, Any] | bytes | Callable[["Recorded"], dict[str, Any]]


@dataclass
class Recorded:
    """One request as the server received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.body)
        return answer


@dataclass
class FakeApi:
    """Canned answers per (method, path), in order (the last one repeats), and what came in."""

    url: str = ""
    routes: dict[tuple[str, str], list[tuple[int, Body, dict[str, str], float]]] = field(
        default_factory=dict
    )
    requests: list[Recorded] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    def answer(
        self,
        method: str,
        path: str,
        status: int,
        body: Body,
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0,
    ) -> None:
        self.routes.setdefault((method, path), []).append((status, body, headers or {}, delay))

    def reply(self, recorded: Recorded) -> tuple[int, bytes, dict[str, str], float]:
        answers = self.routes.get((recorded.method, recorded.path))
        if not answers:
            return 404, b"<html>no such route</html>", {"Content-Type": "text/html"}, 0
        status, body, headers, delay = answers.pop(0) if len(answers) > 1 else answers[0]
        if callable(body):
            body = body(recorded)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return status, raw, {"Content-Type": "application/json", **headers}, delay


def serve(fake: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.handle_call()

        def do_POST(self) -> None:
            self.handle_call()

        def handle_call(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            headers = {name.lower(): value for name, value in self.headers.items()}
            recorded = Recorded(self.command, self.path, headers, self.rfile.read(length))
            fake.requests.append(recorded)
            status, raw, headers, delay = fake.reply(recorded)
            fake.released.wait(delay)
            with contextlib.suppress(OSError):  # a client that gave up has closed the socket
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read the client's stderr, not the server's."""

    return Handler


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    """A fake API on a free loopback port; the environment points the client at it."""
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), serve(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("WRITEBACK_API_URL", fake.url)
    monkeypatch.setenv("WRITEBACK_API_KEY", KEY)
    monkeypatch.delenv("WRITEBACK_TOKEN", raising=False)
    monkeypatch.setattr(api, "POLL_SECONDS", 0.05)
    try:
        yield fake
    finally:
        fake.released.set()
        server.shutdown()
        server.server_close()


def outcome(
    status: str = "applied",
    reason: str = "applied",
    message: str = "Your password has been updated.",
    state: str = "completed",
) -> Callable[[Recorded], dict[str, Any]]:
    """An outcome body for the request id the client sent or asked about (as the API answers)."""

    def body(request: Recorded) -> dict[str, Any]:
        request_id = request.json()["requestId"] if request.body else request.path.split("/")[-1]
        return {
            "requestId": request_id, "state": state,
            "status": status, "reason": reason, "message": message, "durationMs": 412,
        }  # fmt: skip

    return body


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def prompts(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Answer getpass with `answers` in order; the prompts shown are returned as they come."""
    shown: list[str] = []
    queue = list(answers)

    def fake_getpass(prompt: str = "Password: ", stream: Any = None) -> str:
        shown.append(prompt)
        return queue.pop(0)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    return shown


def assert_only_in_body(fake: FakeApi, output: str, *secrets: str) -> None:
    """No secret in the output, a request line or a header; each only inside a JSON body."""
    for secret in secrets:
        assert secret not in output
        for recorded in fake.requests:
            assert secret not in recorded.path
            assert secret not in json.dumps(recorded.headers)
            if secret.encode() in recorded.body:
                values = recorded.json()
                assert secret in (values.get("newPassword"), values.get("oldPassword"))


class TestArguments:
    def test_a_user_is_named_by_any_account_reference_in_its_canonical_spelling(self) -> None:
        """A SID, an immutable ID and a down-level name are taken like a UPN and sent as the API
        spells them (an immutable ID as its GUID, the NetBIOS name in upper case)."""
        parser = arguments.build_parser()
        for given, sent in (
            ("s-1-5-21-1-2-3-1104", "S-1-5-21-1-2-3-1104"),
            ("4AQlP4lP00GaDAMF6CwzAQ==", "3f2504e0-4f89-41d3-9a0c-0305e82c3301"),
            ("corp\\alice", "CORP\\alice"),
        ):
            assert parser.parse_args(["unlock", given]).user == sent

    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["reset"], "USER"),
            (["reset", "alice"], "argument USER: must name a user: a UPN (name@suffix)"),
            (["reset", USER, "--admin", "--self-service"], "--self-service"),
            (["status", "short"], "argument REQUEST_ID"),
            (["status", "req/../../health"], "argument REQUEST_ID"),
            (["status", "req-00000001", "--wait", "-1"], "argument --wait"),
            (["status", "req-00000001", "--wait", "soon"], "argument --wait"),
            (["--timeout", "0", "health"], "argument --timeout"),
            (["health", "--json=yes"], "argument --json: takes no value"),
            (["rotate"], "argument COMMAND"),
            ([], "COMMAND"),
        ],
    )
    def test_bad_arguments_exit_2_naming_the_option(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
    ) -> None:
        """A bad or missing argument exits 2 with a message naming it, and sends nothing."""
        assert main(argv) == 2
        assert named in capsys.readouterr().err
        assert fake_api.requests == []

    @pytest.mark.parametrize(
        "argv",
        [
            ["reset", USER, NEW],
            ["reset", USER, f"--password={NEW}"],
            ["change", USER, "--password-stdin", OLD, NEW],
            ["--password", NEW, "reset", USER],
        ],
    )
    def test_a_password_is_never_an_argument_and_never_echoed(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str], argv: list[str]
    ) -> None:
        """There is no password option; a password given as an argument is refused (exit 2)
        without being repeated in the error."""
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert "unrecognized arguments" in captured.err or "invalid choice" in captured.err
        assert NEW not in captured.out + captured.err
        assert OLD not in captured.out + captured.err
        assert fake_api.requests == []

    def test_help_says_why_secrets_are_not_arguments(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--help explains that the command line is visible to every local user."""
        assert main(["--help"]) == 0
        assert "visible\nto every local user" in capsys.readouterr().out

    def test_global_options_may_follow_the_command(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--url (and the other global options) work after the command too."""
        monkeypatch.delenv("WRITEBACK_API_URL")
        fake_api.answer("GET", HEALTH, 200, {"status": "ok", "domains": []})
        assert main(["health", "--url", fake_api.url, "--timeout", "5"]) == 0


class TestConfiguration:
    def test_no_url_names_the_variable(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --url or WRITEBACK_API_URL the client exits 2 naming both."""
        monkeypatch.delenv("WRITEBACK_API_URL")
        assert main(["health"]) == 2
        err = capsys.readouterr().err
        assert "WRITEBACK_API_URL" in err
        assert "--url" in err
        assert "Traceback" not in err

    def test_no_credential_names_the_variables(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without a key, a token or a token file the client exits 2 naming where to put one."""
        monkeypatch.delenv("WRITEBACK_API_KEY")
        assert main(["health"]) == 2
        err = capsys.readouterr().err
        assert all(name in err for name in ("WRITEBACK_API_KEY", "WRITEBACK_TOKEN", "--token-file"))
        assert fake_api.requests == []

    def test_a_key_and_a_token_together_are_ambiguous(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Both WRITEBACK_API_KEY and WRITEBACK_TOKEN set is a usage error, not a guess."""
        monkeypatch.setenv("WRITEBACK_TOKEN", TOKEN)
        assert main(["health"]) == 2
        assert "both set" in capsys.readouterr().err

    def test_the_key_is_sent_as_x_functions_key(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """WRITEBACK_API_KEY travels in x-functions-key, and is never printed."""
        fake_api.answer("GET", HEALTH, 200, {"status": "ok", "domains": []})
        assert main(["health"]) == 0
        assert fake_api.requests[0].headers["x-functions-key"] == KEY
        assert "authorization" not in fake_api.requests[0].headers
        captured = capsys.readouterr()
        assert KEY not in captured.out + captured.err

    def test_a_token_is_sent_as_a_bearer(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """WRITEBACK_TOKEN travels as Authorization: Bearer."""
        monkeypatch.delenv("WRITEBACK_API_KEY")
        monkeypatch.setenv("WRITEBACK_TOKEN", TOKEN)
        fake_api.answer("GET", HEALTH, 200, {"status": "ok", "domains": []})
        assert main(["health"]) == 0
        assert fake_api.requests[0].headers["authorization"] == f"Bearer {TOKEN}"

    def test_a_token_file_wins_over_the_environment(
        self, fake_api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--token-file is read (whitespace trimmed) and sent as the bearer token, not the key."""
        path = tmp_path / "token"
        path.write_text(TOKEN + "\n")
        path.chmod(0o600)
        fake_api.answer("GET", HEALTH, 200, {"status": "ok", "domains": []})
        assert main(["--token-file", str(path), "health"]) == 0
        headers = fake_api.requests[0].headers
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert "x-functions-key" not in headers
        assert "warning" not in capsys.readouterr().err

    def test_a_token_file_others_can_read_is_warned_about(
        self, fake_api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A token file with group or other permissions works, with a warning to chmod it."""
        path = tmp_path / "token"
        path.write_text(TOKEN)
        path.chmod(0o644)
        fake_api.answer("GET", HEALTH, 200, {"status": "ok", "domains": []})
        assert main(["--token-file", str(path), "health"]) == 0
        assert "readable by others" in capsys.readouterr().err

    @pytest.mark.parametrize("content", [None, "", "two words"])
    def test_an_unusable_token_file_names_the_option(
        self,
        fake_api: FakeApi,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        content: str | None,
    ) -> None:
        """A missing, empty or malformed token file exits 2 naming --token-file."""
        path = tmp_path / "token"
        if content is not None:
            path.write_text(content)
        assert main(["--token-file", str(path), "health"]) == 2
        assert capsys.readouterr().err.startswith("writeback: --token-file: ")
        assert fake_api.requests == []


class TestUrl:
    @pytest.mark.parametrize(
        "url",
        ["http://192.0.2.10/api", "http://writeback.example.com/api", "http://[2001:db8::1]/"],
    )
    def test_plain_http_to_another_host_is_refused(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str], url: str
    ) -> None:
        """http:// to anything but loopback exits 2 and says the key would travel in clear."""
        assert main(["--url", url, "health"]) == 2
        err = capsys.readouterr().err
        assert "--url" in err
        assert "in clear" in err

    def test_the_variable_is_named_when_it_holds_the_bad_url(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A refused URL from the environment names WRITEBACK_API_URL."""
        monkeypatch.setenv("WRITEBACK_API_URL", "http://writeback.example.com/api")
        assert main(["health"]) == 2
        assert "WRITEBACK_API_URL: http:// is only allowed" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("ftp://writeback.example.com/api", "https://"),
            ("https://admin:secret@writeback.example.com/api", "user name or password"),
            ("https://writeback.example.com/api?code=x", "query"),
            ("https://writeback.example.com:99999/api", "port"),
        ],
    )
    def test_other_unusable_urls_are_refused(self, url: str, problem: str) -> None:
        """Only http(s) URLs without credentials, query or a bad port are accepted."""
        with pytest.raises(api.InvalidSetting, match=problem):
            api.api_url(url)

    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:7071/api/", "http://localhost/api", "http://[::1]:8080/api"]
    )
    def test_plain_http_to_loopback_is_allowed(self, url: str) -> None:
        """The local stack (loopback) may be plain HTTP; the trailing slash is dropped."""
        assert api.api_url(url) == url.rstrip("/")

    def test_a_credential_never_shows_its_value(self) -> None:
        """A Credential's repr names its source, never its value."""
        credential = api.Credential.api_key(KEY, "WRITEBACK_API_KEY")
        assert KEY not in repr(credential)
        assert "WRITEBACK_API_KEY" in repr(credential)


class TestPasswords:
    def test_reset_from_stdin(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--password-stdin reads one line (CRLF trimmed) and sends an admin reset with a fresh
        request id; the password is only in the body."""
        fake_api.answer("POST", RESET, 200, outcome())
        stdin(monkeypatch, NEW + "\r\n")
        assert main(["reset", USER, "--password-stdin"]) == 0
        body = fake_api.requests[0].json()
        assert body == {
            "user": USER, "newPassword": NEW, "initiator": "admin", "unlock": False,
            "forceChangeAtNextLogon": False, "requestId": body["requestId"],
        }  # fmt: skip
        uuid.UUID(body["requestId"])
        captured = capsys.readouterr()
        assert_only_in_body(fake_api, captured.out + captured.err, NEW)
        assert KEY not in captured.out + captured.err

    def test_self_service_reset_with_unlock_and_force_change(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--self-service, --unlock and --force-change become the body's fields."""
        fake_api.answer("POST", RESET, 200, outcome())
        stdin(monkeypatch, NEW + "\n")
        argv = ["reset", USER, "--self-service", "--unlock", "--force-change", "--password-stdin"]
        assert main(argv) == 0
        body = fake_api.requests[0].json()
        assert (body["initiator"], body["unlock"], body["forceChangeAtNextLogon"]) == (
            "self-service", True, True,
        )  # fmt: skip

    def test_change_from_stdin_reads_current_then_new(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """For a change, stdin's first line is the current password and the second the new."""
        fake_api.answer("POST", CHANGE, 200, outcome())
        stdin(monkeypatch, f"{OLD}\n{NEW}\n")
        assert main(["change", USER, "--password-stdin"]) == 0
        body = fake_api.requests[0].json()
        assert (body["oldPassword"], body["newPassword"]) == (OLD, NEW)
        captured = capsys.readouterr()
        assert_only_in_body(fake_api, captured.out + captured.err, NEW, OLD)

    def test_password_stdin_on_a_terminal_prompts_instead(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--password-stdin with a terminal on stdin asks at the prompt, which does not echo."""
        fake_api.answer("POST", RESET, 200, outcome())
        terminal = io.StringIO("typed where everyone can see it\n")
        monkeypatch.setattr(terminal, "isatty", lambda: True)
        monkeypatch.setattr(sys, "stdin", terminal)
        shown = prompts(monkeypatch, NEW, NEW)
        assert main(["reset", USER, "--password-stdin"]) == 0
        assert len(shown) == 2
        assert fake_api.requests[0].json()["newPassword"] == NEW

    def test_stdin_ending_early_names_the_option(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A change with only one line on stdin exits 2 naming --password-stdin; nothing is sent."""
        stdin(monkeypatch, OLD + "\n")
        assert main(["change", USER, "--password-stdin"]) == 2
        captured = capsys.readouterr()
        assert "--password-stdin: stdin ended before the new password" in captured.err
        assert OLD not in captured.out + captured.err
        assert fake_api.requests == []

    def test_the_prompt_asks_twice_for_a_new_password(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --password-stdin the new password is asked twice, without echo."""
        fake_api.answer("POST", RESET, 200, outcome())
        shown = prompts(monkeypatch, NEW, NEW)
        assert main(["reset", USER]) == 0
        assert shown == [f"New password for {USER}: ", "Repeat the new password: "]
        assert fake_api.requests[0].json()["newPassword"] == NEW
        captured = capsys.readouterr()
        assert_only_in_body(fake_api, captured.out + captured.err, NEW)

    def test_change_asks_for_the_current_password_first(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A change prompts for the current password, then the new one twice."""
        fake_api.answer("POST", CHANGE, 200, outcome())
        shown = prompts(monkeypatch, OLD, NEW, NEW)
        assert main(["change", USER]) == 0
        assert shown[0] == f"Current password for {USER}: "
        assert fake_api.requests[0].json()["oldPassword"] == OLD

    def test_mismatched_entries_exit_2_and_send_nothing(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two different entries at the prompt exit 2, say so, and send nothing."""
        prompts(monkeypatch, NEW, NEW + "x")
        assert main(["reset", USER]) == 2
        captured = capsys.readouterr()
        assert "the two entries differ" in captured.err
        assert NEW not in captured.out + captured.err
        assert fake_api.requests == []

    @pytest.mark.parametrize(
        ("entered", "problem"), [("", "is empty"), ("a\x00b", "NUL"), ("x" * 257, "UTF-16")]
    )
    def test_an_impossible_password_is_refused_before_sending(
        self,
        fake_api: FakeApi,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        entered: str,
        problem: str,
    ) -> None:
        """An empty, NUL-bearing or over-long password exits 2 naming it; nothing is sent."""
        stdin(monkeypatch, entered + "\n")
        assert main(["reset", USER, "--password-stdin"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("writeback: new password: ")
        assert problem in err
        assert fake_api.requests == []

    def test_no_terminal_for_the_prompt_points_to_password_stdin(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """When getpass cannot turn echo off (no terminal) the client refuses instead of reading
        the password with echo, naming --password-stdin."""

        def echoing_getpass(prompt: str = "", stream: Any = None) -> str:
            warnings.warn("Can not control echo on the terminal.", getpass.GetPassWarning, 2)
            return NEW

        monkeypatch.setattr(getpass, "getpass", echoing_getpass)
        assert main(["reset", USER]) == 2
        assert "--password-stdin" in capsys.readouterr().err
        assert fake_api.requests == []


class TestOutcomes:
    @pytest.mark.parametrize(
        ("http_status", "status", "reason", "code"),
        [
            (200, "applied", "applied", 0),
            (422, "rejected", "policy.length", 1),
            (502, "failed", "directory.unavailable", 1),
            (503, "failed", "agent.unavailable", 1),
        ],
    )
    def test_each_outcome_is_printed_with_its_exit_code(  # noqa: PLR0917 - pytest injects fixtures positionally
        self,
        fake_api: FakeApi,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        http_status: int,
        status: str,
        reason: str,
        code: int,
    ) -> None:
        """Status, reason, message, request id and duration are printed; only applied exits 0."""
        fake_api.answer("POST", RESET, http_status, outcome(status, reason, "A sentence."))
        stdin(monkeypatch, NEW + "\n")
        assert main(["reset", USER, "--password-stdin"]) == code
        out = capsys.readouterr().out
        request_id = fake_api.requests[0].json()["requestId"]
        assert out.splitlines() == [
            f"status:   {status}", f"reason:   {reason}", "message:  A sentence.",
            f"request:  {request_id}", "duration: 412 ms",
        ]  # fmt: skip

    def test_a_pending_write_prints_the_command_to_follow_it(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """504 pending exits 1, says the request may still be applied and prints the exact
        `writeback status <id> --wait 60` command."""
        pending = outcome("pending", "agent.timeout", "Not yet.", state="pending")
        fake_api.answer("POST", UNLOCK, 504, pending, headers={"Location": "/api/v1/requests/x"})
        assert main(["unlock", USER]) == 1
        out = capsys.readouterr().out
        request_id = fake_api.requests[0].json()["requestId"]
        assert f"Follow it with:  writeback status {request_id} --wait 60\n" in out
        assert "may still be applied" in out

    def test_the_follow_command_repeats_the_url_given(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With --url on the command line, the follow-up command carries it too."""
        monkeypatch.delenv("WRITEBACK_API_URL")
        fake_api.answer("POST", UNLOCK, 504, outcome("pending", "agent.timeout", state="pending"))
        assert main(["--url", fake_api.url, "unlock", USER]) == 1
        request_id = fake_api.requests[0].json()["requestId"]
        expected = f"writeback status {request_id} --wait 60 --url {fake_api.url}"
        assert expected in capsys.readouterr().out

    def test_unlock_sends_only_the_user_and_an_id(self, fake_api: FakeApi) -> None:
        """An unlock's body is the user and the request id, nothing else."""
        fake_api.answer("POST", UNLOCK, 200, outcome(message="Unlocked."))
        assert main(["unlock", USER]) == 0
        assert set(fake_api.requests[0].json()) == {"user", "requestId"}

    def test_expire_sends_only_the_user_and_an_id(self, fake_api: FakeApi) -> None:
        """`writeback expire USER` posts the user and a request id to /passwords/expire."""
        fake_api.answer("POST", EXPIRE, 200, outcome(message="Change it at next logon."))
        assert main(["expire", USER]) == 0
        assert set(fake_api.requests[0].json()) == {"user", "requestId"}
        assert fake_api.requests[0].json()["user"] == USER

    def test_json_prints_the_raw_answer(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json prints the API's answer as JSON, and the exit code still follows the outcome."""
        fake_api.answer("POST", UNLOCK, 422, outcome("rejected", "account.disabled"))
        assert main(["--json", "unlock", USER]) == 1
        answer = json.loads(capsys.readouterr().out)
        assert answer["reason"] == "account.disabled"
        assert answer["requestId"] == fake_api.requests[0].json()["requestId"]

    def test_progress_is_shown_on_a_terminal(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """While waiting for the outcome a line on stderr says so, when stderr is a terminal."""
        fake_api.answer("POST", UNLOCK, 200, outcome())
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
        assert main(["unlock", USER]) == 0
        assert capsys.readouterr().err == "waiting for the on-premises agent…\n"

    def test_no_progress_when_not_a_terminal(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Piped or redirected, stderr stays empty on success."""
        fake_api.answer("POST", UNLOCK, 200, outcome())
        assert main(["unlock", USER]) == 0
        assert capsys.readouterr().err == ""


class TestApiErrors:
    @pytest.mark.parametrize(
        ("http_status", "body", "line", "code"),
        [
            (400, {"error": "user.unknown_domain", "message": "routes to no domain",
                   "field": "user"},
             "the API refused the request: field user: routes to no domain "
             "(user.unknown_domain)", 2),
            (401, {"error": "auth.invalid_key", "message": "The key is not valid."},
             "not authenticated: The key is not valid. (auth.invalid_key); "
             "check WRITEBACK_API_KEY", 1),
            (403, {"error": "auth.forbidden", "message": "Needs Writeback.Unlock."},
             "not allowed: Needs Writeback.Unlock. (auth.forbidden)", 1),
            (409, {"error": "request.duplicate", "message": "Already used."},
             "this request id was already used: Already used. (request.duplicate)", 1),
            (503, {"error": "service.unavailable", "message": "Not now."},
             "the writeback service is unavailable: Not now. (service.unavailable)", 1),
            (500, {"error": "internal", "message": "Unexpected failure (incident 1f)."},
             "the API answered HTTP 500: Unexpected failure (incident 1f). (internal)", 1),
        ],
    )  # fmt: skip
    def test_each_error_is_one_line_and_an_exit_code(  # noqa: PLR0917 - pytest injects fixtures positionally
        self,
        fake_api: FakeApi,
        capsys: pytest.CaptureFixture[str],
        http_status: int,
        body: dict[str, Any],
        line: str,
        code: int,
    ) -> None:
        """Each HTTP error the API answers becomes one line on stderr, without a traceback."""
        fake_api.answer("POST", UNLOCK, http_status, body)
        assert main(["unlock", USER]) == code
        captured = capsys.readouterr()
        assert captured.err.startswith(f"writeback: {line}")
        assert captured.err.count("\n") == 1
        assert captured.out == ""

    def test_an_unknown_request_id(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """404 request.unknown for a status names the request id and exits 1."""
        body = {"error": "request.unknown", "message": "No request with this id."}
        fake_api.answer("GET", "/api/v1/requests/req-00000404", 404, body)
        assert main(["status", "req-00000404"]) == 1
        assert capsys.readouterr().err.startswith("writeback: no request with id req-00000404")

    def test_json_prints_the_error_body_too(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With --json an error answer is printed as JSON on stdout, the line on stderr."""
        body = {"error": "auth.missing", "message": "No credential."}
        fake_api.answer("GET", HEALTH, 401, body)
        assert main(["health", "--json"]) == 1
        captured = capsys.readouterr()
        assert json.loads(captured.out) == body
        assert "not authenticated" in captured.err

    @pytest.mark.parametrize(
        ("status", "body", "headers", "problem"),
        [
            (502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}, "not JSON"),
            (200, b"[1, 2]", {}, "not a JSON object"),
            (200, {"hello": "world"}, {}, "not a health report"),
            (302, b"", {"Location": "https://login.example.com/"}, "not followed"),
        ],
    )
    def test_an_answer_that_is_not_the_apis(  # noqa: PLR0917 - pytest injects fixtures positionally
        self,
        fake_api: FakeApi,
        capsys: pytest.CaptureFixture[str],
        status: int,
        body: Body,
        headers: dict[str, str],
        problem: str,
    ) -> None:
        """A page, a non-object or a redirect (never followed) is one line naming the URL."""
        fake_api.answer("GET", HEALTH, status, body, headers=headers)
        assert main(["health"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"writeback: unexpected answer from {fake_api.url}/v1/health")
        assert problem in err
        assert len(fake_api.requests) == 1


class TestNetwork:
    def test_connection_refused_names_the_url(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Nothing listening: one line naming the URL, exit 1."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
        monkeypatch.setenv("WRITEBACK_API_URL", url)
        monkeypatch.setenv("WRITEBACK_API_KEY", KEY)
        assert main(["health"]) == 1
        assert capsys.readouterr().err == f"writeback: cannot reach {url}: connection refused\n"

    def test_a_write_that_times_out_can_still_be_followed(
        self, fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No answer within --timeout: one line naming the URL, and the status command for the
        request id, which may still be applied."""
        fake_api.answer("POST", RESET, 200, outcome(), delay=3)
        stdin(monkeypatch, NEW + "\n")
        assert main(["--timeout", "1", "reset", USER, "--password-stdin"]) == 1
        err = capsys.readouterr().err
        request_id = fake_api.requests[0].json()["requestId"]
        assert err.splitlines() == [
            f"writeback: cannot reach {fake_api.url}: no answer within 1 s",
            f"the request may still be applied; follow it with:  "
            f"writeback status {request_id} --wait 60",
        ]
        assert NEW not in err


class TestStatus:
    def test_a_completed_request(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """status prints a completed request's outcome; applied exits 0."""
        fake_api.answer("GET", "/api/v1/requests/req-00000001", 200, outcome())
        assert main(["status", "req-00000001"]) == 0
        assert "status:   applied" in capsys.readouterr().out

    def test_wait_polls_until_completed(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--wait polls while the request is pending and stops at its outcome."""
        path = "/api/v1/requests/req-00000002"
        for _ in range(2):
            fake_api.answer("GET", path, 200, outcome("pending", "agent.timeout", state="pending"))
        fake_api.answer("GET", path, 200, outcome("rejected", "policy.history"))
        assert main(["status", "req-00000002", "--wait", "30"]) == 1
        assert len(fake_api.requests) == 3
        assert "reason:   policy.history" in capsys.readouterr().out

    def test_still_pending_when_the_wait_ends(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A request still pending when --wait ends exits 1 and says how to follow it."""
        path = "/api/v1/requests/req-00000003"
        fake_api.answer("GET", path, 200, outcome("pending", "agent.timeout", state="pending"))
        started = time.monotonic()
        assert main(["status", "req-00000003", "--wait", "0.3"]) == 1
        assert 0.3 <= time.monotonic() - started < 10
        out = capsys.readouterr().out
        assert "status:   pending" in out
        assert "writeback status req-00000003 --wait 60" in out


class TestHealth:
    def report(self, state: str, error: str | None = None) -> dict[str, Any]:
        relay = {"relay": "relay-dc1", "version": "0.1.0", "lastHeartbeat": time.time() - 3,
                 "fresh": state == "ok", "capabilities": {}, "lastError": error}  # fmt: skip
        return {"status": state, "domains": [{"domain": "corp.example.com", "state": state,
                                              "relays": [relay]}]}  # fmt: skip

    def test_ok_exits_0_and_lists_the_relays(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A healthy API exits 0 and prints each domain and relay."""
        fake_api.answer("GET", HEALTH, 200, self.report("ok"))
        assert main(["health"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[:2] == ["health:   ok", "corp.example.com: ok"]
        assert lines[2].startswith("  relay-dc1 0.1.0: fresh, last heartbeat ")

    @pytest.mark.parametrize("state", ["degraded", "offline"])
    def test_not_ok_exits_1(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str], state: str
    ) -> None:
        """Degraded or offline exits 1, with the relay's last error."""
        fake_api.answer("GET", HEALTH, 200, self.report(state, "LDAPS refused"))
        assert main(["health"]) == 1
        assert "stale, last heartbeat" in capsys.readouterr().out

    def test_server_text_cannot_drive_the_terminal(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Control and format characters in the API's text are not printed as they are."""
        fake_api.answer("GET", HEALTH, 200, self.report("degraded", "\x1b[2J\u202eevil\r\nx"))
        assert main(["health"]) == 1
        out = capsys.readouterr().out
        assert not {"\x1b", "\u202e", "\r"} & set(out)
        assert "evil" in out


class TestHistory:
    PATH = "/api/v1/users/alice%40corp.example.com/requests?hours={hours}"

    def test_lists_a_users_requests_newest_first(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One line per request: time (UTC), operation, source, status, reason, request id."""
        entries = [
            {"requestId": "req-2", "receivedAt": 1767225660.5, "operation": "change",
             "source": "api", "status": "rejected", "reason": "old_password.mismatch"},
            {"requestId": "req-1", "receivedAt": 1767225600.0, "operation": "drift",
             "source": "entra-audit", "status": "failed", "reason": "password.drift"},
        ]  # fmt: skip
        fake_api.answer("GET", self.PATH.format(hours=48), 200, {"requests": entries})
        assert main(["history", USER, "--hours", "48"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("2026-01-01 00:01:00Z  change")
        assert "old_password.mismatch" in lines[0]
        assert lines[0].endswith("req-2")
        assert "entra-audit" in lines[1]
        assert "password.drift" in lines[1]

    def test_no_requests_says_so_and_json_prints_the_list(
        self, fake_api: FakeApi, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake_api.answer("GET", self.PATH.format(hours=24), 200, {"requests": []})
        assert main(["history", USER]) == 0
        assert "no requests for alice@corp.example.com in the last 24 h" in capsys.readouterr().out
        assert main(["--json", "history", USER]) == 0
        assert json.loads(capsys.readouterr().out) == []

    @pytest.mark.parametrize("hours", ["0", "169", "1.5", "-3", "\u00b2"])
    def test_hours_out_of_range_is_a_usage_error(
        self, hours: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["history", USER, "--hours", hours]) == 2
        assert "from 1 to 168" in capsys.readouterr().err


class TestInstallation:
    def test_the_client_needs_only_the_standard_library(self) -> None:
        """The CLI imports and runs with site-packages disabled: no extra package is needed."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
        code = (
            "import sys; sys.path.insert(0, '.'); from writeback.client.cli import main; "
            "sys.exit(main(sys.argv[1:], {'WRITEBACK_API_KEY': 'k'}))"
        )
        done = subprocess.run(
            [sys.executable, "-S", "-c", code, "--url", url, "health"], cwd=ROOT,
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (
            1, f"writeback: cannot reach {url}: connection refused\n",
        )  # fmt: skip

    def test_the_console_script_is_declared(self) -> None:
        """pyproject.toml installs the `writeback` command from this module."""
        with (ROOT / "pyproject.toml").open("rb") as handle:
            scripts = tomllib.load(handle)["project"]["scripts"]
        assert scripts["writeback"] == "writeback.client.cli:main"
