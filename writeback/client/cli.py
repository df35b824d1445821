"""`writeback`: the administrators' command line for the writeback API.

Thin: parse arguments (`writeback.client.arguments`), take the URL and the credential from the
environment (or --token-file), ask for the passwords, call one method of
`writeback.client.api.Client`, print the outcome and map it to an exit code: 0 applied (or
healthy), 1 not applied, pending, unreachable or degraded, 2 a usage error, named. Secrets are
never arguments (every local user can read a process's command line), and a password is never
printed, logged or put in a message.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sys
import time
import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from writeback.client import api, entra, signin
from writeback.client.arguments import KEY_ENV, TOKEN_ENV, URL_ENV, build_parser
from writeback.protocol.messages import password_problem

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
FOLLOW_SECONDS = 60
WAITING = "waiting for the on-premises agent…"


def _prompt(prompt: str) -> str:
    with warnings.catch_warnings():
        # Without a terminal getpass would read stdin with echo on: refuse instead.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return getpass.getpass(prompt)
        except getpass.GetPassWarning:
            raise api.InvalidSetting(
                "--password-stdin", "no terminal to ask on: give the password on stdin"
            ) from None
        except EOFError:
            raise api.InvalidSetting("password", "none was entered; nothing was sent") from None


def _stdin_line(what: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise api.InvalidSetting("--password-stdin", f"stdin ended before {what}")
    return line.removesuffix("\n").removesuffix("\r")


def _passwords(args: argparse.Namespace, *, current: bool) -> tuple[str, str]:
    """The current password (or "" for a reset) and the new one, from stdin or the prompt."""
    # On a terminal stdin would echo what is typed: the prompt asks without echo instead.
    if args.password_stdin and not sys.stdin.isatty():
        old = _stdin_line("the current password") if current else ""
        new = _stdin_line("the new password")
    else:
        old = _prompt(f"Current password for {args.user}: ") if current else ""
        new = _prompt(f"New password for {args.user}: ")
        if _prompt("Repeat the new password: ") != new:
            raise api.InvalidSetting("password", "the two entries differ; nothing was sent")
    checks = [("current password", old)] if current else []
    for what, value in [*checks, ("new password", new)]:
        if problem := password_problem(value):
            raise api.InvalidSetting(what, f"{problem}; nothing was sent")
    return old, new


def _clean(text: object) -> str:
    """Server text as one safe line: no control or format characters reach the terminal."""
    return "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(text)).strip()


def _waiting(args: argparse.Namespace, what: str = WAITING) -> None:
    if sys.stderr.isatty() and not args.json:
        print(what, file=sys.stderr, flush=True)


def _follow(args: argparse.Namespace, request_id: str) -> str:
    """The exact command that polls `request_id`, with the options this one was given."""
    words = ["writeback", "status", _clean(request_id), "--wait", str(FOLLOW_SECONDS)]
    if args.url:
        words += ["--url", args.url]
    if args.token_file:
        words += ["--token-file", str(args.token_file)]
    if args.auth:
        words += ["--auth", args.auth]
    return shlex.join(words)


def _report(args: argparse.Namespace, answer: api.Answer) -> int:
    if args.json:
        print(json.dumps(answer.body, indent=2))
    else:
        print(f"status:   {_clean(answer.status)}")
        print(f"reason:   {_clean(answer.reason or '-')}")
        print(f"message:  {_clean(answer.message or '-')}")
        print(f"request:  {_clean(answer.request_id)}")
        if answer.duration_ms is not None:
            print(f"duration: {answer.duration_ms} ms")
    if answer.pending:
        print(
            "The on-premises agent has not answered yet; the request may still be applied.\n"
            f"Follow it with:  {_follow(args, answer.request_id)}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return EXIT_OK if answer.applied else EXIT_PROBLEM


def _write(args: argparse.Namespace, send: Callable[[str], api.Answer]) -> int:
    request_id = api.new_request_id()
    _waiting(args)
    try:
        answer = send(request_id)
    except KeyboardInterrupt:
        print(
            "writeback: interrupted; the request may still be applied; follow it with:  "
            + _follow(args, request_id),
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    return _report(args, answer)


def _reset(args: argparse.Namespace, client: api.Client) -> int:
    _, new = _passwords(args, current=False)
    return _write(
        args,
        lambda rid: client.reset(
            args.user,
            new,
            initiator=args.initiator,
            unlock=args.unlock,
            force_change=args.force_change,
            request_id=rid,
        ),
    )


def _change(args: argparse.Namespace, client: api.Client) -> int:
    old, new = _passwords(args, current=True)
    return _write(args, lambda rid: client.change(args.user, old, new, request_id=rid))


def _unlock(args: argparse.Namespace, client: api.Client) -> int:
    return _write(args, lambda rid: client.unlock(args.user, request_id=rid))


def _expire(args: argparse.Namespace, client: api.Client) -> int:
    return _write(args, lambda rid: client.expire(args.user, request_id=rid))


def _status(args: argparse.Namespace, client: api.Client) -> int:
    if args.wait:
        _waiting(args, f"waiting up to {args.wait:g} s for request {args.request_id}…")
    return _report(args, client.wait(args.request_id, args.wait))


def _health(args: argparse.Namespace, client: api.Client) -> int:
    health = client.health()
    if args.json:
        print(json.dumps(health.body, indent=2))
    else:
        print(f"health:   {_clean(health.status)}")
        for domain in health.domains:
            print(f"{_clean(domain.get('domain'))}: {_clean(domain.get('state'))}")
            for relay in domain.get("relays") or []:
                seen = relay.get("lastHeartbeat")
                age = f"{time.time() - seen:.0f} s ago" if isinstance(seen, int | float) else "-"
                line = (
                    f"  {_clean(relay.get('relay'))} {_clean(relay.get('version'))}: "
                    f"{'fresh' if relay.get('fresh') else 'stale'}, last heartbeat {age}"
                )
                if relay.get("lastError"):
                    line += f", last error: {_clean(relay['lastError'])}"
                print(line)
    return EXIT_OK if health.status == "ok" else EXIT_PROBLEM


def _history(args: argparse.Namespace, client: api.Client) -> int:
    entries = client.history(args.user, args.hours)
    if args.json:
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    if not entries:
        print(f"no requests for {_clean(args.user)} in the last {args.hours} h")
    for entry in entries:
        at = entry.get("receivedAt")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
            if isinstance(at, int | float)
            else "-"
        )
        print(
            f"{when}Z  {_clean(entry.get('operation')):8} {_clean(entry.get('source')):12} "
            f"{_clean(entry.get('status')):9} {_clean(entry.get('reason') or '-'):28} "
            f"{_clean(entry.get('requestId'))}"
        )
    return EXIT_OK


def _refusal(args: argparse.Namespace, exc: api.Refused) -> tuple[str, int]:
    """One line, and the exit code, for an error the API answered."""
    said = f"{_clean(exc.message)} ({_clean(exc.code)})"
    if exc.http_status == 400:
        field = f"field {_clean(exc.field)}: " if exc.field else ""
        return f"the API refused the request: {field}{said}", EXIT_USAGE
    if exc.http_status == 401:
        return f"not authenticated: {said}; check {args.credential_source}", EXIT_PROBLEM
    if exc.http_status == 403:
        return f"not allowed: {said}", EXIT_PROBLEM
    if exc.http_status == 404 and exc.code == "request.unknown":
        return f"no request with id {args.request_id}: {said}", EXIT_PROBLEM
    if exc.http_status == 409:
        return f"this request id was already used: {said}", EXIT_PROBLEM
    if exc.http_status == 503:
        return f"the writeback service is unavailable: {said}", EXIT_PROBLEM
    return f"the API answered HTTP {exc.http_status}: {said}", EXIT_PROBLEM


def _method(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """--auth, else WRITEBACK_AUTH, else None (the key or token the environment holds)."""
    method = args.auth or environ.get(signin.AUTH_ENV, "").strip() or None
    if method is not None and method not in signin.METHODS:
        raise api.InvalidSetting(signin.AUTH_ENV, f"must be one of {', '.join(signin.METHODS)}")
    return method


def _entra(
    args: argparse.Namespace, environ: Mapping[str, str], *, login: bool = False
) -> tuple[signin.Options, str]:
    """Sign in with azure-identity: the options used and the access token (never printed)."""
    opts = signin.options(args, environ)
    cred = signin.credential(opts, environ)
    first = opts.method in signin.INTERACTIVE and (
        login or not signin.record_path(opts.method, environ).is_file()
    )
    return opts, signin.get_token(opts, cred, environ, interactive=first)


def _credential(args: argparse.Namespace, environ: Mapping[str, str]) -> api.Credential:
    if args.auth in signin.ENTRA_METHODS:
        _, token = _entra(args, environ)
        return api.Credential.bearer(token, f"--auth {args.auth}")
    if args.auth == "api-key":
        if key := environ.get(KEY_ENV, "").strip():
            return api.Credential.api_key(key, KEY_ENV)
        raise api.InvalidSetting(KEY_ENV, "is not set, and --auth api-key needs it")
    if args.token_file:
        path: Path = args.token_file
        try:
            credential = api.Credential.bearer(path.read_text(encoding="utf-8"), "--token-file")
            shared = os.name == "posix" and path.stat().st_mode & 0o077
        except (OSError, UnicodeDecodeError) as exc:
            problem = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise api.InvalidSetting("--token-file", f"cannot read {path}: {problem}") from None
        if shared:
            print(
                f"writeback: warning: --token-file {path} is readable by others (chmod 600 it)",
                file=sys.stderr,
            )
        return credential
    key, token = environ.get(KEY_ENV, "").strip(), environ.get(TOKEN_ENV, "").strip()
    if args.auth == "token":
        key = ""
    if key and token:
        raise api.InvalidSetting(KEY_ENV, f"and {TOKEN_ENV} are both set: unset one of them")
    if token:
        return api.Credential.bearer(token, TOKEN_ENV)
    if key:
        return api.Credential.api_key(key, KEY_ENV)
    if args.auth == "token":
        raise api.InvalidSetting(TOKEN_ENV, "is not set: set it or pass --token-file")
    raise api.InvalidSetting(KEY_ENV, f"is not set: set it or {TOKEN_ENV}, or pass --token-file")


def _client(args: argparse.Namespace, environ: Mapping[str, str]) -> api.Client:
    url = args.url or environ.get(URL_ENV, "").strip()
    if not url:
        raise api.InvalidSetting(URL_ENV, "is not set: set it or pass --url (…/api)")
    api.api_url(url, "--url" if args.url else URL_ENV)
    credential = _credential(args, environ)
    args.credential_source = credential.source
    return api.Client(url, credential, timeout=args.timeout)


def _show(args: argparse.Namespace, facts: list[tuple[str, str]]) -> None:
    if args.json:
        print(json.dumps(dict(facts), indent=2))
    else:
        for name, value in facts:
            print(f"{name + ':':12}{_clean(value)}")


def _whoami(args: argparse.Namespace, environ: Mapping[str, str], *, login: bool = False) -> int:
    """Who the client acts as, from the access token's claims decoded without verifying them."""
    if login and args.auth not in signin.ENTRA_METHODS:
        raise api.InvalidSetting(
            "--auth", f"login signs in with one of {', '.join(signin.ENTRA_METHODS)}"
        )
    if args.auth in signin.ENTRA_METHODS:
        opts, token = _entra(args, environ, login=login)
        facts = [("signed in" if login else "credential", f"--auth {args.auth}")]
        facts.append(("scope", opts.scope))
    else:
        credential = _credential(args, environ)
        facts = [("credential", credential.source)]
        if credential.header != "Authorization":
            facts.append(("roles", "the app's WRITEBACK_API_KEY_ROLES decide (an API key)"))
            _show(args, facts)
            return EXIT_OK
        token = credential.value.removeprefix("Bearer ")
    claims = signin.claims(token)
    if not claims:
        facts.append(("token", "not a JWT: its claims cannot be shown"))
    facts += signin.describe(claims)
    facts.append(("note", "decoded from the access token without verifying it; the API verifies"))
    _show(args, facts)
    return EXIT_OK


# What each command of `build_parser` runs.
_COMMANDS: dict[str, Callable[[argparse.Namespace, api.Client], int]] = {
    "reset": _reset,
    "change": _change,
    "unlock": _unlock,
    "expire": _expire,
    "status": _status,
    "health": _health,
    "history": _history,
}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command (`argv`, default sys.argv[1:]); the exit code. Never raises for a usage,
    API or network problem: each is one line on stderr."""
    environ = os.environ if environ is None else environ
    try:
        args = build_parser(environ).parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error (or the help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.credential_source = KEY_ENV
    if args.command == "entra":  # Microsoft Graph, not the writeback API
        return entra.run(args, environ)
    try:
        args.auth = _method(args, environ)
        if args.command in ("login", "whoami"):  # Entra ID only, not the writeback API
            return _whoami(args, environ, login=args.command == "login")
        client = _client(args, environ)
        return _COMMANDS[args.command](args, client)
    except api.InvalidSetting as exc:
        print(f"writeback: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except signin.SignInFailed as exc:
        print(f"writeback: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except api.Refused as exc:
        line, code = _refusal(args, exc)
        if args.json:
            print(json.dumps(exc.body, indent=2))
        print(f"writeback: {line}", file=sys.stderr)
        return code
    except api.Unreachable as exc:
        print(f"writeback: {exc}", file=sys.stderr)
        if exc.timed_out and exc.request_id:
            print(
                f"the request may still be applied; follow it with:  "
                f"{_follow(args, exc.request_id)}",
                file=sys.stderr,
            )
        return EXIT_PROBLEM
    except api.UnexpectedAnswer as exc:
        print(f"writeback: {_clean(exc)}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        print("writeback: interrupted", file=sys.stderr)
        return EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
