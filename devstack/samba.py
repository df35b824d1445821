"""A throwaway Samba AD DC for development and tests.

Provisions a real Samba 4 Active Directory domain controller into a directory of its own (never
/etc/samba, never the system's Samba state), starts it in the foreground with LDAPS on loopback,
waits until an LDAPS bind that validates the certificate succeeds, and stops it cleanly. The DC
listens on the standard ports (389/636), so it needs root and only one runs per machine at a
time: a process that starts one holds a machine-wide lock until it stops it, and another process
waits for that lock up to WRITEBACK_DC_WAIT seconds (default 0: fail at once, naming the cause).
It is a test bed: the passwords it is provisioned with are published test data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException

from devstack.tls import issue_server_certificate
from writeback.relay.ldap import ValidatingTls, discard

log = logging.getLogger(__name__)

ADMIN_PASSWORD = "Adm1n!Devstack-Passw0rd"
WAIT_SETTING = "WRITEBACK_DC_WAIT"
LOCK_FILE = Path(tempfile.gettempdir()) / "writeback-samba-dc.lock"


class DevstackError(RuntimeError):
    """The local DC could not be provisioned, started or reached."""


@dataclass(frozen=True)
class Realm:
    """Names of the test domain."""

    realm: str = "CORP.EXAMPLE.TEST"
    netbios: str = "CORP"
    host: str = "dc1"

    @property
    def dns_domain(self) -> str:
        return self.realm.lower()

    @property
    def base_dn(self) -> str:
        return ",".join(f"DC={part}" for part in self.dns_domain.split("."))

    @property
    def dc_hostname(self) -> str:
        return f"{self.host}.{self.dns_domain}"


def require_samba() -> None:
    """Fail with an actionable message when the Samba AD DC binaries are missing."""
    missing = [tool for tool in ("samba", "samba-tool") if shutil.which(tool) is None]
    if missing:
        raise DevstackError(
            f"{', '.join(missing)} not found: install Debian's samba, samba-dsdb-modules, "
            "samba-vfs-modules and winbind (make deps does this)"
        )


def port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


class SambaDC:
    """One Samba AD DC living entirely under `root`."""

    def __init__(self, root: Path, realm: Realm | None = None) -> None:
        self.root = root.resolve()
        self.names = realm or Realm()
        self._process: subprocess.Popen[bytes] | None = None
        self._machine_lock: int | None = None

    # -- where things are -------------------------------------------------------------------
    @property
    def smb_conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    @property
    def sam_ldb(self) -> Path:
        return self.root / "private" / "sam.ldb"

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "samba.log"

    @property
    def ldaps_url(self) -> str:
        return "ldaps://localhost:636"

    @property
    def admin_upn(self) -> str:
        return f"Administrator@{self.names.dns_domain}"

    @property
    def admin_dn(self) -> str:
        return f"CN=Administrator,CN=Users,{self.names.base_dn}"

    @property
    def provisioned(self) -> bool:
        return self.sam_ldb.exists()

    @property
    def running(self) -> bool:
        """Whether the samba process recorded in this DC's pid file is alive."""
        pid_file = self.root / "run" / "devstack-samba.pid"
        return pid_file.exists() and _alive(int(pid_file.read_text()))

    # -- lifecycle ------------------------------------------------------------------------
    def provision(self) -> None:
        """Create the domain; takes a few seconds. The directory must be empty or absent."""
        require_samba()
        if self.root.exists() and any(self.root.iterdir()):
            raise DevstackError(f"{self.root} is not empty; remove it to provision a new DC")
        self.root.mkdir(parents=True, exist_ok=True)
        tls = issue_server_certificate(self.root / "tls", [self.names.dc_hostname, "localhost"])
        (self.root / "log").mkdir()
        (self.root / "run").mkdir()
        # samba exits at start-up unless the NTP signing socket directory is exactly 0750.
        (self.root / "ntp").mkdir(mode=0o750)
        os.chmod(self.root / "ntp", 0o750)
        options = {
            "interfaces": "lo",
            "bind interfaces only": "yes",
            # Only the LDAP server: no SMB, Kerberos, NetBIOS or DNS ports are opened.
            "server services": "ldap",
            # xattr_tdb keeps the sysvol ACLs in a file, so provisioning works in containers
            # without CAP_SYS_ADMIN (security.* extended attributes).
            "vfs objects": "dfs_samba4 acl_xattr xattr_tdb",
            "xattr_tdb:file": str(self.root / "xattr.tdb"),
            "pid directory": str(self.root / "run"),
            "ncalrpc dir": str(self.root / "run" / "ncalrpc"),
            "winbindd socket directory": str(self.root / "run" / "winbindd"),
            "ntp signd socket directory": str(self.root / "ntp"),
            "log file": str(self.log_file),
            "tls enabled": "yes",
            "tls keyfile": str(tls.key_file),
            "tls certfile": str(tls.cert_file),
            "tls cafile": str(tls.ca_file),
        }
        command = [
            "samba-tool",
            "domain",
            "provision",
            "--server-role=dc",
            f"--realm={self.names.realm}",
            f"--domain={self.names.netbios}",
            f"--host-name={self.names.host}",
            f"--adminpass={ADMIN_PASSWORD}",
            "--dns-backend=NONE",
            "--use-rfc2307",
            f"--targetdir={self.root}",
        ] + [f"--option={key}={value}" for key, value in options.items()]
        self._run(command, "provision")
        # Provision drops this option when writing smb.conf. Without it the previous password
        # keeps working for LDAP binds for an hour after a change, and tests could not tell.
        text = self.smb_conf.read_text()
        text = text.replace("[global]\n", "[global]\n\told password allowed period = 0\n", 1)
        self.smb_conf.write_text(text)

    def samba_tool(self, *args: str) -> str:
        """Run samba-tool against the DC's own database and return its output."""
        return self._run(
            ["samba-tool", *args, "-s", str(self.smb_conf), "-H", str(self.sam_ldb)],
            args[0],
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start samba in the foreground and wait until an LDAPS bind validates and succeeds."""
        require_samba()
        if not self.provisioned:
            raise DevstackError(f"no DC provisioned under {self.root}")
        deadline = time.monotonic() + float(os.environ.get(WAIT_SETTING) or 0)
        self._lock_machine(deadline)
        for port in (389, 636):
            while port_open("127.0.0.1", port):
                if time.monotonic() >= deadline:
                    self._unlock_machine()
                    raise DevstackError(
                        f"port {port} is already in use on 127.0.0.1: another DC is running "
                        "(stop it with make dc-down) or another LDAP server holds the port"
                    )
                time.sleep(0.5)
        output = (self.root / "log" / "samba.stdout").open("ab")
        self._process = subprocess.Popen(
            ["samba", "-F", "-M", "single", "-s", str(self.smb_conf), "--debug-stdout"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()
        (self.root / "run" / "devstack-samba.pid").write_text(str(self._process.pid))
        self.wait_until_ready(timeout)

    def wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise DevstackError(
                    f"samba exited with {self._process.returncode}: {self._log_tail()}"
                )
            try:
                connection = self.admin_connection()
            except LDAPException as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
                continue
            connection.unbind()
            log.info("samba DC ready at %s", self.ldaps_url)
            return
        self.stop()
        raise DevstackError(f"samba not ready after {timeout:.0f}s ({last_error})")

    def _lock_machine(self, deadline: float) -> None:
        """Take the machine-wide DC lock (kept across a restart by the same object)."""
        if self._machine_lock is not None:
            return
        descriptor = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(descriptor)
                    raise DevstackError(
                        "another process on this machine is running a test DC (set "
                        f"{WAIT_SETTING} to a number of seconds to wait for it)"
                    ) from None
                time.sleep(0.5)
                continue
            self._machine_lock = descriptor
            return

    def _unlock_machine(self) -> None:
        if self._machine_lock is not None:
            os.close(self._machine_lock)  # closing the descriptor releases the flock
            self._machine_lock = None

    def stop(self, timeout: float = 20.0, *, release: bool = True) -> None:
        """Stop the DC started by this object, or the one recorded in its pid file; with
        `release` False this object keeps the machine-wide lock (a restart)."""
        try:
            self._stop(timeout)
        finally:
            if release:
                self._unlock_machine()

    def _stop(self, timeout: float) -> None:
        pid_file = self.root / "run" / "devstack-samba.pid"
        pid = self._process.pid if self._process else None
        if pid is None and pid_file.exists():
            pid = int(pid_file.read_text())
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None:
                if self._process.poll() is not None:
                    break
            elif not _alive(pid):
                break
            time.sleep(0.05)
        else:
            os.killpg(pid, signal.SIGKILL)
            if self._process is not None:
                self._process.wait(5)
        self._process = None
        pid_file.unlink(missing_ok=True)

    # -- access -------------------------------------------------------------------------
    def admin_connection(self) -> ldap3.Connection:
        """A validated LDAPS connection bound as the domain Administrator."""
        return self.connection(self.admin_upn, ADMIN_PASSWORD)

    def connection(self, user: str, password: str) -> ldap3.Connection:
        """A validated LDAPS connection bound as `user`; raises LDAPBindError if refused."""
        tls = ValidatingTls(str(self.ca_file))
        server = ldap3.Server(
            "localhost", port=636, use_ssl=True, tls=tls, connect_timeout=2, get_info=ldap3.NONE
        )
        connection = ldap3.Connection(server, user=user, password=password, receive_timeout=10)
        try:
            if not connection.bind():
                raise LDAPBindError(str(connection.result.get("message", "bind refused")))
        except LDAPException:
            discard(connection)
            raise
        return connection

    def _run(self, command: list[str], what: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevstackError(
                f"samba-tool {what} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result.stdout

    def _log_tail(self) -> str:
        path = self.root / "log" / "samba.stdout"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
