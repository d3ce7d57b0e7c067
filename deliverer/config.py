"""Every environment variable deliverer reads is read here, and only here.

With nothing set, deliverer runs on the embedded default: a SQLite database and
kombu's SQLAlchemy transport in a data directory, so a newcomer needs no server.
Production sets ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from deliverer.retry_ladder import DEFAULT_LADDER, Ladder

_TRUE = {"1", "true", "yes", "on"}

def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in _TRUE


MIN_ADMIN_TOKEN = 16


class ConfigError(ValueError):
    """A setting from the environment that cannot be used: its message names it."""


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def base_url(raw: str, name: str) -> str:
    """A public address the links we print start with: http(s), a host, nothing after
    the path (a query or fragment would swallow the path we append)."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
            or parts.fragment or raw.endswith(("?", "#")):
        raise ConfigError(f"{name} must be an http(s) address such as "
                         f"https://hooks.example.com, got {raw!r}")
    return raw.rstrip("/")


@dataclass(frozen=True)
class Settings:
    database_url: str
    broker_url: str
    data_dir: Path
    admin_token: str | None = None
    # Multiplies every ladder delay and the 30-day cap: 0.001 turns 2 minutes into 120 ms.
    time_scale: float = 1.0
    allow_private_urls: bool = False
    ladder: Ladder = DEFAULT_LADDER
    # Beat sweep: how often it runs, and how far ahead it hands due rows to the broker.
    # No message ever carries an ETA beyond the horizon (long ETAs on Redis are redelivered
    # after visibility_timeout and pile up in worker memory).
    sweep_interval: float = 5.0
    sweep_horizon: float = 60.0
    sweep_batch: int = 2000
    # A row that is overdue by this much while a message was supposedly queued for it is
    # re-enqueued: the message was lost (Redis restarted without persistence, say).
    lost_message_grace: float = 120.0
    # Sending
    connect_timeout: float = 5.0
    total_timeout: float = 15.0
    max_response_bytes: int = 20 * 1024
    user_agent: str = "deliverer/0.1"
    # A claim is a lease: if the worker dies mid-send, the row is free again after this.
    lease_seconds: float = 60.0
    # Partner API limits (seed 000)
    max_manual_retries: int = 3
    manual_retry_rate_per_minute: int = 10
    resend_rate_per_minute: int = 10
    resend_wait_seconds: float = 2.0
    # Registered endpoints' recover (a fresh cycle for a period's FAILED notifications)
    # and test events, per partner.
    recover_rate_per_minute: int = 5
    endpoint_test_rate_per_minute: int = 10
    max_request_bytes: int = 256 * 1024
    attempt_retention_days: float = 90.0
    smtp_url: str | None = None
    alert_sender: str = "deliverer@localhost"
    # After a failing endpoint recovers, its held notifications are released at this
    # rate, so a server that just came back is not hit by the whole backlog at once.
    drain_rate: float = 10.0
    # Parallel POSTs per worker process for batched deliveries, and the batch size.
    send_concurrency: int = 16
    endpoint_concurrency: int = 8
    delivery_batch_size: int = 50
    # The slow lane (delivery/sending/slow_lane.py): an endpoint whose sends take this long (by
    # default a third of the total timeout) may have only slow_endpoint_concurrency of
    # them in flight per worker process, for slow_window seconds after the last one.
    slow_send_seconds: float = 5.0
    slow_endpoint_concurrency: int = 2
    slow_window: float = 60.0
    # Signs the operator console's session cookie; derived from admin_token when unset.
    secret_key: str | None = None
    # The merchant portal (deliverer.portal): how long a session lasts, how long its link
    # may wait to be opened, how many links one address may open a minute, and the
    # address links start with (unset: the address the request for the link came to).
    portal_session_hours: float = 12.0
    portal_link_seconds: float = 600.0
    portal_sign_ins_per_minute: int = 10
    portal_base_url: str | None = None
    # prometheus-client's multiprocess directory (it reads the variable itself too): set,
    # /metrics adds up the counters every worker process wrote there.
    metrics_dir: str | None = None
    # Registered endpoints (partners/registered.py): how many a partner may have, the
    # event-type catalog operators configure (a JSON file; the seeds' types otherwise),
    # and how long an endpoint may fail without a break before it is disabled (multiplied
    # by time_scale, like the ladder).
    max_endpoints_per_partner: int = 20
    event_types_file: str | None = None
    auto_disable_after: float = 5 * 86400.0
    # Proxies in front of the web process whose X-Forwarded-For and -Proto are believed:
    # the client's address (the portal's sign-in limit), https (Secure cookies).
    trusted_proxies: int = 0

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def longest_post(self) -> float:
        """How long one POST can take: the total deadline runs on the connected socket,
        and connecting has a timeout of its own before it."""
        return self.connect_timeout + self.total_timeout

    @property
    def broker_is_redis(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://"))

    @property
    def broker_is_amqp(self) -> bool:
        """RabbitMQ (py-amqp): ``amqp://``, ``amqps://`` or ``pyamqp://``."""
        return self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    @property
    def broker_is_sqla(self) -> bool:
        """kombu's SQLAlchemy transport: the embedded default's broker."""
        return self.broker_url.startswith("sqla+")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("DELIVERER_DATA_DIR") or Path.cwd() / ".data").resolve()
        database_url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'deliverer.db'}"
        # Heroku-style URLs say postgres://, which SQLAlchemy 2 no longer accepts.
        if database_url.startswith("postgres://"):
            database_url = "postgresql://" + database_url[len("postgres://") :]
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; we ship psycopg2.
        if database_url.startswith("postgresql://"):
            database_url = "postgresql+psycopg2://" + database_url[len("postgresql://") :]
        broker_url = env.get("CELERY_BROKER_URL") or f"sqla+sqlite:///{data_dir / 'broker.db'}"
        ladder = DEFAULT_LADDER
        if env.get("DELIVERER_RETRY_LADDER"):
            try:
                ladder = Ladder.parse(env["DELIVERER_RETRY_LADDER"])
            except (ValueError, IndexError) as exc:
                raise ConfigError(
                    f"DELIVERER_RETRY_LADDER {env['DELIVERER_RETRY_LADDER']!r}: {exc} "
                    "(seconds, e.g. 120,300,600;repeat=28800;max_age=2592000)") from exc
        time_scale = _float(env, "DELIVERER_TIME_SCALE", 1.0)
        total_timeout = _float(env, "DELIVERER_TOTAL_TIMEOUT", 15.0)
        if time_scale <= 0:
            raise ConfigError("DELIVERER_TIME_SCALE must be positive")
        connect_timeout = _float(env, "DELIVERER_CONNECT_TIMEOUT", 5.0)
        lease_seconds = _float(env, "DELIVERER_LEASE_SECONDS", 60.0)
        if lease_seconds <= connect_timeout + total_timeout:
            # A POST could then outlive its lease, and the row be claimed and POSTed again.
            raise ConfigError("DELIVERER_LEASE_SECONDS must be longer than "
                             "DELIVERER_CONNECT_TIMEOUT + DELIVERER_TOTAL_TIMEOUT")
        retention_days = _float(env, "DELIVERER_ATTEMPT_RETENTION_DAYS", 90.0)
        if retention_days < 1:
            # Beat purges with it every day, unasked: 0 deleted every attempt (the operator
            # try). The CLI keeps less on request, asking first.
            raise ConfigError("DELIVERER_ATTEMPT_RETENTION_DAYS must be at least 1 (to keep "
                              "less once: deliverer purge-attempts --older-than-days)")
        admin_token = env.get("DELIVERER_ADMIN_TOKEN") or None
        if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN:
            # It opens /internal/v1 and the console, which take any number of tries.
            raise ConfigError(
                f"DELIVERER_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters, e.g. "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return cls(
            database_url=database_url,
            broker_url=broker_url,
            data_dir=data_dir,
            admin_token=admin_token,
            time_scale=time_scale,
            allow_private_urls=_bool(env.get("DELIVERER_ALLOW_PRIVATE_URLS")),
            ladder=ladder,
            sweep_interval=_float(env, "DELIVERER_SWEEP_INTERVAL", 5.0),
            sweep_horizon=_float(env, "DELIVERER_SWEEP_HORIZON", 60.0),
            lost_message_grace=_float(env, "DELIVERER_LOST_MESSAGE_GRACE", 120.0),
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            lease_seconds=lease_seconds,
            resend_wait_seconds=_float(env, "DELIVERER_RESEND_WAIT", 2.0),
            attempt_retention_days=retention_days,
            smtp_url=env.get("DELIVERER_SMTP_URL") or None,
            alert_sender=env.get("DELIVERER_ALERT_FROM") or "deliverer@localhost",
            drain_rate=_float(env, "DELIVERER_DRAIN_RATE", 10.0),
            send_concurrency=int(_float(env, "DELIVERER_SEND_CONCURRENCY", 16)),
            endpoint_concurrency=int(_float(env, "DELIVERER_ENDPOINT_CONCURRENCY", 8)),
            delivery_batch_size=int(_float(env, "DELIVERER_BATCH_SIZE", 50)),
            slow_send_seconds=_float(env, "DELIVERER_SLOW_SEND_SECONDS", total_timeout / 3),
            slow_endpoint_concurrency=max(
                1, int(_float(env, "DELIVERER_SLOW_ENDPOINT_CONCURRENCY", 2))),
            slow_window=_float(env, "DELIVERER_SLOW_WINDOW", 60.0),
            secret_key=env.get("DELIVERER_SECRET_KEY") or None,
            metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            portal_session_hours=_float(env, "DELIVERER_PORTAL_SESSION_HOURS", 12.0),
            portal_link_seconds=_float(env, "DELIVERER_PORTAL_LINK_SECONDS", 600.0),
            portal_sign_ins_per_minute=int(
                _float(env, "DELIVERER_PORTAL_SIGN_IN_RATE", 10)),
            portal_base_url=base_url(env["DELIVERER_PORTAL_URL"], "DELIVERER_PORTAL_URL")
            if env.get("DELIVERER_PORTAL_URL") else None,
            max_endpoints_per_partner=int(_float(env, "DELIVERER_MAX_ENDPOINTS", 20)),
            event_types_file=env.get("DELIVERER_EVENT_TYPES_FILE") or None,
            auto_disable_after=_float(env, "DELIVERER_AUTO_DISABLE_AFTER", 5 * 86400.0),
            trusted_proxies=max(0, int(_float(env, "DELIVERER_TRUSTED_PROXIES", 0))),
        )


_settings: Settings | None = None


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit to print (database, broker)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: its scheme only
        return url.split(":", 1)[0] + ":..."


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def set_settings(settings: Settings) -> None:
    """Replace the process-wide settings (tests, the CLI's ``--database-url``)."""
    global _settings
    _settings = settings
    for listener in _listeners:
        listener()


# Called after ``set_settings``: what was built from the old settings (the database
# engine, ``deliverer.db``) forgets it. Registered by those modules, so that this one
# depends on none of them.
_listeners: list[Callable[[], None]] = []


def on_settings_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever ``set_settings`` replaces the process-wide settings."""
    _listeners.append(listener)
