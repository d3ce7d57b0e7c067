"""What went wrong with a POST that raised: the failure kind merchants read, and a
message."""

from __future__ import annotations

import http.client
import socket
import ssl

import requests
import urllib3.exceptions

from deliverer.delivery.sending.http.dial import BlockedAddress
from deliverer.delivery.troubleshooting import FailureKind
from deliverer.errors import UnsafeUrl

# A read timeout: requests' read timeout is the POST's total deadline (``sender``).
READ_TIMEOUT = "Timed out waiting for the webhook response"
HANDSHAKE_TIMEOUT = "Timed out during the TLS handshake (no request was sent)"

def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.append(current)
        for nxt in (current.__cause__, current.__context__, *current.args):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return seen


def classify_exception(exc: BaseException) -> tuple[FailureKind, str]:
    chain = _chain(exc)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    if has(BlockedAddress, UnsafeUrl):
        return FailureKind.BLOCKED, "Connection refused by the SSRF guard: " + str(exc)
    if has(requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
           requests.exceptions.InvalidSchema, urllib3.exceptions.LocationParseError):
        return FailureKind.INVALID_URL, f"Invalid webhook URL: {exc}"
    if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
        return FailureKind.DNS, "DNS resolution failed for the webhook host"
    if has(requests.exceptions.SSLError, ssl.SSLError):
        return FailureKind.TLS, f"TLS handshake failed: {_tls_reason(chain, exc)}"
    if has(requests.exceptions.ConnectTimeout):
        return FailureKind.TIMEOUT, "Timed out connecting to the webhook URL"
    if any(isinstance(e, TimeoutError) and "handshake" in str(e) for e in chain):
        # urllib3 reports it as a read timeout; the ssl module's own error says which
        # phase: no request was sent, so "no complete response" would mislead.
        return FailureKind.TIMEOUT, HANDSHAKE_TIMEOUT
    if has(requests.exceptions.Timeout, socket.timeout, TimeoutError):
        return FailureKind.TIMEOUT, READ_TIMEOUT
    if has(ConnectionRefusedError):
        return FailureKind.CONNECTION_REFUSED, "Connection refused by the webhook host"
    if has(http.client.BadStatusLine) and not has(
            http.client.RemoteDisconnected):  # a close before any byte: a reset, below
        return FailureKind.INVALID_RESPONSE, "The webhook host's answer was not HTTP"
    if has(ConnectionResetError, BrokenPipeError, urllib3.exceptions.ProtocolError,
           requests.exceptions.ChunkedEncodingError):
        return FailureKind.CONNECTION_RESET, "Connection closed by the webhook host"
    return FailureKind.CONNECTION_ERROR, f"Could not reach the webhook URL: {type(exc).__name__}"


def _tls_reason(chain: list[BaseException], exc: BaseException) -> str:
    """The TLS library's own words ("certificate verify failed: self-signed
    certificate"), without urllib3's wrapping (its pool's name, "Max retries exceeded")."""
    for error in chain:
        if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
            return f"certificate verify failed: {error.verify_message}"
    for error in chain:
        if isinstance(error, ssl.SSLError) and error.reason:
            return str(error.reason).replace("_", " ").lower()
    return str(exc)
