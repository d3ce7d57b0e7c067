"""Wake-ups: one broker message per endpoint (``wake``) or per group of endpoints
(``wake_groups``) with first attempts due, not one per notification, and how a worker
takes them (``wakes_together``)."""
