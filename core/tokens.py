"""Client tokens: Ed25519-signed JWTs that name the user, the mesh and an expiry.

The issuer (`chatmesh token`, or a login service) keeps the private keys, one
PEM file of mode 0600 per key id. Edges hold only the public keys: a JSON Web
Key Set (RFC 7517) listing at most `MAX_PUBLIC_KEYS` keys, newest first.
`rotate` adds a key and keeps the previous public key, so tokens signed
before a rotation stay valid until they expire. The rotation after that
retires the older key. Each token names its key in the `kid` header.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from jwt.algorithms import OKPAlgorithm

from core.errors import ChatmeshError, InvalidToken
from core.ids import UserId
from core.schema import USER_PATTERN

log = structlog.get_logger(__name__)

ALGORITHM = "EdDSA"
DEFAULT_TTL_S = 24 * 3600
# Clock skew tolerated between the issuer and the edges, in seconds.
LEEWAY_S = 30
MAX_PUBLIC_KEYS = 2
# Key ids from a token's header are echoed in errors up to this length.
SHOWN_KID_CHARS = 40


class KeyStoreError(ChatmeshError):
    """The token key files are missing or unusable."""


@dataclass(frozen=True)
class SigningKey:
    """A private key and the id that tokens signed with it carry."""

    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)


class KeyStore:
    """The issuer's token keys: private PEM files and the public key set."""

    def __init__(self, private_dir: Path, public_file: Path) -> None:
        self.private_dir = private_dir
        self.public_file = public_file

    def ensure(self) -> SigningKey:
        """Return the signing key, creating the first key pair if there is none."""
        if not self.public_file.exists():
            return self.rotate()
        return self.signing_key()

    def signing_key(self) -> SigningKey:
        """Return the newest key, the one new tokens are signed with."""
        kids = [k["kid"] for k in _read_key_set(self.public_file)]
        if not kids:
            raise KeyStoreError(f"{self.public_file} lists no keys; run `keys rotate`")
        path = self._private_path(kids[0])
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise KeyStoreError(
                f"cannot load the token signing key {path}: {exc}; "
                "run `chatmesh keys rotate` to make a new one"
            ) from exc
        if not isinstance(loaded, Ed25519PrivateKey):
            raise KeyStoreError(f"{path} is not an Ed25519 private key")
        return SigningKey(kids[0], loaded)

    def rotate(self) -> SigningKey:
        """Add a new signing key; keep the previous public key, retire older ones."""
        key = SigningKey(secrets.token_hex(8), Ed25519PrivateKey.generate())
        self.private_dir.mkdir(parents=True, exist_ok=True)
        self.private_dir.chmod(0o700)
        path = self._private_path(key.kid)
        path.touch(mode=0o600)
        path.write_bytes(
            key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        old = _read_key_set(self.public_file) if self.public_file.exists() else []
        new_jwk = _public_jwk(key.kid, key.private_key.public_key())
        kept = [new_jwk, *old][:MAX_PUBLIC_KEYS]
        _write_key_set(self.public_file, kept)
        self._remove_private_keys_except(key.kid)
        log.info("tokens.key_rotated", kid=key.kid, valid=[k["kid"] for k in kept])
        return key

    def _private_path(self, kid: str) -> Path:
        return self.private_dir / f"{kid}.pem"

    def _remove_private_keys_except(self, kid: str) -> None:
        # Only the newest key signs, so older private keys are not kept.
        for path in self.private_dir.glob("*.pem"):
            if path.stem != kid:
                path.unlink()


class PublicKeys:
    """The public keys an edge accepts, reloaded whenever their file changes.

    A file that changes into something unreadable is logged, and the keys
    loaded before stay in use.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._reload_if_changed()
        if not self._keys:
            raise KeyStoreError(
                f"{path} lists no token public keys; start the mesh with "
                "`chatmesh up` or run `chatmesh keys rotate`"
            )

    def get(self, kid: str) -> Ed25519PublicKey | None:
        self._reload_if_changed()
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        self._reload_if_changed()
        return list(self._keys)

    def _reload_if_changed(self) -> None:
        try:
            info = self.path.stat()
        except OSError as exc:
            if self._stamp is None:
                raise KeyStoreError(
                    f"cannot read token public keys {self.path}: {exc.strerror}"
                ) from exc
            log.error("tokens.keys_unreadable", path=str(self.path), error=exc.strerror)
            return
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        try:
            keys = {k["kid"]: _public_key(k) for k in _read_key_set(self.path)}
        except (KeyStoreError, KeyError, ValueError) as exc:
            if self._stamp is None:
                raise KeyStoreError(
                    f"invalid token key set {self.path}: {exc}"
                ) from exc
            log.error("tokens.keys_invalid", path=str(self.path), error=str(exc))
            return
        self._keys, self._stamp = keys, stamp
        log.info("tokens.keys_loaded", path=str(self.path), kids=list(keys))


def mint_token(
    key: SigningKey,
    user: str,
    audience: str,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """Return a token for `user` on the mesh `audience`, valid for `ttl_s` seconds."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": user, "aud": audience, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(
        claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid}
    )


def verify_token(keys: PublicKeys, audience: str, token: str) -> UserId:
    """Return the user a token names; raise `InvalidToken` saying why if invalid.

    Error messages never contain the token, so callers may log them.
    """
    public_key = _key_for(keys, token)
    try:
        claims = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            audience=audience,
            leeway=LEEWAY_S,
            options={"require": ["sub", "exp", "aud", "iat"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token has expired; request a new one") from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidToken(
            f"token is for another mesh; this mesh accepts audience {audience!r}"
        ) from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken(
            "token is invalid: its signature does not verify; request a new one"
        ) from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"token is invalid: it has no {exc.claim!r} claim") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(
            f"token is invalid ({type(exc).__name__}); request a new one"
        ) from exc
    user = claims["sub"]
    if not isinstance(user, str) or re.fullmatch(USER_PATTERN, user) is None:
        raise InvalidToken("token subject is not a valid user name")
    return UserId(user)


def _key_for(keys: PublicKeys, token: str) -> Ed25519PublicKey:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(
            "token is invalid: it is not a well-formed JWT; request a new one"
        ) from exc
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(
            f"token is invalid: only {ALGORITHM} signatures are accepted"
        )
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidToken("token is invalid: its header has no key id (kid)")
    public_key = keys.get(kid)
    if public_key is None:
        raise InvalidToken(
            f"token key id {kid[:SHOWN_KID_CHARS]!r} is unknown or retired; "
            "request a new token"
        )
    return public_key


def _public_jwk(kid: str, public_key: Ed25519PublicKey) -> dict[str, Any]:
    jwk: dict[str, Any] = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def _public_key(jwk: dict[str, Any]) -> Ed25519PublicKey:
    key = OKPAlgorithm.from_jwk(jwk)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"key {jwk.get('kid')!r} is not an Ed25519 public key")
    return key


def _read_key_set(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise KeyStoreError(f"{path} is not valid JSON: {exc.msg}") from exc
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise KeyStoreError(f'{path} must hold a JSON object {{"keys": [...]}}')
    return keys


def _write_key_set(path: Path, keys: list[dict[str, Any]]) -> None:
    # Replace the file in one step, so an edge never reads half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
    os.replace(partial, path)
