"""The broker stopped and restarted mid-run: the private Redis, or in the RabbitMQ pass
the private RabbitMQ node. The API keeps accepting events during the outage (the row is
committed first; the enqueue fails fast and leaves the row to the sweep), and everything
is delivered once the broker is back, by the same worker and beat, with remote control
on (a worker used to hang here on Redis: deliverer.celery_app's Redis options).

This Redis keeps nothing on disk, so the messages queued before the stop (a backlog is
built up on purpose by pausing the worker for a moment) are gone: the sweep's
lost-message grace recovers them. RabbitMQ keeps them (durable queues, persistent
messages) and hands back what the worker held unacknowledged.

On RabbitMQ a worker used to stop running anything after such a restart, 1 run in 4:
Celery restored its prefetch count from a pool thread, on the AMQP socket the main
loop was reading (deliverer.celery_app, worker_enable_prefetch_count_reduction)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults import harness
from tests.support.backend import BACKEND

EVENTS = 300
RATE = 30.0
OUTAGE = 4.0
FAST = 2.0  # seconds: "accepted quickly" during the outage


BROKER = "rabbitmq" if BACKEND == "rabbitmq" else "redis"


def test_broker_restart_mid_run(stack: harness.Stack, receiver, faults: harness.FaultLog):
    began = time.monotonic()
    # The frozen worker's POSTs in flight count as slow sends (delivery/sending/slow_lane.py), so
    # the endpoint would take 2 at a time per worker for the default minute after, and the
    # backlog would drain in that minute, not in seconds. The slow lane has its own tests;
    # here it only made the scenario 45 s longer.
    stack.extra_env["DELIVERER_SLOW_WINDOW"] = "3"
    witness = harness.Witness(receiver, harness.steady(0.05))
    worker, beat, _web, partner = stack.start_pipeline(witness.url("/hook"))

    publisher = harness.Publisher(stack, partner)
    publisher.start(EVENTS, RATE)
    time.sleep(2.0)
    # Let a backlog build up in the broker first (the worker paused for a moment), so that the
    # stop really loses queued messages, not only an empty queue.
    worker.pause()
    try:
        time.sleep(1.5)
        queued = stack.broker.queued_messages()
        with faults.inject(f"{BROKER} stop/start", detail=f"{OUTAGE:.0f}s down") as outage:
            # The worker stays frozen across the stop: it wakes to a dead connection with
            # tasks in flight, the case where Celery's prefetch reduction once hung a
            # threads-pool worker on RabbitMQ (deliverer.celery_app).
            stack.broker.stop(signal.SIGTERM)
            worker.resume()
            time.sleep(OUTAGE)
            down = (outage.start, time.monotonic())
            stack.broker.start()
    finally:
        worker.resume()

    publisher.join(timeout=30)
    settle_s = stack.settle(timeout=90)
    ledger = harness.Ledger.collect(f"{BROKER} restart", stack, witness, publisher, faults)
    during = publisher.stats(window=down)
    # Each publish whose message could not be sent says so once; the sweep enqueued those.
    left_to_sweep = sum(p.log().count("; the beat sweep will enqueue")
                        for p in stack.processes if p.role == "web")
    ledger.extra.update({
        "duration_s": round(time.monotonic() - began, 1),
        "settle_s": round(settle_s, 1),
        "api": publisher.stats(),
        "api_during_outage": during,
        "published_while_broker_down": left_to_sweep,
        "queued_messages_at_the_stop": queued,
        "processes_alive_after": {p.name: p.alive() for p in (worker, beat)},
    })
    harness.REPORT.record(ledger)

    # Publishing was accepted during the outage, at once, on the first try.
    assert during["acknowledged"] >= 10, ledger.explain(stack)
    assert left_to_sweep > 0, ledger.explain(stack)
    # Redis loses what was queued. RabbitMQ keeps it, and its count of ready messages
    # leaves out what the frozen worker had prefetched (up to 32), which is often all.
    assert queued > 0 or BROKER == "rabbitmq", ledger.explain(stack)
    assert during["errors"] == {}, ledger.explain(stack)
    assert during["max_latency_s"] < FAST, ledger.explain(stack)
    # And everything was delivered afterwards, by the same processes (a worker can hang
    # here: see the module's docstring).
    assert worker.alive() and beat.alive(), stack.logs()
    assert ledger.published == EVENTS, ledger.explain(stack)
    assert ledger.balanced, ledger.explain(stack)
    assert ledger.lost == 0, ledger.explain(stack)
    assert ledger.pending == 0 and ledger.failed_final == 0, ledger.explain(stack)
    assert ledger.delivered == EVENTS, ledger.explain(stack)
    assert ledger.duplicates_unexplained == 0, ledger.explain(stack)


IN_FLIGHT_EVENTS = 200
IN_FLIGHT_STOPS = 4


@pytest.mark.skipif(BROKER != "redis", reason="deliverer's Redis transport's own failure")
@pytest.mark.parametrize("stack", [False, True], ids=["redis", "rediss"], indirect=True)
def test_broker_stopped_while_tasks_run(stack: harness.Stack, receiver,
                                        faults: harness.FaultLog):
    """Redis stops, four times, while the worker has tasks running (a receiver taking
    0.3 s a POST): each time the worker closes the lost connection, handing the running
    tasks' messages back, reconnects and goes on, and every event arrives. Also over
    TLS (``rediss://``, the certificate verified), which uses the same transport.

    The worker used to exit at the first or second stop: Celery 5.7 detaches the
    transport (``collect``) before it closes the connection, and the channel's
    hand-back then failed in kombu with AttributeError ("'NoneType' object has no
    attribute 'hostname'"), which Celery takes for unrecoverable
    (deliverer/broker/redis_transport.py). Not run on RabbitMQ: its node takes seconds
    to stop and start, so four stops leave the worker's reconnect backoff at 10 s and
    more, and the test would measure a 40 s backlog on one endpoint instead."""
    witness = harness.Witness(receiver, harness.steady(0.3))
    worker, beat, _web, partner = stack.start_pipeline(witness.url("/hook"), concurrency=16)

    publisher = harness.Publisher(stack, partner)
    publisher.start(IN_FLIGHT_EVENTS, RATE)
    for _ in range(IN_FLIGHT_STOPS):
        time.sleep(1.5)
        with faults.inject(f"{BROKER} stop/start", detail="1s down, tasks running"):
            stack.broker.stop(signal.SIGTERM)
            time.sleep(1.0)
            stack.broker.start()
        time.sleep(0.5)  # the worker notices the loss at once; its close follows
        assert worker.alive(), worker.tail(120)

    publisher.join(timeout=30)
    stack.settle(timeout=90)
    scheme = stack.broker.url.partition(":")[0]  # redis or rediss
    ledger = harness.Ledger.collect(f"{scheme} stopped while tasks run", stack, witness,
                                    publisher, faults)
    harness.REPORT.record(ledger)
    assert worker.alive() and beat.alive(), stack.logs()
    assert "Unrecoverable error" not in worker.log(), worker.tail(120)
    assert ledger.published == IN_FLIGHT_EVENTS, ledger.explain(stack)
    assert ledger.lost == 0 and ledger.balanced, ledger.explain(stack)
    assert ledger.delivered == IN_FLIGHT_EVENTS, ledger.explain(stack)
    assert ledger.duplicates_unexplained == 0, ledger.explain(stack)
