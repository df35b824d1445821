"""The `writeback` command line's grammar: its commands, their arguments and options, and the
help that says where the URL and the credential come from.

Parsing only: nothing here reads the environment (the help of --scope may show what a given
environment configures), asks for a password or calls the API (`cli`
does). No error message ever repeats an argument's value (it may be a password), and no option
takes a secret: every local user can read a process's command line.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from writeback import __version__
from writeback.client import api, entra, signin
from writeback.protocol.accounts import AccountRef, BadReference

URL_ENV = "WRITEBACK_API_URL"
KEY_ENV = "WRITEBACK_API_KEY"
TOKEN_ENV = "WRITEBACK_TOKEN"  # noqa: S105 - the variable's name, not a token

SECURITY = """\
Secrets are never command-line arguments: the command line of a running program is visible
to every local user. The API key comes from WRITEBACK_API_KEY (sent as x-functions-key), an
Entra ID access token from WRITEBACK_TOKEN or --token-file (sent as Authorization: Bearer).
Passwords are asked at a prompt, or read from stdin with --password-stdin, one per line
(change: the current one, then the new one). The API URL comes from --url or
WRITEBACK_API_URL; http:// is refused except to this machine, since the key or token would
travel in clear.

Sign-in: --auth (or WRITEBACK_AUTH) picks azure-identity's azure-cli, device-code, browser,
client-secret or managed-identity; api-key and token are the variables above. The API's
scope is --scope or WRITEBACK_API_SCOPE (the API's application ID URI, the deployment's
apiIdentifierUri, + /.default), else <WRITEBACK_API_APP_ID>/.default (its apiClientId).
device-code and browser sign in through the deployment's admin client: WRITEBACK_CLIENT_ID
(its adminClientId) or --client-id. `writeback login` signs in once (device-code, browser:
tokens kept in the encrypted token cache); `writeback whoami` shows who the client acts as. A
token is never printed.

Exit codes: 0 applied (health: ok); 1 rejected, failed, pending, unreachable or degraded;
2 a usage error (an option, a setting or the passwords given)."""


class _Parser(argparse.ArgumentParser):
    """argparse, except that no error repeats an argument's value: it may be a password."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            names = [
                e.partition("=")[0] + ("=…" if "=" in e else "") for e in extras if e[:1] == "-"
            ]
            values = len(extras) - len(names)
            shown = " ".join(names + ([f"and {values} value(s), not shown"] if values else []))
            self.error(f"unrecognized arguments: {shown} (secrets are never arguments: see -h)")
        return parsed

    def error(self, message: str) -> NoReturn:
        if "ignored explicit argument" in message:
            message = message.partition(":")[0] + ": takes no value"
        message = re.sub(r"invalid choice: .*? \(choose", "invalid choice (choose", message)
        super().error(message)


def _account(value: str) -> str:
    """Any account reference the API takes, in its canonical spelling."""
    try:
        return str(AccountRef.parse(value))
    except BadReference as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _request_id(value: str) -> str:
    if not api.REQUEST_ID.fullmatch(value):
        raise argparse.ArgumentTypeError("must be 8 to 128 of A-Z a-z 0-9 . _ : -")
    return value


def _user(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "user",
        type=_account,
        metavar="USER",
        help="the user: a UPN (name@suffix), a SID (S-1-5-21-...), an objectGUID or immutable ID "
        "(where the API serves one domain), or DOMAIN\\name",
    )


def _hours(value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,3}", value) or not 1 <= int(value) <= 168:
        raise argparse.ArgumentTypeError("must be a whole number of hours from 1 to 168")
    return int(value)


def _seconds(low: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1
        if not low <= seconds <= 3600:
            raise argparse.ArgumentTypeError(f"must be a number of seconds from {low:g} to 3600")
        return seconds

    return parse


def configured_scope(environ: Mapping[str, str] | None) -> str:
    """The scope the environment gives, for --help: the value, or why there is none."""
    if environ is None:
        return ""
    try:
        return f"; now: {signin.scope(argparse.Namespace(scope=None, api_app_id=None), environ)}"
    except api.InvalidSetting:
        return "; now: not configured"


def _options(parser: argparse.ArgumentParser, default: Any, now: str = "") -> None:
    """The global options, accepted before or after the command."""
    parser.add_argument(
        "--url",
        default=default(None),
        help=f"the API's base URL, e.g. https://<app>.azurewebsites.net/api (default: ${URL_ENV})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="a file holding an Entra ID access token (instead of the environment)",
    )
    parser.add_argument(
        "--auth",
        choices=signin.METHODS,
        default=default(None),
        help=f"how to sign in (default: ${signin.AUTH_ENV}, else api-key or token from the "
        "environment)",
    )
    parser.add_argument(
        "--tenant",
        default=default(None),
        metavar="TENANT",
        help="the Entra ID tenant (id or domain) to sign in to (default: $AZURE_TENANT_ID)",
    )
    parser.add_argument(
        "--client-id",
        default=default(None),
        metavar="APP_ID",
        help="the app that signs in: for device-code and browser the admin client (the "
        f"deployment's adminClientId; default ${signin.CLIENT_ID_ENV}, else $AZURE_CLIENT_ID, else "
        "azure-identity's own); client-secret's app or a user-assigned identity "
        "(default $AZURE_CLIENT_ID)",
    )
    parser.add_argument(
        "--api-app-id",
        default=default(None),
        metavar="APP_ID",
        help="the API's application (client) id: scope APP_ID/.default "
        f"(default: ${signin.APP_ID_ENV})",
    )
    parser.add_argument(
        "--scope",
        default=default(None),
        metavar="URI",
        help="the API's application ID URI, e.g. api://<tenant>/writeback-<prefix> (/.default is "
        f"added; default: ${signin.SCOPE_ENV}, else from --api-app-id{now})",
    )
    parser.add_argument(
        "--unencrypted-cache",
        action="store_true",
        default=default(False),
        help="where no keyring/libsecret can encrypt the token cache, keep it in a file readable "
        f"by you alone (or ${signin.UNENCRYPTED_ENV}=1)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds(1),
        default=default(api.DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help="give up on an answer after this long",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the API's JSON answer as it is",
    )


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; `command` names the one given. With `environ`, the help of
    --scope shows the scope it configures (the only thing here that looks at it)."""
    now = configured_scope(environ)
    parser = _Parser(
        prog="writeback",
        description="The administrators' command line for the writeback API.",
        epilog=SECURITY,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _options(parser, lambda value: value, now)
    common = _Parser(add_help=False, allow_abbrev=False)
    _options(common, lambda value: argparse.SUPPRESS, now)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=SECURITY,
            parents=[common],
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    reset = command("reset", "reset a user's password (asks for the new one twice)")
    _user(reset)
    who = reset.add_mutually_exclusive_group()
    who.add_argument(
        "--admin",
        dest="initiator",
        action="store_const",
        const="admin",
        default="admin",
        help="an administrator's reset (the default)",
    )
    who.add_argument(
        "--self-service",
        dest="initiator",
        action="store_const",
        const="self-service",
        help="a reset on the user's own behalf",
    )
    reset.add_argument("--unlock", action="store_true", help="also unlock the account")
    reset.add_argument(
        "--force-change",
        action="store_true",
        help="make the user change the password at next logon",
    )
    change = command("change", "change a password (asks for the current and the new)")
    _user(change)
    for sub in (reset, change):
        sub.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password(s) from stdin, one per line, not a prompt",
        )
    unlock = command("unlock", "unlock a locked-out account")
    _user(unlock)
    expire = command("expire", "make a user choose a new password at next logon")
    _user(expire)
    status = command("status", "show a request's outcome (poll it with --wait)")
    status.add_argument("request_id", type=_request_id, metavar="REQUEST_ID")
    status.add_argument(
        "--wait",
        type=_seconds(0),
        default=0.0,
        metavar="SECONDS",
        help="poll until the request is completed, for at most this long",
    )
    command("health", "show each domain's relays; exit 1 unless all are ok")
    history = command("history", "list a user's recent requests, newest first (helpdesk)")
    _user(history)
    history.add_argument(
        "--hours", type=_hours, default=24, help="how far back, 1 to 168 (default 24)"
    )
    command("login", "sign in to Entra ID once (--auth device-code or browser) and cache it")
    command("whoami", "show who the client acts as: user or app, tenant, roles, scopes")
    entra.add_commands(commands)
    return parser
