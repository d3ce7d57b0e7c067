"""What operators do to a running deliverer: stats, bulk replay, retention, console queries.

Plain functions over a session (or opening their own, for the long-running ones), called
by the operator CLI, the operator console and the tests alike.
"""
