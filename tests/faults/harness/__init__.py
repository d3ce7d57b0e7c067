"""Fault-injection harness: the production stack on private servers, a witness, a ledger.

Every scenario runs deliverer as operators do (the Procfile's processes as real
subprocesses) on its *own* PostgreSQL and Redis, started here on free loopback ports in a
temporary directory, so they can be killed and restarted without touching the shared
servers other test sessions use:

* ``PrivatePostgres`` / ``PrivateRedis``: throw-away servers (``initdb`` + ``pg_ctl`` run
  as the ``postgres`` OS user when we are root; ``redis-server`` without persistence).
* ``Stack``: the environment, ``deliverer db upgrade``, gunicorn serving the API, Celery
  workers (threads or prefork) and beats; every process in its own process group, so a
  ``kill -9`` or the final teardown reaches its children too.
* ``Witness``: wraps the test receiver (``tests.support.receiver``): every request is
  answered by a *plan* keyed on its ``webhook-id`` and attempt number (deterministic for a
  seed, whatever the order of arrival), and each answer is remembered (2xx or not).
* ``Publisher``: the producer, over ``POST /internal/v1/events``, at a fixed rate, retrying
  what the API did not acknowledge, and timing every call.
* ``FaultLog`` and ``Ledger``: when each fault was injected, and the end-of-run accounting:
  published = delivered + failed-final + still pending (+ lost, which must be 0), with the
  receiver's log as the witness; duplicates counted and each explained by a fault in flight.

Everything is bounded in time: servers and processes are awaited with deadlines, HTTP
calls have timeouts, and ``Stack.close`` tears everything down even after a failure.
A scenario, in short (the ``stack`` fixture is ``with running_stack(tmp_path) as
stack``: private PostgreSQL + Redis, migrated; ``receiver`` and ``faults`` are fixtures
too)::

    witness = Witness(receiver, steady(0.1))     # or flaky(seed), chaos(seed, timeout)
    worker = stack.start_worker("w1", wait=False)
    stack.start_api()
    publisher = Publisher(stack, stack.create_partner(witness.url("/hook")))
    publisher.start(count=300, rate=30)
    with faults.inject("kill -9 worker"):
        worker.kill9()
    publisher.join(timeout=30)
    stack.settle(timeout=60)
    ledger = Ledger.collect("my scenario", stack, witness, publisher, faults)
    REPORT.record(ledger)                         # JSON: $DELIVERER_FAULT_REPORT
    assert ledger.lost == 0 and ledger.duplicates_unexplained == 0

One module per part, each re-exported here: ``servers`` (PostgreSQL, Redis), ``stack``
(the stack and its settings), ``processes`` (one process group), ``witness`` and ``plans``
(the receiver), ``publisher``, ``fault_log``, ``ledger`` and ``report``.
"""

from tests.faults.harness.fault_log import Fault, FaultLog
from tests.faults.harness.ledger import Ledger, Row, pending_details, read_rows
from tests.faults.harness.plans import (
    EXPECTED_KIND,
    chaos,
    chaos_behaviours,
    chaos_is_doomed,
    flaky,
    steady,
)
from tests.faults.harness.processes import ManagedProcess
from tests.faults.harness.publisher import Publication, Publisher
from tests.faults.harness.report import REPORT, FaultReport
from tests.faults.harness.servers import PrivatePostgres, PrivateRedis
from tests.faults.harness.stack import (
    ADMIN_TOKEN,
    BASE_ENV,
    EXCEPTION_LINE,
    REPO,
    REQUEST_TIMEOUT,
    Stack,
    running_stack,
)
from tests.faults.harness.witness import Answer, Plan, Witness

__all__ = [
    "ADMIN_TOKEN",
    "BASE_ENV",
    "EXCEPTION_LINE",
    "EXPECTED_KIND",
    "REPO",
    "REPORT",
    "REQUEST_TIMEOUT",
    "Answer",
    "Fault",
    "FaultLog",
    "FaultReport",
    "Ledger",
    "ManagedProcess",
    "Plan",
    "PrivatePostgres",
    "PrivateRedis",
    "Publication",
    "Publisher",
    "Row",
    "Stack",
    "Witness",
    "chaos",
    "chaos_behaviours",
    "chaos_is_doomed",
    "flaky",
    "pending_details",
    "read_rows",
    "running_stack",
    "steady",
]
