"""Is a secret file or directory private to the relay's service account? One answer for all callers.

The relay refuses to start when its private keys, its journal or its bind password file can be
reached by anyone else (keys.py, journal.py, settings.py ask here). On POSIX that is the mode bits
(nothing for group or others) and, for the key store, the owner. On Windows mode bits mean
nothing and the DACL decides: an allow ACE that lets anyone but SYSTEM, BUILTIN\\Administrators,
the relay's service (NT SERVICE\\WritebackRelay) or the process's own user read, write, delete or
re-permission the file is refused, and the message names the account and the icacls command that
fixes it. That decision (`exposure`, `describe`) is a pure function of the ACEs, tested on any
system; only the small pywin32 reader and writer at the bottom run on Windows alone.

This module never loosens or repairs an existing file: a loose ACL or mode means someone chose it,
and they should know. `make_private` only closes what the relay has just created itself.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import stat
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from writeback.errors import ConfigurationError

WINDOWS = sys.platform == "win32"
SERVICE_NAME = "WritebackRelay"  # the Windows service; its SID is granted on every private file

# Well-known SIDs (MS-DTYP 2.4.2.4).
SYSTEM = "S-1-5-18"
ADMINISTRATORS = "S-1-5-32-544"
USERS = "S-1-5-32-545"
EVERYONE = "S-1-1-0"
AUTHENTICATED_USERS = "S-1-5-11"
WELL_KNOWN = {
    SYSTEM: "NT AUTHORITY\\SYSTEM",
    ADMINISTRATORS: "BUILTIN\\Administrators",
    USERS: "BUILTIN\\Users",
    EVERYONE: "Everyone",
    AUTHENTICATED_USERS: "NT AUTHORITY\\Authenticated Users",
    "S-1-5-32-546": "BUILTIN\\Guests",
    "S-1-5-2": "NT AUTHORITY\\NETWORK",
    "S-1-5-4": "NT AUTHORITY\\INTERACTIVE",
    "S-1-5-6": "NT AUTHORITY\\SERVICE",
    "S-1-5-19": "NT AUTHORITY\\LOCAL SERVICE",
    "S-1-5-20": "NT AUTHORITY\\NETWORK SERVICE",
    "S-1-3-0": "CREATOR OWNER",
    "S-1-3-4": "OWNER RIGHTS",
}

# ACE types (MS-DTYP 2.4.4.1). Only allow ACEs grant; conditional (callback) allow ACEs count as
# granting because their condition is not evaluated here. Deny ACEs never grant anything.
ACCESS_ALLOWED = 0x00
ACCESS_DENIED = 0x01
ACCESS_ALLOWED_OBJECT = 0x05
ACCESS_DENIED_OBJECT = 0x06
ACCESS_ALLOWED_CALLBACK = 0x09
ACCESS_ALLOWED_CALLBACK_OBJECT = 0x0B
_GRANTING = frozenset(
    {ACCESS_ALLOWED, ACCESS_ALLOWED_OBJECT, ACCESS_ALLOWED_CALLBACK, ACCESS_ALLOWED_CALLBACK_OBJECT}
)
INHERIT_ONLY = 0x08
INHERITED = 0x10

# File access rights (MS-DTYP 2.4.3; winnt.h). A directory's list/add-file rights share the bits.
FILE_READ_DATA = 0x1
FILE_WRITE_DATA = 0x2
FILE_APPEND_DATA = 0x4
FILE_DELETE_CHILD = 0x40
FILE_READ_AND_EXECUTE = 0x1200A9  # what icacls calls (RX); inherited by Users from C:\ProgramData
FILE_ALL_ACCESS = 0x1F01FF  # icacls (F)
DELETE = 0x10000
WRITE_DAC = 0x40000
WRITE_OWNER = 0x80000
GENERIC_ALL = 0x10000000
GENERIC_WRITE = 0x40000000
GENERIC_READ = 0x80000000
READS = FILE_READ_DATA | GENERIC_READ | GENERIC_ALL
WRITES = FILE_WRITE_DATA | FILE_APPEND_DATA | FILE_DELETE_CHILD | DELETE | GENERIC_WRITE
# Whoever may rewrite the DACL or take ownership may grant themselves everything else.
CONTROLS = WRITE_DAC | WRITE_OWNER


def service_sid(name: str = SERVICE_NAME) -> str:
    """The SID of `NT SERVICE\\<name>`: S-1-5-80 and the SHA-1 of the upper-cased name in UTF-16LE
    as five little-endian 32-bit numbers. The name fixes it, so an ACL can grant it before the
    service exists, and it is both the virtual account's SID and the service SID that Windows adds
    to the token of a service with an unrestricted SID type (so a gMSA-run relay holds it too)."""
    digest = hashlib.sha1(name.upper().encode("utf-16-le"), usedforsecurity=False).digest()
    return "S-1-5-80-" + "-".join(str(part) for part in struct.unpack("<5I", digest))


def allowed_sids(current_user: str, service: str = SERVICE_NAME) -> frozenset[str]:
    """Who may hold rights on the relay's secrets: SYSTEM, Administrators, the service, and the
    user this process runs as (the relay's own account, or the administrator running a command)."""
    return frozenset({SYSTEM, ADMINISTRATORS, service_sid(service), current_user})


@dataclass(frozen=True)
class Ace:
    """One access control entry, as the decision needs it: whose, which rights, allow or deny, and
    its flags (inherited, inherit-only). `name` is the account's name when the reader found one."""

    sid: str
    mask: int
    type: int = ACCESS_ALLOWED
    flags: int = 0
    name: str | None = None

    @property
    def inherited(self) -> bool:
        return bool(self.flags & INHERITED)


def exposure(aces: Iterable[Ace], allowed: Iterable[str]) -> list[Ace]:
    """The allow ACEs that let someone outside `allowed` read, write, delete or re-permission.

    Deny ACEs are skipped: they never grant, and a deny that happens to cover an allow does not
    excuse it (the ACL stays one edit away from exposure). Inherit-only ACEs count: on a directory
    they reach every file created in it later, SQLite's -wal and -shm files included.
    """
    permitted = frozenset(allowed)
    return [
        ace
        for ace in aces
        if ace.type in _GRANTING
        and ace.sid not in permitted
        and ace.mask & (READS | WRITES | CONTROLS)
    ]


def describe(
    path: Path, exposed: Iterable[Ace], *, directory: bool, service: str = SERVICE_NAME
) -> str:
    """One line for an exposed path: who can do what (each account once, by the most it can do),
    and the icacls command that closes it."""
    exposed = list(exposed)
    by_account: dict[str, list[Ace]] = {}
    for ace in exposed:
        by_account.setdefault(ace.sid, []).append(ace)
    verbs: dict[str, list[str]] = {"readable": [], "writable": [], "open to permission changes": []}
    for aces in by_account.values():
        mask = 0
        for ace in aces:
            mask |= ace.mask
        verb = (
            "readable"
            if mask & READS
            else "writable"
            if mask & WRITES
            else "open to permission changes"
        )
        verbs[verb].append(_account(aces))
    said = [f"{verb} by {_listed(accounts)}" for verb, accounts in verbs.items() if accounts]
    fix = icacls(path, exposed, directory=directory, service=service)
    return f"{path} is {', and '.join(said)}; fix it with: {fix}"


def icacls(
    path: Path, exposed: Iterable[Ace], *, directory: bool, service: str = SERVICE_NAME
) -> str:
    """The icacls command that leaves `path` to SYSTEM, Administrators and the service alone.

    /inheritance:r drops every inherited ACE; explicit ones of other accounts are removed by SID;
    the grants use SIDs (`*S-1-...`) so the command works in every language of Windows, and are
    quoted so that PowerShell does not read `(OI)(CI)` as an expression.
    """
    inherit = "(OI)(CI)" if directory else ""
    explicit = list(dict.fromkeys(a.sid for a in exposed if not a.inherited))
    words = [f'icacls "{path}"', "/inheritance:r"]
    if explicit:
        words += ["/remove:g", *(f"*{sid}" for sid in explicit)]
    grants = (SYSTEM, ADMINISTRATORS, service_sid(service))
    words += ["/grant:r", *(f'"*{sid}:{inherit}F"' for sid in grants)]
    return " ".join(words)


def private_sddl(sids: Iterable[str], *, directory: bool) -> str:
    """A protected DACL (no inheritance from above) giving full control to `sids` only; on a
    directory the ACEs are inherited by what is created in it."""
    inherit = "OICI" if directory else ""
    return "D:P" + "".join(f"(A;{inherit};FA;;;{sid})" for sid in dict.fromkeys(sids))


def problem(
    path: Path,
    status: os.stat_result,
    *,
    directory: bool = False,
    owner: bool = False,
    precise: bool = True,
) -> str | None:
    """Why `path` is not private to the relay, as a sentence that starts with the path and ends
    with the fix; None when it is private.

    `status` is the caller's stat of `path` (the caller has checked the file type). `owner`: on
    POSIX also require that the relay's uid owns it (the key store does); on Windows the DACL
    alone decides. `precise=False` keeps the wording the journal and the bind password file have
    always used: any group or other bit is "readable by others".
    """
    if WINDOWS:
        return _windows_problem(path, directory=directory)
    return _posix_problem(path, status, directory=directory, owner=owner, precise=precise)


def _posix_problem(
    path: Path, status: os.stat_result, *, directory: bool, owner: bool, precise: bool
) -> str | None:
    if owner and status.st_uid != os.getuid():
        return f"{path} is owned by uid {status.st_uid}, not by the relay's uid {os.getuid()}"
    mode = stat.S_IMODE(status.st_mode)
    if not mode & 0o077:
        return None
    wanted = "700" if directory else "600"
    if not precise:
        return f"{path} is readable by others (mode {mode:o}); chmod {wanted} it"
    reach = "readable" if mode & 0o044 else "accessible"
    who = "others" if mode & 0o007 else "its group"
    return f"{path} is {reach} by {who} (mode {mode:o}); chmod {wanted} it"


def _account(aces: list[Ace]) -> str:
    """`BUILTIN\\Users (S-1-5-32-545, inherited)`, or the bare SID when no name is known."""
    sid = aces[0].sid
    name = next((ace.name for ace in aces if ace.name), None) or WELL_KNOWN.get(sid)
    inherited = any(ace.inherited for ace in aces)
    if name:
        return f"{name} ({sid}, inherited)" if inherited else f"{name} ({sid})"
    return f"{sid} (inherited)" if inherited else sid


def _listed(accounts: list[str]) -> str:
    return " and ".join(accounts) if len(accounts) < 3 else ", ".join(accounts)


def _windows_problem(path: Path, *, directory: bool) -> str | None:
    try:
        aces, user = read_dacl(path)
    except ImportError:
        return f"cannot check who can read {path}: pywin32 is missing (install writeback[relay])"
    except OSError as exc:
        return f"cannot check who can read {path}: {exc.strerror or exc}"
    exposed = exposure(aces, allowed_sids(user))
    return describe(path, exposed, directory=directory) if exposed else None


# --- Windows only: thin pywin32 calls, imported at call time, never on POSIX. ---------------------
_SE_FILE_OBJECT = 1
_DACL_SECURITY_INFORMATION = 0x4
_PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000
_SDDL_REVISION_1 = 1
_TOKEN_QUERY = 0x8
_TOKEN_USER = 1  # TOKEN_INFORMATION_CLASS.TokenUser


def _pywin32() -> tuple[ModuleType, ModuleType, ModuleType]:
    names = ("win32security", "win32api", "pywintypes")
    security, api, types = (importlib.import_module(name) for name in names)
    return security, api, types


def read_dacl(path: Path) -> tuple[list[Ace], str]:
    """The DACL of `path` and the string SID of the user this process runs as, read with pywin32.

    Windows only, and the one reading part of this module that no unit test runs (it needs NTFS
    and a Windows token): keep it a plain transcription of the Win32 calls and leave every decision
    to `exposure`. A NULL DACL grants everyone everything, so it comes back as one Everyone ACE.
    pywin32's errors, and ACE types it cannot decode, come back as OSError.
    """
    security, api, types = _pywin32()
    try:
        descriptor = security.GetNamedSecurityInfo(
            str(path), _SE_FILE_OBJECT, _DACL_SECURITY_INFORMATION
        )
        dacl = descriptor.GetSecurityDescriptorDacl()
        if dacl is None:
            aces = [Ace(EVERYONE, GENERIC_ALL)]
        else:
            aces = [_ace(security, types, dacl.GetAce(i)) for i in range(dacl.GetAceCount())]
        return aces, _current_user(security, api)
    except types.error as exc:
        raise OSError(exc.winerror, exc.strerror) from exc
    except NotImplementedError as exc:  # pywin32 decodes allow, deny and object ACEs only
        raise OSError(
            0, f"it holds an ACE pywin32 cannot decode ({exc}); review it with icacls"
        ) from exc


def _ace(security: ModuleType, types: ModuleType, raw: tuple[Any, ...]) -> Ace:
    # ((type, flags), mask, sid) or ((type, flags), mask, object type, inherited type, sid)
    (ace_type, flags), mask, sid = raw[0], raw[1], raw[-1]
    try:
        account, domain, _ = security.LookupAccountSid(None, sid)
        name: str | None = f"{domain}\\{account}" if domain else str(account)
    except types.error:
        name = None  # a deleted account: its SID is all there is
    return Ace(
        sid=str(security.ConvertSidToStringSid(sid)),
        mask=int(mask) & 0xFFFFFFFF,  # pywin32 hands the DWORD over as a signed long
        type=int(ace_type),
        flags=int(flags),
        name=name,
    )


def _current_user(security: ModuleType, api: ModuleType) -> str:
    token = security.OpenProcessToken(api.GetCurrentProcess(), _TOKEN_QUERY)
    sid, _attributes = security.GetTokenInformation(token, _TOKEN_USER)
    return str(security.ConvertSidToStringSid(sid))


def make_private(path: Path, *, directory: bool = False) -> None:
    """Close a file or directory the relay has just created: on Windows a protected DACL with full
    control for SYSTEM, Administrators and the relay's service (plus the current user when its
    token holds neither Administrators nor the service SID, so it keeps access to what it made).
    On POSIX it does nothing: the callers create files 0600 and directories 0700 from the start.

    Windows only in effect, and not unit-tested (see `read_dacl`). Raises OSError.
    """
    if not WINDOWS:
        return
    security, api, types = _pywin32()
    try:
        sids = [SYSTEM, ADMINISTRATORS, service_sid()]
        if not any(
            security.CheckTokenMembership(None, security.ConvertStringSidToSid(sid))
            for sid in sids[1:]
        ):
            sids.append(_current_user(security, api))
        descriptor = security.ConvertStringSecurityDescriptorToSecurityDescriptor(
            private_sddl(sids, directory=directory), _SDDL_REVISION_1
        )
        security.SetNamedSecurityInfo(
            str(path),
            _SE_FILE_OBJECT,
            _DACL_SECURITY_INFORMATION | _PROTECTED_DACL_SECURITY_INFORMATION,
            None,
            None,
            descriptor.GetSecurityDescriptorDacl(),
            None,
        )
    except types.error as exc:
        raise OSError(exc.winerror, f"cannot make {path} private: {exc.strerror}") from exc


def check_trusted_file(path: Path, setting: str) -> None:
    """Refuse a file that decides whom the relay trusts (the cloud's public keys) when anyone but
    root or the relay could change what it says: whoever can, could make the relay accept their
    requests. As sshd's StrictModes: the file a regular file, not a symbolic link, owned by root
    or the relay's uid and writable by its owner only; every folder on the way to it owned by
    root or the relay's uid and not writable by group or others unless sticky (/tmp: nobody can
    replace what they do not own there); every symbolic link on the way owned by root or the
    relay's uid. POSIX only; on Windows the install script closes the configuration folder."""
    if sys.platform == "win32":
        return
    try:
        status = path.lstat()
        problem = _file_problem(path, status) or _way_problem(path)
    except OSError as exc:
        raise ConfigurationError(setting, f"cannot read {path} ({type(exc).__name__})") from exc
    if problem is not None:
        raise ConfigurationError(setting, problem)


_TRUSTED_OWNERS = frozenset({0})


def _owner_ok(status: os.stat_result) -> bool:
    return status.st_uid in _TRUSTED_OWNERS or status.st_uid == os.getuid()


def _file_problem(path: Path, status: os.stat_result) -> str | None:
    if stat.S_ISLNK(status.st_mode):
        return f"{path} is a symbolic link: give the file itself"
    if not stat.S_ISREG(status.st_mode):
        return f"{path} is not a regular file"
    if not _owner_ok(status):
        return (
            f"{path} is owned by uid {status.st_uid}, neither root nor the relay's uid "
            f"{os.getuid()}: chown it"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        return (
            f"{path} is writable by group or others (mode {mode:o}); whoever can write it "
            "decides which requests the relay accepts: chmod 644 it"
        )
    return None


def _way_problem(path: Path) -> str | None:
    """Why someone but root or the relay could swap a folder or link on the way to `path`."""
    walked = Path(path.absolute().anchor)
    for part in path.absolute().parent.parts[1:]:
        walked = walked / part
        link = walked.lstat()
        if stat.S_ISLNK(link.st_mode) and not _owner_ok(link):
            return (
                f"{walked} is a symbolic link owned by uid {link.st_uid}: whoever owns it can "
                "point it elsewhere"
            )
    real = path.parent.resolve()
    for folder in (real, *real.parents):
        status = folder.stat()
        mode = stat.S_IMODE(status.st_mode)
        if not _owner_ok(status):
            return (
                f"{folder} is owned by uid {status.st_uid}: whoever owns it can replace "
                f"{path.name}; keep the file in a folder of root or the relay"
            )
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return (
                f"{folder} is writable by group or others (mode {mode:o}); whoever can write "
                f"it can replace {path.name}: chmod 755 it, or move the file"
            )
    return None
