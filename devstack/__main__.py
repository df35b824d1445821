"""`python -m devstack up|down|demo`: the local stack from the command line."""

from __future__ import annotations

import argparse
import sys

from devstack import demo, stack, wire_demo
from devstack.samba import DevstackError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["up", "down", "demo"])
    args = parser.parse_args()
    try:
        if args.command == "down":
            stack.down()
            print("local DC stopped")
            return 0
        running = stack.up()
        print(
            f"local AD DC {running.dc.names.dc_hostname} at {running.dc.ldaps_url} "
            f"(CA {running.dc.ca_file})"
        )
        if args.command == "up":
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


if __name__ == "__main__":
    sys.exit(main())
