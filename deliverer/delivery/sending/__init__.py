"""How a claimed delivery's POST goes out: its turn on the send pool and the slow lane
(``runs``, ``slow_lane``, ``still_there``), signed and counted (``perform``,
``signing``), dialled to vetted addresses only (``netguard``, ``http``), and its outcome
classified (``sender``)."""
