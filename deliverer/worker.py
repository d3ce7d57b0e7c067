"""Worker and beat entry point: ``celery -A deliverer.worker worker`` / ``beat``.

Tasks open their own database sessions and need no Flask application context, so
workers do not build the web app.
"""

import gc
import logging
import warnings
from typing import Any

from celery.exceptions import CPendingDeprecationWarning
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

# remote_shutdown registers `celery control shutdown` anew: SIGTERM's stop path (below);
# pool_controls the pool commands the threads pool cannot do, answered without a traceback.
from deliverer import pool_controls, remote_shutdown, stopping  # noqa: F401
from deliverer.celery_app import make_celery

log = logging.getLogger(__name__)

celery_app = make_celery()
app = celery_app


@worker_ready.connect  # after Celery's logging set-up, whose "always" filter wins otherwise
def _quiet_cancel_on_connection_loss_notice(**_: Any) -> None:
    # Printed (nine lines) at every lost broker connection. It announces Celery 6's default
    # for worker_cancel_long_running_tasks_on_connection_loss; we keep 5.x's (running sends
    # finish and are recorded; their redelivered messages find the claim taken).
    warnings.filterwarnings("ignore", category=CPendingDeprecationWarning,
                            message=r"\s*In Celery 5\.1 we introduced an optional breaking")


@worker_ready.connect  # the threads pool: the worker's own process
@worker_process_init.connect  # a prefork pool's children
def _freeze_startup_heap(**_: Any) -> None:
    # Full (gen2) collections walked every object made at start-up (Celery, kombu,
    # SQLAlchemy's mappers and compiled statements), every thread of the pool stalled
    # meanwhile (BENCHMARKS.rst). Frozen objects are left out of every collection.
    # Here, not in celery_app: the tests' in-process workers must not freeze pytest's heap.
    gc.freeze()
    log.info("%d start-up objects frozen out of garbage collection", gc.get_freeze_count())


@worker_shutting_down.connect  # in the worker's own process, where the threads pool runs
def _tell_running_tasks(**_: Any) -> None:
    # Batches start no new POST and hand the rest back; the purge stops between batches:
    # the warm shutdown ends within the POSTs in flight (deliverer.stopping).
    stopping.begin()
