"""How a webhook's POST travels: dialling only vetted addresses (``dial``), the
connection classes and pooled sessions (``connections``), the total deadline and its
watchdog (``deadline``), and what went wrong (``errors``)."""
