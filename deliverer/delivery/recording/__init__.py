"""Writing what an attempt came to, under its lease: the attempt row and the
notification's new state (``record``), plain successes in bulk (``success``), failures
up the ladder and into their endpoint's queue (``failure``, ``auto_disable``), and what
the task that ran it is told (``outcome``)."""
