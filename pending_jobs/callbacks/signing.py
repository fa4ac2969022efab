"""Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from ..errors import ConfigError

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret: the base64-decoded part after the prefix."""
    encoded = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # Never echo the secret itself: it may be a real key with one typo.
        where = "after 'whsec_'" if secret.startswith(PREFIX) else "(and has no 'whsec_' prefix)"
        raise ConfigError(f"callback_secret: a secret is not valid base64 {where}") from None
    if not key:
        raise ConfigError("callback_secret: a secret is empty")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Signer:
    """Signs with every configured secret (two during a rotation); no secret means unsigned."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._keys = [secret_key(secret) for secret in secrets]

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers (without a signature when no secret is set)."""
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self._keys:
            headers["webhook-signature"] = " ".join(signature(key, msg_id, timestamp, body) for key in self._keys)
        return headers
