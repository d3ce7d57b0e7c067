"""Whether this process's worker has begun a warm shutdown (SIGTERM, Ctrl-C).

Celery then takes no new message and waits for the running tasks. Platforms do not wait
long (Heroku and Kubernetes send SIGKILL 30 s after SIGTERM by default), and a task cut
off by the kill leaves its work half done: a POST cut off unrecorded is sent again once
its lease runs out. So long tasks ask ``stopping()`` between steps and hand back, or
leave to their next run, what they have not started: a batch its unsent deliveries
(``deliverer.delivery.batch``), the attempt purge its remaining batches.

``deliverer.worker`` connects ``begin()`` to Celery's ``worker_shutting_down``, which
is sent in the worker's own process, where the Procfile's threads pool runs the tasks
(a prefork pool's children are not told). A plain flag, not a ``threading.Event``: it
is set from Celery's signal handler.
"""

from __future__ import annotations


class _Flag:
    stopping = False


def begin() -> None:
    _Flag.stopping = True


def stopping() -> bool:
    return _Flag.stopping


def end() -> None:
    """For tests, which go on in the process that "stopped"."""
    _Flag.stopping = False
