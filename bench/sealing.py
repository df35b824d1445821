"""Cost of sealing and signing a request, and of verifying and opening it, per message.

Ours is the full path: `seal_request` (JWE to every relay key + ES256 JWS, canonical JSON) on the
cloud side, `verify_request` + `open_request` (signature, strict parsing, binding check, JWE) on
the relay side. The baseline, run in the same process, is the bare cryptography the format needs,
called directly through `cryptography`: one RSA-OAEP-256 key wrap per relay key, one AES-256-GCM
encryption and one ECDSA P-256 signature; then one verification, one unwrap and one decryption.
The ratio is what JOSE, JSON and our checks add. Run with `python -m bench.sealing`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import ECKey, KeySet, RSAKey

from writeback import sealing
from writeback.protocol import Initiator, Operation
from writeback.protocol.messages import RequestMessage, Secrets

DOMAIN = "corp.example.test"
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def per_call_us(action: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    relays = [
        RSAKey.generate_key(sealing.RSA_BITS, parameters={"kid": f"r{i}.enc.k", "use": "enc"})
        for i in range(3)
    ]
    cloud = ECKey.generate_key(sealing.EC_CURVE, parameters={"kid": "cloud.sig.k", "use": "sig"})
    cloud_public = KeySet([ECKey.import_key(cloud.as_dict(private=False))])
    now = int(time.time())
    message = RequestMessage(
        id="bench-1",
        domain=DOMAIN,
        operation=Operation.RESET,
        user="alice@corp.example.test",
        issued_at=now,
        expires_at=now + 300,
        initiator=Initiator.ADMIN,
    )
    secrets = Secrets(new_password="Bench-Pa55word!")
    raw_cloud = cloud.private_key
    raw_relays = [key.private_key for key in relays]
    plaintext = b'{"newPassword":"Bench-Pa55word!","v":1}'

    print(
        f"{'relay keys':<11}{'ours seal+sign':>16}{'raw':>9}{'ratio':>8}"
        f"{'ours verify+open':>18}{'raw':>9}{'ratio':>8}   (median us per message)"
    )
    for count in (1, 2, 3):
        public = KeySet([RSAKey.import_key(k.as_dict(private=False)) for k in relays[:count]])
        token = sealing.seal_request(message, secrets, public, cloud)

        def ours_seal(public: KeySet = public) -> object:
            return sealing.seal_request(message, secrets, public, cloud)

        def ours_open(token: str = token) -> object:
            verified = sealing.verify_request(token, cloud_public, DOMAIN, now)
            return sealing.open_request(verified, KeySet([relays[0]]))

        def raw_seal(count: int = count) -> object:
            key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
            wrapped = [raw.public_key().encrypt(key, OAEP) for raw in raw_relays[:count]]
            body = AESGCM(key).encrypt(nonce, plaintext, message.binding())
            return raw_cloud.sign(body + b"".join(wrapped), ec.ECDSA(hashes.SHA256()))

        key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
        wrapped = raw_relays[0].public_key().encrypt(key, OAEP)
        body = AESGCM(key).encrypt(nonce, plaintext, message.binding())
        signature = raw_cloud.sign(body + wrapped, ec.ECDSA(hashes.SHA256()))

        def raw_open(
            signature: bytes = signature,
            body: bytes = body,
            wrapped: bytes = wrapped,
            nonce: bytes = nonce,
        ) -> object:
            raw_cloud.public_key().verify(signature, body + wrapped, ec.ECDSA(hashes.SHA256()))
            unwrapped = raw_relays[0].decrypt(wrapped, OAEP)
            return AESGCM(unwrapped).decrypt(nonce, body, message.binding())

        seal_ours, seal_raw = (
            per_call_us(ours_seal, args.rounds),
            per_call_us(raw_seal, args.rounds),
        )
        open_ours, open_raw = (
            per_call_us(ours_open, args.rounds),
            per_call_us(raw_open, args.rounds),
        )
        print(
            f"{count:<11}{seal_ours:>16.0f}{seal_raw:>9.0f}{seal_ours / seal_raw:>7.2f}x"
            f"{open_ours:>18.0f}{open_raw:>9.0f}{open_ours / open_raw:>7.2f}x"
        )
    print(f"({args.rounds} rounds each; request size with 3 keys: {len(token)} bytes)")


if __name__ == "__main__":
    main()
