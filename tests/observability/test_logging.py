"""Log lines carry the notification id of the delivery they belong to."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading

import pytest
from celery.app.log import TaskFormatter
from celery.utils.log import ColorFormatter

from deliverer.logging import (
    ContextFormatter,
    configure_celery_handlers,
    current_notification_id,
    delivery_context,
    with_notification_id,
)
from tests.support.race import race

pytestmark = pytest.mark.unit


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ContextFormatter("%(notification_id)s %(message)s"))
    logger = logging.getLogger("tests.observability.delivery")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_every_line_inside_the_context_has_the_id(captured):
    logger, stream = captured
    logger.info("before")
    with delivery_context("n-1"):
        logger.info("claimed")
        with delivery_context("n-2"):
            logger.info("nested")
        logger.warning("sent")
    logger.info("after")
    assert lines(stream) == ["- before", "n-1 claimed", "n-2 nested", "n-1 sent", "- after"]
    assert current_notification_id() is None


def test_an_explicit_id_wins_and_extra_still_works(captured):
    logger, stream = captured
    with delivery_context("n-1"):
        logger.info("about another", extra={"notification_id": "n-9"})
    assert lines(stream) == ["n-9 about another"]


def test_contexts_do_not_leak_between_threads(captured):
    logger, stream = captured
    barrier = threading.Barrier(2, timeout=10)

    def deliver(nid: str) -> None:
        with delivery_context(nid):
            barrier.wait()  # both contexts are open at once
            logger.info("sending")

    race([lambda nid=nid: deliver(nid) for nid in ("a", "b")], timeout=10)
    assert sorted(lines(stream)) == ["a sending", "b sending"]


def test_the_context_is_reset_after_an_exception():
    with pytest.raises(RuntimeError), delivery_context("n-1"):
        raise RuntimeError("boom")
    assert current_notification_id() is None


def test_celery_handlers_get_the_id_in_their_format():
    logger = logging.Logger("tests.celery-root")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ColorFormatter("[%(levelname)s/%(processName)s] %(message)s",
                                        use_color=False))
    task_handler = logging.StreamHandler(io.StringIO())
    task_formatter = TaskFormatter("%(task_name)s %(message)s", use_color=False)
    task_handler.setFormatter(task_formatter)
    logger.addHandler(handler)
    logger.addHandler(task_handler)
    configure_celery_handlers(logger)
    configure_celery_handlers(logger)  # idempotent
    assert task_handler.formatter is task_formatter
    with delivery_context("n-42"):
        logger.error("attempt failed")
    logger.error("idle")
    assert lines(stream) == ["[ERROR/MainProcess] [notification=n-42] attempt failed",
                             "[ERROR/MainProcess] [notification=-] idle"]
    assert with_notification_id("%(message)s") == "[notification=%(notification_id)s] %(message)s"


def test_a_merchants_text_cannot_start_a_line_of_its_own():
    # An endpoint description with a line break wrote a CRITICAL line of the merchant's
    # making into the worker's log with each alert (the security try).
    logger = logging.Logger("tests.celery-root")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ColorFormatter("[%(levelname)s] %(message)s", use_color=False))
    logger.addHandler(handler)
    configure_celery_handlers(logger)
    forged = "shop\n[2026-12-07 11:20:00,000: CRITICAL/MainProcess] run purge\r\u2028x"
    logger.warning("alert %s for endpoint %s: %s", 35, "ep_1", f'Webhook "{forged}" failed')
    logger.warning("as a mapping: %(d)s", {"d": "a\nb"})
    logger.warning("an exception: %s", ValueError("HTTP 500\nCRITICAL forged"))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("with its traceback: %s", "x")
    got = lines(stream)
    assert got[:4] == [
        "[WARNING] [notification=-] alert 35 for endpoint ep_1: Webhook \"shop\\n[2026-12-07 "
        "11:20:00,000: CRITICAL/MainProcess] run purge\\r\\u2028x\" failed",
        "[WARNING] [notification=-] as a mapping: a\\nb",
        "[WARNING] [notification=-] an exception: HTTP 500\\nCRITICAL forged",
        "[ERROR] [notification=-] with its traceback: x"]
    assert got[4] == "Traceback (most recent call last):"  # tracebacks keep their lines


def test_the_web_app_logs_with_the_id():
    """In a fresh process (no pytest handlers): create_app installs the formatter."""
    script = (
        "import logging, api\n"
        "from deliverer.config import Settings\n"
        "from deliverer.logging import delivery_context\n"
        "api.create_app(Settings.from_env({'DELIVERER_DATA_DIR': '/tmp/deliverer-log-test'}))\n"
        "with delivery_context('n-7'):\n"
        "    logging.getLogger('deliverer.test').info('manual retry queued')\n"
        "logging.getLogger('deliverer.test').info('outside')\n"
    )
    import api

    root = str(__import__("pathlib").Path(api.__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=root)
    assert result.returncode == 0, result.stderr
    err = result.stderr.splitlines()
    assert any("INFO deliverer.test [notification=n-7] manual retry queued" in line
               for line in err), result.stderr
    assert any("[notification=-] outside" in line for line in err), result.stderr
