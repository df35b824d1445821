"""The relay's key store: its private keys in one directory, and their rotation.

A relay has an encryption pair (RSA, RSA-OAEP-256: the cloud seals passwords to its public key)
and a signing pair (EC P-256, ES256: it signs outcomes and heartbeats). Each private key is a JWK
file `<kid>.jwk`; `keyring.json` says which keys are pending, active or retired. Rotation overlaps:
a pending pair is published before it is used to sign, and a retired pair still opens requests
sealed to it until an administrator removes it. Loading refuses a directory or file that group or
others can reach, or that another user owns; it never repairs permissions itself. Nothing here puts
private key material into a repr, a message or an exception, and nothing here invents a format:
keys are joserfc JWKs, kids end in their RFC 7638 thumbprint.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from joserfc.jwk import ECKey, KeyParameters, KeySet, RSAKey, import_key

from writeback.errors import ConfigurationError, KeyStoreError
from writeback.relay import permissions
from writeback.sealing import EC_CURVE, KEY_WRAPPING, RSA_BITS, SIGNING

MANIFEST = "keyring.json"
VERSION = 1
ENC = "enc"
SIG = "sig"
ALGORITHMS = {ENC: KEY_WRAPPING, SIG: SIGNING}
SETTING = "keys.directory"
_RELAY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class KeyStatus(enum.StrEnum):
    PENDING = "pending"  # published, opens requests, does not sign yet
    ACTIVE = "active"  # published, opens requests, signs
    RETIRED = "retired"  # not published, still opens requests in flight, does not sign


@dataclass(frozen=True)
class KeyInfo:
    """What an administrator may know about one key: never its key material."""

    kid: str
    use: str
    status: KeyStatus
    created: datetime
    algorithm: str


@dataclass(frozen=True)
class _Entry:
    info: KeyInfo
    key: RSAKey | ECKey = field(repr=False, compare=False)


def validate_relay_id(relay_id: str) -> str:
    """Return `relay_id` if it is 1 to 64 of A-Z, a-z, 0-9, '-' and '_' (it starts every kid)."""
    if not _RELAY_ID.fullmatch(relay_id):
        raise ConfigurationError("relay.id", f"{relay_id[:80]!r} is not 1 to 64 of A-Z a-z 0-9 - _")
    return relay_id


class KeyStore:
    """The keys of one relay, kept in `directory`. Constructing it does not touch the disk; the
    first use (or `open()`) loads and checks it, and every change re-reads it first."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._relay_id: str | None = None
        self._entries: list[_Entry] = []

    def __repr__(self) -> str:
        return f"KeyStore({str(self._directory)!r}, relay_id={self._relay_id!r})"

    @classmethod
    def init(cls, directory: Path, relay_id: str) -> KeyStore:
        """Create `directory` (mode 0700) holding one active pair for `relay_id`. Refuses a
        directory that already holds a keyring or that group or others can reach."""
        validate_relay_id(relay_id)
        if directory.exists():
            _check_private(directory, is_directory=True)
            if (directory / MANIFEST).exists():
                raise ConfigurationError(SETTING, f"{directory} already holds a keyring")
        else:
            try:
                directory.mkdir(mode=0o700, parents=True)
                directory.chmod(0o700)  # ours, just made: the umask must not decide this
                permissions.make_private(directory, directory=True)  # Windows: mode means nothing
            except OSError as exc:
                raise ConfigurationError(
                    SETTING, f"cannot create {directory}: {exc.strerror}"
                ) from exc
        store = cls(directory)
        store._relay_id = relay_id
        store._commit([*store._generate_pair(KeyStatus.ACTIVE)])
        store.open()  # read back what was written, with the same checks as at start-up
        return store

    def open(self) -> None:
        """Load the keyring, checking permissions first; call again to pick up changes made by
        another process (`writeback-relay keys activate` while the relay runs)."""
        directory = self._directory
        _check_private(directory, is_directory=True)
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise ConfigurationError(SETTING, f"cannot read {directory}: {exc.strerror}") from exc
        for name in names:
            _check_private(directory / name, is_directory=False)
        if MANIFEST not in names:
            raise ConfigurationError(
                SETTING, f"{directory} holds no keyring; create one with 'keys init'"
            )
        relay_id, infos = _read_manifest(directory / MANIFEST)
        entries = [_Entry(info, _read_key(directory, info)) for info in infos]
        self._relay_id, self._entries = relay_id, entries

    @property
    def relay_id(self) -> str:
        """The relay these keys belong to; every kid starts with it."""
        return self._loaded()[0]

    def keys(self) -> list[KeyInfo]:
        """Every key in the keyring, oldest first."""
        return [entry.info for entry in self._loaded()[1]]

    def rotate(self) -> list[KeyInfo]:
        """Add a new enc + sig pair as pending. Refuses if a pending pair already exists."""
        self.open()
        if self._with(KeyStatus.PENDING):
            raise KeyStoreError("a pending pair already exists; activate it first")
        self._commit([*self._entries, *self._generate_pair(KeyStatus.PENDING)])
        return self.keys()

    def activate(self) -> list[KeyInfo]:
        """Make the pending pair active and the active pair retired. Refuses without a pending
        pair."""
        self.open()
        if not self._with(KeyStatus.PENDING):
            raise KeyStoreError("no pending pair to activate; create one with 'keys rotate'")
        moves = {KeyStatus.ACTIVE: KeyStatus.RETIRED, KeyStatus.PENDING: KeyStatus.ACTIVE}
        entries = [
            replace(e, info=replace(e.info, status=moves.get(e.info.status, e.info.status)))
            for e in self._entries
        ]
        self._commit(entries)
        return self.keys()

    def remove(self, kid: str) -> None:
        """Delete one retired key. Refuses an active or pending key, and an unknown kid."""
        self.open()
        entry = next((e for e in self._entries if e.info.kid == kid), None)
        if entry is None:
            raise KeyStoreError(f"no key {kid[:120]!r} in {self._directory}")
        if entry.info.status is not KeyStatus.RETIRED:
            raise KeyStoreError(f"{kid} is {entry.info.status}; only retired keys can be removed")
        self._commit([e for e in self._entries if e is not entry])
        try:
            (self._directory / f"{kid}.jwk").unlink()
        except OSError as exc:
            raise KeyStoreError(
                f"{kid} left the keyring but its file stayed: {exc.strerror}"
            ) from exc

    def public_jwks(self) -> dict[str, object]:
        """The public JWKS to register for this relay: active and pending keys, with kid, use,
        alg. Retired keys are left out so the cloud stops sealing to them."""
        published = self._with(KeyStatus.ACTIVE) + self._with(KeyStatus.PENDING)
        return {"keys": [entry.key.as_dict(private=False) for entry in published]}

    def decryption_keys(self) -> KeySet:
        """The private enc keys that may open a request: active, pending and retired."""
        return KeySet([entry.key for entry in self._loaded()[1] if entry.info.use == ENC])

    def signing_key(self) -> ECKey:
        """The active private sig key: the only key that signs outcomes and heartbeats."""
        (entry,) = (e for e in self._with(KeyStatus.ACTIVE) if e.info.use == SIG)
        if not isinstance(entry.key, ECKey):  # _read_key checked this; mypy cannot know
            raise KeyStoreError(f"{entry.info.kid} is not an EC key")
        return entry.key

    def _loaded(self) -> tuple[str, list[_Entry]]:
        if self._relay_id is None:
            self.open()
        return str(self._relay_id), self._entries

    def _with(self, status: KeyStatus) -> list[_Entry]:
        return [entry for entry in self._loaded()[1] if entry.info.status is status]

    def _generate_pair(self, status: KeyStatus) -> tuple[_Entry, _Entry]:
        created = datetime.now(UTC).replace(microsecond=0)
        enc = RSAKey.generate_key(RSA_BITS, private=True)
        sig = ECKey.generate_key(EC_CURVE, private=True)
        return self._entry(enc, ENC, status, created), self._entry(sig, SIG, status, created)

    def _entry(self, key: RSAKey | ECKey, use: str, status: KeyStatus, created: datetime) -> _Entry:
        kid = f"{self.relay_id}.{use}.{key.thumbprint()[:16]}"
        # The kid needs the key's thumbprint, so name the generated key afterwards, the way
        # joserfc's generate_key builds it (re-importing the JWK would re-validate the RSA key).
        parameters: KeyParameters = {"use": use, "alg": ALGORITHMS[use], "kid": kid}
        named: RSAKey | ECKey
        if isinstance(key, RSAKey):
            named = RSAKey(key.raw_value, key.raw_value, parameters)
        else:
            named = ECKey(key.raw_value, key.raw_value, parameters)
        return _Entry(KeyInfo(kid, use, status, created, ALGORITHMS[use]), named)

    def _commit(self, entries: list[_Entry]) -> None:
        """Write new key files, then the manifest: the manifest is the commit point, so a crash
        leaves at worst an unlisted key file, never a listed key without its file."""
        known = {entry.info.kid for entry in self._entries}
        try:
            for entry in entries:
                if entry.info.kid not in known:
                    text = json.dumps(entry.key.as_dict(private=True))
                    _write_private(self._directory / f"{entry.info.kid}.jwk", text)
            manifest = {
                "version": VERSION,
                "relay": self.relay_id,
                "keys": [_manifest_row(entry.info) for entry in entries],
            }
            _write_private(self._directory / MANIFEST, json.dumps(manifest, indent=2))
        except OSError as exc:
            raise KeyStoreError(f"cannot write to {self._directory}: {exc.strerror}") from exc
        self._entries = entries


def render(keys: list[KeyInfo]) -> str:
    """A plain table of `keys` for `writeback-relay keys list`."""
    rows = [("KID", "USE", "ALG", "STATUS", "CREATED")]
    rows += [(k.kid, k.use, k.algorithm, k.status, _iso(k.created)) for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _manifest_row(info: KeyInfo) -> dict[str, str]:
    return {"kid": info.kid, "use": info.use, "status": info.status, "created": _iso(info.created)}


def _check_private(path: Path, *, is_directory: bool) -> None:
    """Refuse `path` unless it is ours and closed to everyone else. The relay's keys open every
    password it will ever set, so it would rather not start than run with readable keys."""
    try:
        status = os.stat(path) if is_directory else os.lstat(path)
    except OSError as exc:
        raise ConfigurationError(SETTING, f"cannot read {path}: {exc.strerror}") from exc
    expected = stat.S_ISDIR if is_directory else stat.S_ISREG
    if not expected(status.st_mode):
        kind = "a directory" if is_directory else "a regular file"
        raise ConfigurationError(SETTING, f"{path} is not {kind}")
    problem = permissions.problem(path, status, directory=is_directory, owner=True)
    if problem:
        raise ConfigurationError(SETTING, problem)


def _read_manifest(path: Path) -> tuple[str, list[KeyInfo]]:
    def broken(problem: str) -> ConfigurationError:
        return ConfigurationError(SETTING, f"{path} is not a valid keyring: {problem}")

    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise broken(type(exc).__name__) from exc
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION:
        raise broken(f"expected an object with version {VERSION}")
    relay_id = manifest.get("relay")
    if not isinstance(relay_id, str) or not _RELAY_ID.fullmatch(relay_id):
        raise broken("'relay' is not a valid relay id")
    rows = manifest.get("keys")
    if not isinstance(rows, list):
        raise broken("'keys' is not a list")
    infos: list[KeyInfo] = []
    for row in rows:
        try:
            kid, use = str(row["kid"]), str(row["use"])
            status = KeyStatus(row["status"])
            created = datetime.fromisoformat(row["created"])
        except (TypeError, KeyError, ValueError) as exc:
            raise broken(f"a key entry is malformed ({type(exc).__name__})") from exc
        if created.tzinfo is None:
            raise broken(f"the creation time of {kid[:120]!r} has no time zone")
        if use not in ALGORITHMS or not re.fullmatch(
            rf"{relay_id}\.{use}\.[A-Za-z0-9_-]{{16}}", kid
        ):
            raise broken(f"{kid[:120]!r} is not an enc or sig kid of relay {relay_id}")
        infos.append(KeyInfo(kid, use, status, created.astimezone(UTC), ALGORITHMS[use]))
    kids = [info.kid for info in infos]
    if len(set(kids)) != len(kids):
        raise broken("a kid is listed twice")

    def count(status: KeyStatus) -> tuple[int, int]:
        enc = sum(i.status is status and i.use == ENC for i in infos)
        return enc, sum(i.status is status and i.use == SIG for i in infos)

    if count(KeyStatus.ACTIVE) != (1, 1):
        raise broken("expected exactly one active enc key and one active sig key")
    if count(KeyStatus.PENDING) not in {(0, 0), (1, 1)}:
        raise broken("expected no pending keys or one pending enc and one pending sig key")
    return relay_id, infos


def _read_key(directory: Path, info: KeyInfo) -> RSAKey | ECKey:
    path = directory / f"{info.kid}.jwk"
    try:
        key = import_key(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConfigurationError(SETTING, f"{path} is listed in {MANIFEST} but missing") from None
    except Exception:
        # `from None` on purpose: a JSON or JWK error may hold the file's text, the private key.
        raise ConfigurationError(SETTING, f"{path} is not a valid private JWK") from None
    kind = RSAKey if info.use == ENC else ECKey
    if (
        not isinstance(key, kind)
        or not key.is_private
        or (key.kid, key.get("use"), key.alg) != (info.kid, info.use, info.algorithm)
        or (kind is ECKey and key.get("crv") != EC_CURVE)
    ):
        raise ConfigurationError(
            SETTING, f"{path} does not hold the private {info.use} key {info.kid}"
        )
    return key


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically; the file is 0600 from its first byte."""
    # mkstemp creates the file with mode 0600 (never wider, whatever the umask) in the same
    # directory, so os.replace is atomic and no reader ever sees a partial or readable key.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            permissions.make_private(Path(temporary))  # Windows: before the first byte is written
            stream.write(text + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if permissions.WINDOWS:
        # No directory fsync on Windows (os.open refuses a directory). The bytes are on disk
        # already; a rename lost to a power cut leaves the previous, complete file in place.
        return
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
