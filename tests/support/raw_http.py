"""Requests no HTTP client library sends, written to a socket by hand: what gunicorn
refuses before the app sees it."""

from __future__ import annotations

import json
import socket
from typing import Any

# Each refusal gunicorn makes itself, with the status the API answers it with.
REFUSED = {
    "a request line over 4 KiB": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                                  414),
    "a header over 8 KiB": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000
                            + b"\r\n\r\n", 431),
    "over 100 header fields": (b"GET / HTTP/1.1\r\nHost: x\r\n"
                               + b"".join(b"X-H%d: 1\r\n" % i for i in range(120))
                               + b"\r\n", 431),
    "no request line": (b"GARBAGE\r\n\r\n", 400),
}


def send_raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, str, Any]:
    """Send ``data`` to 127.0.0.1:``port``; the answer's status, Content-Type and JSON
    body (None if it is not JSON)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), parsed


def assert_refusals_in_json(port: int) -> None:
    """Each of gunicorn's own refusals answers with the API's error body."""
    for what, (data, status) in REFUSED.items():
        got, content_type, body = send_raw(port, data)
        assert (got, content_type) == (status, "application/json"), what
        assert body is not None and body["statusCode"] == status, (what, body)
        assert body["code"] and body["message"], (what, body)
