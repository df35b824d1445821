"""`python -m devstack up|down|demo|soak`: the local stack from the command line."""

from __future__ import annotations

import argparse
import shutil
import sys

from devstack import demo, entra_users, http_demo, localstack, soak, stack, wire_demo
from devstack.samba import DevstackError
from devstack.seed import SEED_PASSWORD
from devstack.stack import STATE


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument(
        "command", choices=["up", "down", "demo", "dc-up", "dc-down", "demo-directory", "soak"]
    )
    parser.add_argument("--writes", type=int, default=1000, help="soak: how many writes")
    parser.add_argument("--concurrency", type=int, default=8, help="soak: callers at once")
    parser.add_argument("--seed", type=int, default=1, help="soak: the seed of its choices")
    parser.add_argument("--users", type=int, default=48, help="soak: the pool of users")
    args = parser.parse_args()
    try:
        if args.command == "soak":
            return _soak(args)
        if args.command == "down":
            localstack.down()
            print(
                "local stack stopped: DC, Azurite, broker, sign-in stand-in, Functions host and "
                "relay"
            )
            return 0
        if args.command == "dc-down":
            stack.down()
            print("local DC stopped")
            return 0
        if args.command in ("up", "demo"):
            return _stack(args.command)
        running = stack.up()
        print(
            f"local AD DC {running.dc.names.dc_hostname} at {running.dc.ldaps_url} "
            f"(CA {running.dc.ca_file})"
        )
        if args.command == "dc-up":
            print("environment: source .devstack/env")
            return 0
        ok = demo.run(running)
        ok = wire_demo.run(running) and ok
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    print("\nTry it by hand:")
    print("  source .devstack/env            # DC URL, CA, admin, users OU")
    print("  .venv/bin/writeback-relay doctor --config .devstack/relay.toml")
    print("  .venv/bin/writeback-relay keys list --dir .devstack/wire/keys")
    print("Stop the DC with: make dc-down")
    return 0 if ok else 1


def _soak(args: argparse.Namespace) -> int:
    """The chaos soak on a fresh DC of its own under .devstack/soak (docs/reliability.md)."""
    state = STATE / "soak"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    plan = soak.SoakPlan(
        writes=args.writes, concurrency=args.concurrency, seed=args.seed, users=args.users
    )
    figures = soak.run(plan, state.resolve())
    print(f"logs and journals of the run: {state}/")
    return 0 if not figures.problems else 1


def _stack(command: str) -> int:
    """`up`: the whole stack in the background; `demo`: that, then the HTTP scenario."""
    print(
        "starting the local stack (DC, Azurite, Service Bus broker, Entra ID sign-in stand-in, "
        "Functions host, relay)..."
    )
    running, env = localstack.up()
    print(f"writeback API at {env['WRITEBACK_API_URL']} for {env['WRITEBACK_DOMAIN']}")
    print(sign_in_guide(env))
    ok = True
    if command == "demo":
        ok = http_demo.run(running, env)
    print("\nTry it by hand:")
    print("  source .devstack/env")
    print('  curl -s -H "x-functions-key: $WRITEBACK_API_KEY" $WRITEBACK_API_URL/v1/health')
    print("  .venv/bin/writeback health                 # the admin client, same environment")
    print("  .venv/bin/writeback reset <user>@$WRITEBACK_DOMAIN --admin   # asks for the password")
    print("Logs: .devstack/logs/   Stop everything: make down")
    return 0 if ok else 1


def sign_in_guide(env: dict[str, str]) -> str:
    """Where the pages are and whom to sign in as, for a person trying the stack by hand."""
    domain = env["WRITEBACK_DOMAIN"]
    discovery = f"{env['WRITEBACK_SIGNIN_AUTHORITY']}/.well-known/openid-configuration"
    return (
        f"self-service pages: open {env['WRITEBACK_PAGES_URL']} in a browser; it signs in at the "
        "local Entra ID stand-in (docs/local-entra.md), whose certificate the browser must trust:"
        f" import the CA {env['WRITEBACK_SIGNIN_CA']}, or open {discovery} once and accept it"
        f"\n  user alice@{domain}, password {SEED_PASSWORD} (Forgot my password: tick strong "
        f"verification, pass {entra_users.tap_of('alice')})"
        f"\n  a cloud UPN that differs from AD's: pat@{entra_users.CLOUD_SUFFIX}, same password"
        f"\n  the helpdesk: hana.helpdesk@{domain}, same password"
    )


if __name__ == "__main__":
    sys.exit(main())
