"""Client tokens: Ed25519 signatures, expiry, audience and key rotation."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest

from core.errors import InvalidToken
from core.tokens import KeyStore, KeyStoreError, PublicKeys, mint_token, verify_token

MESH = "test-mesh"


def key_store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "secrets" / "token-keys", tmp_path / "token-keys.json")


def reject_reason(keys: PublicKeys, token: str, audience: str = MESH) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify_token(keys, audience, token)
    assert token not in caught.value.message
    return caught.value.message


def test_round_trip_names_user_and_key(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    key = store.ensure()
    token = mint_token(key, "alice", MESH)

    assert verify_token(PublicKeys(store.public_file), MESH, token) == "alice"
    assert jwt.get_unverified_header(token) == {
        "alg": "EdDSA",
        "kid": key.kid,
        "typ": "JWT",
    }


def test_private_key_file_is_owner_only(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    key = store.ensure()
    assert (store.private_dir / f"{key.kid}.pem").stat().st_mode & 0o777 == 0o600
    assert store.private_dir.stat().st_mode & 0o777 == 0o700
    assert "PRIVATE" not in store.public_file.read_text()
    assert "d" not in json.loads(store.public_file.read_text())["keys"][0]


def test_bad_tokens_rejected_with_reason(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    key = store.ensure()
    keys = PublicKeys(store.public_file)
    good = mint_token(key, "alice", MESH)
    other_store = key_store(tmp_path / "other")
    stranger = mint_token(other_store.ensure(), "alice", MESH)

    cases = {
        "expired": mint_token(key, "alice", MESH, ttl_s=10, now=time.time() - 120),
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "wrong audience": mint_token(key, "alice", "another-mesh"),
        "unknown key": stranger,
        "garbage": "not-a-token",
        "bad subject": mint_token(key, "Alice Smith", MESH),
    }
    reasons = {name: reject_reason(keys, token) for name, token in cases.items()}

    assert "expired" in reasons["expired"]
    assert "signature does not verify" in reasons["tampered"]
    assert "another mesh" in reasons["wrong audience"]
    assert MESH in reasons["wrong audience"]
    assert "unknown or retired" in reasons["unknown key"]
    assert "not a well-formed JWT" in reasons["garbage"]
    assert "not a valid user name" in reasons["bad subject"]


def test_token_within_leeway_accepted(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    token = mint_token(store.ensure(), "alice", MESH, ttl_s=10, now=time.time() - 20)
    assert verify_token(PublicKeys(store.public_file), MESH, token) == "alice"


def test_other_algorithms_rejected(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    key = store.ensure()
    keys = PublicKeys(store.public_file)
    claims = {"sub": "alice", "aud": MESH, "iat": int(time.time()), "exp": 2**31}
    # An HMAC token keyed with the public key: the classic confusion.
    public_x = json.loads(store.public_file.read_text())["keys"][0]["x"]
    hmac = jwt.encode(claims, public_x, algorithm="HS256", headers={"kid": key.kid})
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"%s"}' % key.kid.encode())
    body = base64.urlsafe_b64encode(json.dumps(claims).encode())
    unsigned = f"{header.decode().rstrip('=')}.{body.decode().rstrip('=')}."

    assert "only EdDSA" in reject_reason(keys, hmac)
    assert "only EdDSA" in reject_reason(keys, unsigned)


def test_missing_claims_rejected(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    key = store.ensure()
    keys = PublicKeys(store.public_file)
    no_expiry = jwt.encode(
        {"sub": "alice", "aud": MESH, "iat": int(time.time())},
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid},
    )
    assert "'exp'" in reject_reason(keys, no_expiry)


def test_rotation_keeps_two_keys(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    first = store.ensure()
    keys = PublicKeys(store.public_file)
    first_token = mint_token(first, "alice", MESH)

    second = store.rotate()
    second_token = mint_token(second, "bob", MESH)
    assert verify_token(keys, MESH, first_token) == "alice"
    assert verify_token(keys, MESH, second_token) == "bob"
    assert store.signing_key().kid == second.kid

    third = store.rotate()
    assert keys.kids() == [third.kid, second.kid]
    assert "unknown or retired" in reject_reason(keys, first_token)
    assert verify_token(keys, MESH, second_token) == "bob"


def test_unreadable_update_keeps_loaded_keys(tmp_path: Path) -> None:
    store = key_store(tmp_path)
    token = mint_token(store.ensure(), "alice", MESH)
    keys = PublicKeys(store.public_file)

    store.public_file.write_text("{ not json")
    assert verify_token(keys, MESH, token) == "alice"


def test_missing_key_set_explains(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="cannot read token public keys"):
        PublicKeys(tmp_path / "absent.json")
