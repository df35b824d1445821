"""The account index: every name an account was seen by, so its records are found by any of them.

A caller may name one AD account in several ways (a UPN, a SID, a GUID or immutable ID,
`DOMAIN\\name`; `writeback.protocol.accounts`), and the cloud's UPN may not even be AD's. Per-user
records (the history, the drift check, the side-by-side check with Microsoft's writeback) must
see every request for the account, whichever name each used. So:

- each audit record is filed under the name the caller typed (`name_key`: the name as AD compares
  it), and, once a relay's signed outcome names the account it resolved (objectGUID first), under
  the account's GUID as well;
- that outcome also links each of the account's names (the typed one, its UPN, its SID,
  `NETBIOS\\sam`) to the GUID, both ways: name → GUIDs, GUID → names;
- a lookup by any name (`account_keys`) finds the GUIDs linked to it, then every name linked to
  those GUIDs; the records filed under all of those names and GUIDs are the account's, including
  requests still pending (their marks carry only the typed name) and records written before the
  index existed (filed under the UPN, whose key is unchanged).

Only verified outcomes link names: a caller cannot tie a name to an account by typing it. Pure
(keys and names); the audit trail adapters store and read the links.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable

from writeback.protocol.accounts import Account, AccountRef, AnchorKind, BadReference, upn_key


def name_key(user: str) -> str:
    """A user's name as AD compares it, whatever spelling the caller used: a UPN as `upn_key`
    folds it (case and width; the key records filed before the index used), a SID and a GUID in
    canonical form, `NETBIOS\\sam` with the account name case-folded. Text that names no account
    (a record refused for its user) keys as a UPN would."""
    try:
        ref = AccountRef.parse(user)
    except BadReference:
        return upn_key(user)
    if ref.kind is AnchorKind.UPN:
        return upn_key(ref.value)
    if ref.kind is AnchorKind.SAM:
        return f"{ref.netbios}\\{upn_key(ref.sam_account_name or '')}"
    return ref.value


def key_digest(key: str) -> str:
    """A name key as a table key: its SHA-256, 40 hex digits (any name, no forbidden character)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def account_names(account: Account, typed: str, netbios: str | None) -> list[str]:
    """The names to link to `account`: the one the caller typed, the account's UPN and SID, and
    `NETBIOS\\sam` when the domain's NetBIOS name is known; each once (by `name_key`). Not its
    objectGUID: a lookup by that GUID reads the account's records without a link."""
    names = [typed, account.upn, account.sid]
    if netbios and account.sam_account_name:
        names.append(f"{netbios}\\{account.sam_account_name}")
    unique: dict[str, str] = {}
    for name in names:
        if name:
            unique.setdefault(name_key(name), name)
    return list(unique.values())


async def account_keys(
    user: str,
    guids_of: Callable[[str], Awaitable[Iterable[str]]],
    names_of: Callable[[str], Awaitable[Iterable[str]]],
) -> tuple[set[str], set[str]]:
    """The name keys and GUIDs whose records are the account's that `user` names: the GUIDs
    linked to `user` (and `user` itself if it is a GUID), then every name linked to them.
    `guids_of` reads the GUIDs linked to a name key, `names_of` the names linked to a GUID."""
    key = name_key(user)
    guids = set(await guids_of(key))
    try:
        if AccountRef.parse(user).kind is AnchorKind.GUID:
            guids.add(key)
    except BadReference:
        pass
    keys = {key}
    for guid in sorted(guids):
        keys.update(name_key(name) for name in await names_of(guid))
    return keys, guids
