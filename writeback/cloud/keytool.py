"""The cloud's signing key: create it for Key Vault, and publish its public half for the relays.

    python -m writeback.cloud.keytool init --out DIR [--kid cloud.sig.2026-11]
        DIR/writeback-cloud-signing-key   the private ES256 JWK: the Key Vault secret's value
        DIR/cloud-jwks.json               the public JWKS: every relay's `relay.cloud_keys` file
    python -m writeback.cloud.keytool public --key FILE [--add JWKS]
        prints the public JWKS of a private key file, merged into an existing JWKS (rotation:
        relays trust old and new keys while the Key Vault secret is switched)

The private file is created owner-only (0600) and never printed. Exit 0 on success, 2 when an
argument or file is unusable (the message names it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from joserfc.jwk import ECKey

from writeback.cloud.secrets import SIGNING_KEY_SECRET, parse_signing_key
from writeback.errors import ConfigurationError
from writeback.sealing import public_keyset


def new_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": "ES256"})


def public_jwks(keys: list[ECKey]) -> dict[str, object]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def init(out: Path, kid: str) -> tuple[Path, Path]:
    """Write a fresh private key (0600, refusing to overwrite) and its public JWKS."""
    out.mkdir(parents=True, exist_ok=True)
    key = new_key(kid)
    private = out / SIGNING_KEY_SECRET
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(json.dumps(key.as_dict(private=True)))
    public = out / "cloud-jwks.json"
    public.write_text(json.dumps(public_jwks([key]), indent=2) + "\n")
    return private, public


def public(key_file: Path, add: Path | None) -> dict[str, object]:
    """The public JWKS of `key_file`, after the keys already in `add` (other kids kept)."""
    key = parse_signing_key(str(key_file), key_file.read_text())
    keys: list[ECKey] = []
    if add is not None:
        existing = public_keyset(json.loads(add.read_text()), str(add))
        keys = [k for k in existing.keys if isinstance(k, ECKey) and k.kid != key.kid]
    return public_jwks([*keys, key])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m writeback.cloud.keytool")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("init", help="create the cloud signing key")
    create.add_argument("--out", type=Path, required=True)
    create.add_argument("--kid", default=time.strftime("cloud.sig.%Y-%m-%d"))
    show = commands.add_parser("public", help="print the public JWKS of a private key")
    show.add_argument("--key", type=Path, required=True)
    show.add_argument("--add", type=Path, help="a JWKS to merge the key into")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            private, public_file = init(args.out, args.kid)
            print(f"private key (Key Vault secret {SIGNING_KEY_SECRET}): {private}")
            print(f"public JWKS (each relay's relay.cloud_keys): {public_file}")
        else:
            print(json.dumps(public(args.key, args.add), indent=2))
    except FileExistsError as exc:
        print(f"--out: {exc.filename} exists; not overwriting a key", file=sys.stderr)
        return 2
    except (OSError, ValueError, ConfigurationError) as exc:
        print(f"keytool: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
