"""Client tokens: signed JWTs that name the user, the audience and an expiry."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import jwt

from core.errors import InvalidToken
from core.ids import UserId
from core.schema import USER_PATTERN

AUDIENCE = "chatmesh"
ALGORITHM = "HS256"
DEFAULT_TTL_S = 24 * 3600
MIN_SECRET_BYTES = 32


def load_secret(path: Path) -> bytes:
    """Read a signing secret from a file; raise `ValueError` if it is unusable."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(
            f"cannot read token secret file {path}: {exc.strerror}"
        ) from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"token secret in {path} has {len(secret)} bytes; "
            f"use at least {MIN_SECRET_BYTES} random bytes"
        )
    return secret


def ensure_secret(path: Path) -> bytes:
    """Return the secret in `path`, creating a random one (mode 0600) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(MIN_SECRET_BYTES))
        path.chmod(0o600)
    return load_secret(path)


def mint_token(
    secret: bytes, user: str, ttl_s: int = DEFAULT_TTL_S, now: float | None = None
) -> str:
    """Return a token for `user` valid for `ttl_s` seconds."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": user, "aud": AUDIENCE, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: bytes, token: str) -> UserId:
    """Return the user a token names; raise `InvalidToken` saying why if invalid."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token has expired; request a new one") from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidToken(f"token audience is not {AUDIENCE!r}") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"token is invalid ({exc}); request a new one") from exc
    user = claims["sub"]
    if not isinstance(user, str) or not _valid_user(user):
        raise InvalidToken(f"token subject {user!r} is not a valid user name")
    return UserId(user)


def _valid_user(user: str) -> bool:
    import re

    return re.fullmatch(USER_PATTERN, user) is not None
