"""``celery control pool_grow``, ``pool_shrink`` and ``autoscale`` against a pool that
cannot do them answer why, instead of failing inside the worker.

The Procfile's threads pool has a fixed size (``WORKER_CONCURRENCY``) and no autoscaler:
Celery's commands then raise in the worker (an AttributeError, a ValueError), which
kombu logs as an ERROR with a traceback in the worker's log for an operator's routine
command, and the reply is the exception's repr. These replace them, under the same
names, with the same arguments: a pool that can resize (prefork) still gets Celery's own
command; one that cannot gets an error reply saying how to scale instead, and nothing is
logged. ``deliverer.worker`` imports this module, which registers them.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import Panel, control_command, nok

_celery_pool_grow = Panel.data["pool_grow"]
_celery_pool_shrink = Panel.data["pool_shrink"]
_celery_autoscale = Panel.data["autoscale"]

FIXED_SIZE = ("the {pool} pool's size is fixed at start (WORKER_CONCURRENCY, here {size}): "
              "scale by adding or stopping worker processes")
NO_AUTOSCALE = ("autoscale is not enabled on this worker (the {pool} pool, "
                "WORKER_CONCURRENCY {size}): scale by adding or stopping worker processes")


def _pool_name(state: Any) -> str:
    return type(state.consumer.pool).__module__.rsplit(".", 1)[-1]


def _fixed(state: Any) -> dict[str, str] | None:
    """The error reply for a pool without ``grow``/``shrink``; None when it has them."""
    pool = state.consumer.pool
    if callable(getattr(pool, "grow", None)) and callable(getattr(pool, "shrink", None)):
        return None
    return nok(FIXED_SIZE.format(pool=_pool_name(state), size=pool.limit))


@control_command(args=[("n", int)], signature="[N=1]")
def pool_grow(state: Any, n: int = 1, **kwargs: Any) -> dict[str, str]:
    """Grow pool by n processes/threads."""
    return _fixed(state) or _celery_pool_grow(state, n, **kwargs)


@control_command(args=[("n", int)], signature="[N=1]")
def pool_shrink(state: Any, n: int = 1, **kwargs: Any) -> dict[str, str]:
    """Shrink pool by n processes/threads."""
    return _fixed(state) or _celery_pool_shrink(state, n, **kwargs)


@control_command(args=[("max", int), ("min", int)], signature="[max [min]]")
def autoscale(state: Any, max: int | None = None, min: int | None = None
              ) -> dict[str, str]:
    """Modify autoscale settings."""
    if not state.consumer.controller.autoscaler:
        return nok(NO_AUTOSCALE.format(pool=_pool_name(state), size=state.consumer.pool.limit))
    result: dict[str, str] = _celery_autoscale(state, max, min)
    return result
