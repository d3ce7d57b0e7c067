"""Certificates for the tests' TLS servers (SMTP, a receiver, Redis), made with the
openssl command."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path


def self_signed_certificate(directory: Path, name: str = "server") -> tuple[Path, Path] | None:
    """(certificate, key) for 127.0.0.1, made with the openssl command; None without it.
    The certificate is its own CA: a client verifies it given it as its CA file."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
