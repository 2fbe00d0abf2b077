"""Development certificates: a CA, a server certificate and a client certificate.

For meshes on one machine and for tests. Production meshes bring
certificates from their own CA and name the files in the topology's `tls`
section.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from topology.model import Tls

VALIDITY = datetime.timedelta(days=30)
DEFAULT_HOSTS = ("127.0.0.1", "localhost")

PrivateKey = ec.EllipticCurvePrivateKey


def write_dev_certificates(
    directory: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS
) -> Tls:
    """Write a CA and certificates for `hosts`; return the `tls` section naming them.

    The server certificate serves both ends of routes, so it carries the
    client-auth usage too. Private keys are written with mode 0600.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("chatmesh development CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _leaf_cert(
        "chatmesh server",
        server_key,
        ca_cert,
        ca_key,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        hosts,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _leaf_cert(
        "chatmesh client",
        client_key,
        ca_cert,
        ca_key,
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        (),
    )
    paths = {
        "ca_file": _write_cert(directory / "ca.pem", ca_cert),
        "cert_file": _write_cert(directory / "server.pem", server_cert),
        "key_file": _write_key(directory / "server-key.pem", server_key),
        "client_cert_file": _write_cert(directory / "client.pem", client_cert),
        "client_key_file": _write_key(directory / "client-key.pem", client_key),
    }
    return Tls.model_validate({k: str(v) for k, v in paths.items()})


def _leaf_cert(
    common_name: str,
    key: PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    usages: list[x509.ObjectIdentifier],
    hosts: tuple[str, ...],
) -> x509.Certificate:
    builder = (
        _builder(_name(common_name), ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: PrivateKey) -> Path:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path
