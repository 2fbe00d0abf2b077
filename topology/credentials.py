"""NATS users of a mesh: their names, password files and client options.

Every process connects as its own user. Passwords are random, live in files
of mode 0600 under the run directory's secrets, and reach processes as file
paths: never on a command line, in an environment variable or in a log.
nats-server configs hold bcrypt hashes of the passwords, except a leaf
node's link to the hub, which must send its password in the clear (inside
TLS when the topology has a `tls` section).
"""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path

import bcrypt

from core.errors import ChatmeshError
from core.natsconn import NatsAuth
from topology.model import Tls, Topology

CORE_USER = "core"
# Operators' user in the application account, with every permission: the
# launcher's health probe, tests and people debugging a mesh use it.
OPS_USER = "ops"
# Hub nodes log in to each other's route listeners as this user.
ROUTE_USER = "route"
# The only user of the system account, for operators' monitoring requests.
SYSTEM_USER = "system"
PASSWORD_BYTES = 32
# Each connection's login costs one bcrypt check on the server: about 50 ms
# at cost 10 on one core of a 2020s x86 machine (an estimate, not measured
# here). Connections are long-lived, so a higher cost is affordable.
BCRYPT_ROUNDS = 10


class CredentialsError(ChatmeshError):
    """A password file is missing or unusable."""


def edge_user(edge: str) -> str:
    return f"edge-{edge}"


def leaf_user(region: str) -> str:
    return f"leaf-{region}"


def edge_inbox_prefix(edge: str) -> str:
    """Return the inbox prefix of an edge: replies to it, and only to it."""
    return f"_INBOX.edge.{edge}"


CORE_INBOX_PREFIX = "_INBOX.core"


def mesh_users(topology: Topology) -> list[str]:
    """Return every NATS user of the mesh."""
    users = [CORE_USER, OPS_USER, ROUTE_USER, SYSTEM_USER]
    for region in topology.regions:
        users.append(leaf_user(region.name))
        users.extend(edge_user(edge.name) for edge in region.edges)
    return users


def password_path(secrets_dir: Path, user: str) -> Path:
    return secrets_dir / f"{user}.password"


def ensure_passwords(secrets_dir: Path, users: list[str]) -> None:
    """Create a random password file (mode 0600) for each user that has none."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    for user in users:
        path = password_path(secrets_dir, user)
        if path.exists():
            continue
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(PASSWORD_BYTES))


def read_password(secrets_dir: Path, user: str) -> str:
    """Return the password of `user`; raise `CredentialsError` if it is unusable."""
    path = password_path(secrets_dir, user)
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise CredentialsError(
            f"cannot read the NATS password of {user!r} from {path}: {exc.strerror}; "
            "start the mesh with `chatmesh up`, which creates it"
        ) from exc
    if not password:
        raise CredentialsError(f"the NATS password file {path} is empty")
    return password


def password_hash(password: str) -> str:
    """Return the bcrypt hash nats-server compares a client's password with."""
    salt = bcrypt.gensalt(rounds=BCRYPT_ROUNDS)
    return bcrypt.hashpw(password.encode(), salt).decode()


def client_tls(tls: Tls | None) -> ssl.SSLContext | None:
    """Return the TLS context for a NATS client, or None without a `tls` section."""
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.verify_clients:
        context.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    return context


def client_auth(
    topology: Topology, secrets_dir: Path, user: str, inbox_prefix: str = "_INBOX"
) -> NatsAuth:
    """Return what a process needs to connect to NATS as `user`."""
    return NatsAuth(
        user=user,
        password=read_password(secrets_dir, user),
        inbox_prefix=inbox_prefix,
        tls=client_tls(topology.tls),
    )
