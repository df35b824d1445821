"""What the chaos soak reads from the DC as the administrator: a user's unicodePwd version, from
the replication metadata, and pwdLastSet, riding out the DC's restarts.

The version rises by one with every write of the password, whoever makes it, so read before and
after a request that was the user's only one in flight it says how many times that request wrote
the password; it never reads or compares a password.
"""

from __future__ import annotations

import struct
import threading
import time

import ldap3
from ldap3.core.exceptions import LDAPException

from devstack.samba import SambaDC
from writeback.relay.ldap import discard

UNICODE_PWD = 0x9005A  # the attribute id of unicodePwd in replPropertyMetaData (MS-ADTS)


class DirectoryProbe:
    """Reads a user's unicodePwd version and pwdLastSet as the administrator, riding out DC
    restarts (one connection per thread, reconnected within a deadline)."""

    def __init__(self, dc: SambaDC, deadline: float = 90.0) -> None:
        self._dc = dc
        self._deadline = deadline
        self._local = threading.local()
        self._opened: list[ldap3.Connection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every connection any thread opened."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            discard(connection)

    def read(self, dn: str) -> tuple[int, str]:
        until = time.monotonic() + self._deadline
        while True:
            try:
                connection = getattr(self._local, "connection", None)
                if connection is None:
                    connection = self._local.connection = self._dc.admin_connection()
                    with self._lock:
                        self._opened.append(connection)
                connection.search(
                    dn, "(objectClass=user)", search_scope=ldap3.BASE,
                    attributes=["replPropertyMetaData", "pwdLastSet"],
                )  # fmt: skip
                raw = connection.response[0]["raw_attributes"]
                version = password_version(raw["replPropertyMetaData"][0])
                return version, raw["pwdLastSet"][0].decode()
            except (LDAPException, OSError, IndexError, KeyError):
                if getattr(self._local, "connection", None) is not None:
                    discard(self._local.connection)
                self._local.connection = None
                if time.monotonic() > until:
                    raise
                time.sleep(0.2)  # the DC is restarting: poll again within the deadline


def password_version(blob: bytes) -> int:
    """The version of unicodePwd in a replPropertyMetaDataBlob (MS-DRSR 5.166): it rises by one
    with every write of the password, on any DC, whoever makes it."""
    _, _, count, _ = struct.unpack_from("<IIII", blob, 0)
    for index in range(count):
        attribute, version = struct.unpack_from("<II", blob, 16 + 48 * index)
        if attribute == UNICODE_PWD:
            return int(version)
    return 0
