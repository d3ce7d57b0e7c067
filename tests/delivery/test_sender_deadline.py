"""The total deadline of one POST, against a receiver that trickles its response."""

from __future__ import annotations

import pytest


@pytest.mark.unit
@pytest.mark.parametrize("interval", [0.05, 0.07])  # cut in the headers, after the CR
def test_total_deadline_holds_against_headers_trickled_byte_by_byte(interval):
    """requests' timeouts are per socket read; the watchdog bounds the whole exchange.
    A status line that came without its headers is no answer: no httpStatus."""
    import socket
    import threading
    import time as _time

    from deliverer.delivery.sending import sender

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                _time.sleep(interval)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    config = sender.SenderConfig(connect_timeout=1.0, total_timeout=1.0,
                                 allow_private_urls=True)
    start = _time.monotonic()
    try:
        result = sender.send(f"http://127.0.0.1:{server.getsockname()[1]}/", b"{}", {}, config)
    finally:
        stop.set()
        server.close()
    assert _time.monotonic() - start < 2.0
    assert not result.success and result.error["kind"] == "timeout"
    assert result.error["message"] == "No complete response within the 1 s deadline"
    assert result.status_code is None and result.error["httpStatus"] is None
