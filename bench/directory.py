"""Directory-layer latency against a raw ldap3 modify loop, on the same DC in the same run.

The baseline is the least any writeback can do: one LDAPS connection bound as the relay account,
one modify per operation, nothing looked up or checked. Ours is `LdapDirectory.apply`, which also
finds the user by UPN, checks scope and protection, reads the policy and pre-checks the password.
Operations alternate between the two (baseline, ours, baseline, ...) on fresh users so both see
the same DC state. Run with `make bench` (starts the local DC if needed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import ldap3

from devstack import seed, stack
from writeback.protocol import ChangePassword, Outcome, Reason, ResetPassword, UnlockAccount
from writeback.relay.cli import load_directory_settings
from writeback.relay.directory import LdapDirectory
from writeback.relay.ldap import ValidatingTls
from writeback.relay.policy import encode_unicode_pwd


def raw_connection(running: stack.Stack) -> ldap3.Connection:
    server = ldap3.Server(
        "localhost",
        port=636,
        use_ssl=True,
        get_info=ldap3.NONE,
        tls=ValidatingTls(str(running.dc.ca_file)),
    )
    relay = running.domain.relay
    return ldap3.Connection(server, user=relay.upn, password=relay.password, auto_bind=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="operations of each kind")
    args = parser.parse_args()
    running = stack.up()
    settings = load_directory_settings(running.relay_config)
    directory = LdapDirectory(settings, settings.bind_password())
    raw = raw_connection(running)
    admin = running.dc.admin_connection()
    domain = running.domain
    users = [
        seed.create_user(admin, domain.users_ou, domain.dns_domain, seed.unique_name("bench"))
        for _ in range(2 * args.rounds)
    ]
    directory.capabilities()  # connect and warm up both sides
    raw.search(domain.base_dn, "(objectClass=domain)", search_scope=ldap3.BASE)

    results: dict[str, tuple[list[float], list[float]]] = {}
    outcomes: list[Outcome] = []
    for kind in ("reset", "change", "unlock"):
        ours: list[float] = []
        base: list[float] = []
        for number, user in enumerate(users):
            first, second = f"Perf-{kind}-A1!", f"Perf-{kind}-B2!"
            if kind == "reset":
                mine = ResetPassword(user.upn, first)
                baseline = {"unicodePwd": [(ldap3.MODIFY_REPLACE, [encode_unicode_pwd(first)])]}
            elif kind == "change":
                # after the reset round every user holds `Perf-reset-A1!`
                old = "Perf-reset-A1!"
                mine = ChangePassword(user.upn, old, second)
                baseline = {
                    "unicodePwd": [
                        (ldap3.MODIFY_DELETE, [encode_unicode_pwd(old)]),
                        (ldap3.MODIFY_ADD, [encode_unicode_pwd(second)]),
                    ]
                }
            else:
                mine = UnlockAccount(user.upn)
                baseline = {"lockoutTime": [(ldap3.MODIFY_REPLACE, ["0"])]}
            if number % 2:
                ours.append(timed(lambda m=mine: outcomes.append(directory.apply(m))))  # type: ignore[misc]
            else:
                base.append(timed(lambda dn=user.dn, b=baseline: raw.modify(dn, b)))
                if raw.result["result"] != 0:
                    raise SystemExit(f"baseline {kind} failed: {raw.result}")
        results[kind] = (base, ours)
    failed = [outcome for outcome in outcomes if outcome.reason is not Reason.APPLIED]
    if failed:
        raise SystemExit(f"writeback operations failed: {failed[:3]}")
    print(
        f"{'operation':<10}{'raw p50':>10}{'raw p95':>10}{'ours p50':>10}{'ours p95':>10}"
        f"{'ratio p50':>11}{'ops/s raw':>11}{'ops/s ours':>11}"
    )
    for kind, (base, ours) in results.items():
        print(
            f"{kind:<10}{percentile(base, 0.5):>9.1f} {percentile(base, 0.95):>9.1f} "
            f"{percentile(ours, 0.5):>9.1f} {percentile(ours, 0.95):>9.1f} "
            f"{percentile(ours, 0.5) / percentile(base, 0.5):>10.2f}x"
            f"{1000 / statistics.mean(base):>11.1f}{1000 / statistics.mean(ours):>11.1f}"
        )
    print(f"({args.rounds} operations of each kind on each side, ms, sequential, one connection)")
    directory.close()
    raw.unbind()
    admin.unbind()


def main() -> None:
    """Measure on the local stack, and leave it as it was found (running or not)."""
    with stack.borrowed():
        measure()


if __name__ == "__main__":
    main()
