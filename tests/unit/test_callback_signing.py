"""Standard Webhooks signatures, checked against the reference verifier, and secrets at their edges."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pending_jobs.callbacks.signing import PREFIX, Signer, secret_key, signature
from pending_jobs.errors import ConfigError

VECTOR = json.loads((Path(__file__).resolve().parent.parent / "data" / "standard-webhooks.json").read_text())
BODY = b'{"type":"job.succeeded","data":{"id":1}}'


def verified(secret: str, headers: dict[str, str], body: bytes = BODY) -> bool:
    return bool(Webhook(secret).verify(body, headers))


def test_the_specifications_vector() -> None:
    key = secret_key(VECTOR["secret"])
    got = signature(key, VECTOR["webhook-id"], int(VECTOR["webhook-timestamp"]), VECTOR["body"].encode())
    assert got == VECTOR["webhook-signature"]


@pytest.mark.parametrize("size", range(1, 10))
def test_unpadded_secrets_of_every_length_sign_as_the_reference_reads_them(size: int) -> None:
    raw = bytes(range(40, 40 + size))
    padded = base64.b64encode(raw).decode()
    unpadded = padded.rstrip("=")
    assert (len(unpadded) % 4 != 0) == (size % 3 != 0)  # sizes 1, 2, 4, 5, 7, 8 need padding
    assert secret_key(PREFIX + unpadded) == secret_key(PREFIX + padded) == secret_key(padded) == raw
    now = int(time.time())
    partly = PREFIX + padded[:-1] if padded.endswith("==") else PREFIX + padded  # one '=' of two
    assert secret_key(partly) == raw
    for secret in (PREFIX + unpadded, PREFIX + padded, partly):
        headers = Signer([secret]).headers("msg_1_2", now, BODY)
        assert verified(PREFIX + padded, headers) and verified(PREFIX + unpadded, headers)


def test_each_of_two_secrets_verifies_during_a_rotation() -> None:
    first, second = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", PREFIX + "c2Vjb25kLXNlY3JldA"  # the second unpadded
    headers = Signer([first, second]).headers("msg_1_2", int(time.time()), BODY)
    assert headers["webhook-signature"].count("v1,") == 2 and " " in headers["webhook-signature"]
    assert verified(first, headers) and verified(second, headers)
    with pytest.raises(WebhookVerificationError):
        verified(first, Signer([second]).headers("msg_1_2", int(time.time()), BODY))


def test_a_signature_covers_id_timestamp_and_body() -> None:
    key = b"k" * 24
    base = signature(key, "msg_1", 1700000000, b"{}")
    assert base.startswith("v1,") and len(base64.b64decode(base[3:])) == 32
    others = [signature(key, "msg_2", 1700000000, b"{}"), signature(key, "msg_1", 1700000001, b"{}"),
              signature(key, "msg_1", 1700000000, b"{ }"), signature(b"j" * 24, "msg_1", 1700000000, b"{}")]
    assert len({base, *others}) == 5


def test_headers_without_a_secret_carry_no_signature() -> None:
    assert Signer([]).headers("msg_1_2", 1700000000, b"{}") == {"webhook-id": "msg_1_2",
                                                                "webhook-timestamp": "1700000000"}


def test_headers_with_a_secret() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = Signer([secret]).headers("msg_1_2", 1700000000, b"{}")
    assert headers == {"webhook-id": "msg_1_2", "webhook-timestamp": "1700000000",
                       "webhook-signature": signature(secret_key(secret), "msg_1_2", 1700000000, b"{}")}


@pytest.mark.parametrize("secret", ["whsec_", ""])
def test_an_empty_secret_is_a_config_error(secret: str) -> None:
    with pytest.raises(ConfigError, match=r"^callback_secret: a secret is empty$"):
        secret_key(secret)
    with pytest.raises(ConfigError):
        Signer([secret])


@pytest.mark.parametrize("secret", ["whsec_not*base64!", "whsec_Q", "whsec_QUJD=x", "whsec_QU JD", "whsec_Q===",
                                    "whsec_=", "whsec_==", "==", "whsec_é"])
def test_a_malformed_secret_is_a_config_error_that_does_not_echo_it(secret: str) -> None:
    with pytest.raises(ConfigError) as raised:
        secret_key(secret)
    where = "after 'whsec_'" if secret.startswith("whsec_") else "(and has no 'whsec_' prefix)"
    assert str(raised.value) == f"callback_secret: a secret is not valid base64 {where}"


def test_the_prefix_is_removed_only_at_the_start() -> None:
    assert secret_key("whsec_" + base64.b64encode(b"key").decode()) == b"key"
    assert secret_key(base64.b64encode(b"key").decode()) == b"key"  # without the prefix: base64 alone
    with pytest.raises(ConfigError):
        secret_key("xwhsec_" + base64.b64encode(b"key").decode())
