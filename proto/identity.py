"""Component identities: the ``spiffe://aerie/...`` URI SAN every aerie certificate carries.

Peers authorise callers by this identity, not only by the CA that signed them. The format is part of
the wire contract between components: ``spiffe://aerie/<kind>`` or ``spiffe://aerie/<kind>/<name>``
(``edge``, ``agent/analyst``).
"""

from __future__ import annotations

import functools

from cryptography import x509

__all__ = ["identity_of", "spiffe_id"]


def spiffe_id(component: str) -> str:
    """``agent-analyst`` → ``spiffe://aerie/agent/analyst``; ``edge`` → ``spiffe://aerie/edge``."""
    kind, _, name = component.partition("-")
    return f"spiffe://aerie/{kind}/{name}" if name else f"spiffe://aerie/{kind}"


@functools.lru_cache(maxsize=256)
def identity_of(cert: bytes | str) -> str | None:
    """The first ``spiffe://`` URI SAN of a PEM or DER certificate; None when it has none or does not
    parse. Cached: the same peer certificate arrives with every request on a kept-alive connection."""
    data = cert.encode("ascii", "replace") if isinstance(cert, str) else cert
    try:
        if data.lstrip().startswith(b"-----"):
            parsed = x509.load_pem_x509_certificate(data)
        else:
            parsed = x509.load_der_x509_certificate(data)
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    return uris[0] if uris else None
