"""`make test`'s runner: the suites in two pytest processes side by side, so both cores work.

The unit and infra suites are pure computation; the integration and e2e suites mostly wait on
their servers (the Samba DC, Azurite, the broker, the Functions host). Run one after the other
they take the sum of both; side by side, about the longer one. The server suites print as they
go; the pure suites' output is kept in a file and printed after, so neither interleaves.

The run fails if either process fails, including pytest's exit 5 (no tests collected): a marker
expression that selects nothing must not pass as green. Arguments are passed to both.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

GROUPS = {
    "unit and infra": "unit or infra",
    "integration and e2e": "integration or e2e or live",
}


def main(arguments: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    (pure_name, pure), (servers_name, servers) = GROUPS.items()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as kept:
        pure_run = subprocess.Popen(
            [*pytest, "-m", pure, "-p", "no:cacheprovider", *arguments],
            stdout=kept,
            stderr=subprocess.STDOUT,
        )
        try:
            servers_code = subprocess.call(
                [*pytest, "-m", servers, "-p", "no:cacheprovider", *arguments]
            )
        finally:
            pure_code = pure_run.wait()
        kept.seek(0)
        print(f"\n===== {pure_name} (run alongside) =====\n", flush=True)
        sys.stdout.write(kept.read())
    codes = {servers_name: servers_code, pure_name: pure_code}
    for name, code in codes.items():
        print(f"{name}: pytest exited {code}" + (" (no tests collected)" if code == 5 else ""))
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
