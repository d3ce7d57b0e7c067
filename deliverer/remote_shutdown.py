"""``celery control shutdown`` stops a worker the way SIGTERM does.

Celery's own ``shutdown`` control command raises ``WorkerShutdown`` from the worker's
event loop: a warm stop, but without the ``worker_shutting_down`` signal, which Celery
sends only from its SIGTERM/SIGINT handlers. ``deliverer.worker`` hangs the stop path on
that signal (``deliverer.stopping``: batches start no new POST and hand their unsent
deliveries back, the purge stops between batches), so a remote shutdown would let every
running batch send all it holds first. This replaces the command, under the same name,
with one that sends the signal first and then raises as Celery's does. The handler runs
in the worker's own process (where the threads pool runs the tasks), like SIGTERM's.
"""

from __future__ import annotations

from typing import Any

from celery import signals
from celery.exceptions import WorkerShutdown
from celery.platforms import EX_OK
from celery.utils.log import get_logger
from celery.worker.control import control_command

logger = get_logger(__name__)


@control_command()
def shutdown(state: Any, msg: str = "Got shutdown from remote", **_: Any) -> None:
    """Shutdown worker(s): a warm stop, as on SIGTERM."""
    logger.warning(msg)
    signals.worker_shutting_down.send(sender=state.consumer.hostname, sig="remote",
                                      how="Warm", exitcode=EX_OK)
    raise WorkerShutdown(EX_OK)
