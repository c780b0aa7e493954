"""A local certificate authority and one certificate per component, for running outside Kubernetes.

Every component has its own identity, a URI SAN ``spiffe://aerie/<kind>/<name>``; peers authorise
callers by that identity, not only by the CA. In Kubernetes cert-manager issues the same shape.

Layout written by `init_pki` (``aerie certs init DIR``)::

    DIR/ca.crt  DIR/ca.key
    DIR/<component>.crt  DIR/<component>.key     (component such as ``edge``, ``agent-analyst``)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aerie.proto.identity import identity_of, spiffe_id

__all__ = [
    "DEFAULT_COMPONENTS",
    "LOCAL_HOSTS",
    "Pki",
    "identity_of",
    "init_pki",
    "issue",
    "make_ca",
    "spiffe_id",
]

DEFAULT_COMPONENTS = (
    "edge",
    "falco",
    "brain",
    "agent-detect",
    "agent-analyst",
    "agent-reviewer",
    "agent-remediate",
    "agent-notify",
    "mcp-attack",
    "cli",
)
_VALIDITY = dt.timedelta(days=365)
LOCAL_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pki:
    """Paths of one component's credentials and the CA that signed them."""

    ca: Path
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "aerie local CA") -> tuple[Path, Path]:
    """Create ``ca.crt``/``ca.key`` in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
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
        .sign(key, hashes.SHA256())
    )
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    ca_crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, key)
    return ca_crt, ca_key


def issue(
    directory: Path,
    component: str,
    *,
    hosts: Iterable[str] = LOCAL_HOSTS,
) -> Pki:
    """Issue ``<component>.crt``/``.key`` signed by ``directory``'s CA, usable as client and server.

    The certificate carries the component's SPIFFE URI and ``hosts`` as DNS/IP SANs.
    """
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("ca.key is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(component))]
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, component)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    crt, key_path = directory / f"{component}.crt", directory / f"{component}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return Pki(ca=directory / "ca.crt", cert=crt, key=key_path)


def init_pki(
    directory: Path, components: Iterable[str] = DEFAULT_COMPONENTS, *, hosts: Iterable[str] = ()
) -> dict[str, Pki]:
    """A fresh CA and one certificate per component in ``directory``, valid for the local names and
    ``hosts`` (the DNS names or addresses peers dial, e.g. Kubernetes Service names)."""
    make_ca(directory)
    names = (*LOCAL_HOSTS, *(h for h in hosts if h not in LOCAL_HOSTS))
    return {c: issue(directory, c, hosts=names) for c in components}
