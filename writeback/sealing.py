"""Sealing and signing on JOSE (joserfc): what makes Service Bus untrusted transport.

Passwords are sealed as JWE (RSA-OAEP-256 key wrapping, A256GCM content encryption, JSON
serialization with one recipient per relay key) with the request's identity bound as additional
authenticated data; messages are signed as compact JWS with ES256 (P-256, which Key Vault keys
support). Every key carries a `kid`. joserfc's exceptions become `ProtocolError` here and nowhere
else. Nothing here ever puts a password or a private key into a string it returns or raises.
"""

from __future__ import annotations

KEY_WRAPPING = "RSA-OAEP-256"
CONTENT_ENCRYPTION = "A256GCM"
SIGNING = "ES256"
RSA_BITS = 3072
EC_CURVE = "P-256"
