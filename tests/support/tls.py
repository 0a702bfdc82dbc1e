"""Certificates the tests make themselves, and Mosquitto with a TLS listener that wants them.

`make_pki` writes a CA, a server certificate for 127.0.0.1 (an IP SAN, so hostname checking
stays on) and a client certificate signed by that CA, with the `cryptography` package. Keys are
written 0600, as a device would keep them. `TlsMosquitto` is a `LoggingMosquitto` (Mosquitto
that persists and logs every packet) whose one listener speaks TLS with `require_certificate
true`: a client without a certificate from the CA is refused during the handshake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.fixtures.services import Mosquitto, free_port, running_broker

#: Long enough for any test run, short enough that a leaked file is useless.
_VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """One test's certificate authority and what it issued."""

    ca: Issued
    server: Issued
    client: Issued

    def client_context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        """A client TLS context that trusts the CA and (by default) presents the client cert."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        if with_cert:
            context.load_cert_chain(str(self.client.cert), str(self.client.key))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def pem_of(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A private key (by default a new P-256 one) as unencrypted PKCS#8 PEM."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = pem_of(key)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    path.chmod(0o600)


def _issue(
    directory: Path,
    stem: str,
    subject: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    server: bool = False,
) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(subject, key, key.public_key(), issuer=issuer, server=server)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return Issued(cert=cert_path, key=key_path), cert, key


def issue_client_cert(pki: Pki, public_key: CertificatePublicKeyTypes, path: Path) -> Path:
    """Write a client certificate from the test CA for a key held elsewhere (in a token)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert = _certificate("token core", None, public_key, issuer=(ca_cert, ca_key), server=False)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey | None,
    public_key: CertificatePublicKeyTypes,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    server: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name = _name(subject) if issuer is None else issuer[0].subject
    signing_key = issuer[1] if issuer is not None else key
    assert signing_key is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
    return builder.sign(signing_key, hashes.SHA256())


def make_pki(directory: Path, *, name: str = "test") -> Pki:
    """Write a CA, a server certificate for 127.0.0.1 and a client certificate into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = _issue(directory, f"{name}-ca", f"{name} CA", issuer=None)
    server, _, _ = _issue(
        directory, f"{name}-server", "127.0.0.1", issuer=(ca_cert, ca_key), server=True
    )
    client, _, _ = _issue(directory, f"{name}-client", f"{name} core", issuer=(ca_cert, ca_key))
    return Pki(ca=ca, server=server, client=client)


@dataclass
class LoggingMosquitto(Mosquitto):
    """Mosquitto that really persists and logs every packet, also when the tests run as root.

    Started as root, Mosquitto drops to the `mosquitto` user, who can't write into a test's
    0700 tmp directory (so `services.Mosquitto` runs with neither its log nor its persistence
    file there) nor read the test's 0600 keys; `user root` keeps it as it was started. As any
    other user the option is ignored.
    """

    def listener(self) -> str:
        """The listener section of the config."""
        return f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"

    def config(self) -> str:
        """The listener, persistence, every packet logged, and `user root` (see above)."""
        return (
            self.listener() + "user root\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "log_type all\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
        )

    def kill(self) -> None:
        """End the broker with SIGKILL: no goodbye to clients, nothing saved."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def log_text(self) -> str:
        """What the broker logged so far, over all its runs (connections, refusals, packets)."""
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def publishes_received(self, client_id: str, topic: str) -> int:
        """PUBLISH packets the broker got from a client on a topic since its latest start."""
        latest = self.log_text().rsplit(" starting\n", 1)[-1]
        return sum(
            1
            for line in latest.splitlines()
            if f"Received PUBLISH from {client_id} " in line and f"'{topic}'" in line
        )


@dataclass
class TlsMosquitto(LoggingMosquitto):
    """Mosquitto whose listener speaks only TLS and requires a client certificate from the CA."""

    pki: Pki | None = None

    @property
    def url(self) -> str:
        """The mqtts:// url a core config takes."""
        return f"mqtts://127.0.0.1:{self.port}"

    def listener(self) -> str:
        """A TLS listener that wants a client certificate issued by the test CA."""
        assert self.pki is not None
        return (
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {self.pki.ca.cert}\n"
            f"certfile {self.pki.server.cert}\n"
            f"keyfile {self.pki.server.key}\n"
            "require_certificate true\n"
            "allow_anonymous true\n"
        )


def run_logging_mosquitto(workdir: Path) -> contextlib.AbstractContextManager[LoggingMosquitto]:
    """Start a plain `LoggingMosquitto` on a free loopback port; stop it afterwards."""
    return running_broker(LoggingMosquitto(port=free_port(), workdir=workdir))


def run_tls_mosquitto(workdir: Path, pki: Pki) -> contextlib.AbstractContextManager[TlsMosquitto]:
    """Start a TLS-only Mosquitto on a free loopback port; stop it afterwards."""
    return running_broker(TlsMosquitto(port=free_port(), workdir=workdir, pki=pki))
