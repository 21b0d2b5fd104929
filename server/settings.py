"""Settings: one typed, immutable object read from the environment."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Environment = Literal["development", "test", "production"]
MIN_SECRET_BYTES = 32
MIN_METRICS_TOKEN_BYTES = 16


class SettingsError(ValueError):
    """The environment does not describe a server that may start."""


def _whole(env: Mapping[str, str], name: str, default: int, *, minimum: int, kind: str, range_text: str) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be {range_text}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive integer: every count, size, cost and lifetime here must be at least 1."""
    return _whole(env, name, default, minimum=1, kind="an integer", range_text="a positive integer")


def _days(env: Mapping[str, str], name: str, default: int) -> int:
    """A number of days, 0 meaning "forever"."""
    return _whole(
        env,
        name,
        default,
        minimum=0,
        kind="a whole number of days",
        range_text="0 (keep forever) or a positive number of days",
    )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive duration in seconds, fractions allowed."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise SettingsError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _secret_from_file(path: Path, *, create: bool) -> str:
    """The secret kept in `path` (JWT_SECRET_FILE); with `create` (development), made on first use, mode 0600, so
    that restarting the server keeps everyone's sessions."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not create:
            raise SettingsError(f"JWT_SECRET_FILE {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"JWT_SECRET_FILE {path} cannot be read: {exc}") from None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secret + "\n")
    log.info("keeping a generated JWT secret in %s for development", path)
    return secret


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be a boolean, got {raw!r}")


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _smtp_security(env: Mapping[str, str]) -> Literal["starttls", "tls", "none"]:
    raw = (env.get("SMTP_SECURITY") or "starttls").strip().lower()
    if raw not in ("starttls", "tls", "none"):
        raise SettingsError(f"SMTP_SECURITY must be starttls, tls or none, got {raw!r}")
    return raw  # type: ignore[return-value]


def _redis_routing(env: Mapping[str, str]) -> Literal["user", "global"]:
    raw = (env.get("REDIS_ROUTING") or "user").strip().lower()
    if raw not in ("user", "global"):
        raise SettingsError(f"REDIS_ROUTING must be user or global, got {raw!r}")
    return raw  # type: ignore[return-value]


def listen_backlog(env: Mapping[str, str]) -> int:
    """LISTEN_BACKLOG, for `Settings.from_env` and for gunicorn.conf.py (which reads no other setting)."""
    return _int(env, "LISTEN_BACKLOG", Settings.listen_backlog)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server reads from its environment, with development defaults."""

    environment: Environment = "development"
    host: str = "127.0.0.1"
    port: int = 8080

    mongodb_url: str = "mongodb://127.0.0.1:27017"
    mongodb_db: str = "tidings"
    # None: no Redis; an in-process broker and limiter serve a single process.
    redis_url: str | None = "redis://127.0.0.1:6379/0"
    # Every Redis key and channel starts with this, so several deployments (or tests) share one Redis.
    redis_prefix: str = "tidings:"
    # Redis behind Sentinel (host:port of each sentinel, and the name of the master they watch): REDIS_URL then only
    # gives the database number, and every client follows a failover. Or a Redis Cluster, REDIS_URL naming any node.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    redis_cluster: bool = False
    # "user": a process subscribes to the channel of each user it holds a socket of (docs/scaling.md); "global": one
    # channel for every user's notifications, held by every process (the old way; for comparison and as a fallback).
    redis_routing: Literal["user", "global"] = "user"

    jwt_secret: str = field(default="", repr=False)
    access_token_ttl: int = 15 * 60
    refresh_token_ttl: int = 14 * 24 * 3600
    panel_session_ttl: int = 8 * 3600
    # Secure cookies for the admin panel; None: only in production (development runs on plain http).
    cookie_secure: bool | None = None

    # Argon2id cost; OWASP's second recommended profile by default (19 MiB, t=2, p=1).
    password_time_cost: int = 2
    password_memory_kib: int = 19 * 1024
    password_parallelism: int = 1
    password_hash_threads: int = 2

    # Failed logins per account and per client address in a window; every attempt per address, a ceiling far above
    # what people sharing one address (NAT, a proxy) make, yet one that stops a flood (docs/security.md).
    login_attempts_per_account: int = 10
    login_failures_per_address: int = 30
    login_attempts_per_address: int = 600
    login_window_seconds: int = 300

    max_body_bytes: int = 64 * 1024

    # WebSocket: Origins allowed to open sockets (browsers always send one; other clients may omit it).
    allowed_origins: tuple[str, ...] = ("http://127.0.0.1:8080", "http://localhost:8080")
    ws_max_per_user: int = 10
    # Client messages a socket may send per second (sustained), and in a burst; beyond, they are refused.
    ws_messages_per_second: int = 20
    ws_message_burst: int = 40
    ws_max_frame_bytes: int = 16 * 1024
    ws_send_buffer_bytes: int = 1024 * 1024
    # Timings, in seconds. A socket must authenticate within ws_auth_timeout; pings every ws_heartbeat; a forced
    # close gives up on a peer that does not read after ws_close_timeout; token expiry is checked every
    # ws_token_check_interval.
    ws_auth_timeout: float = 10.0
    ws_heartbeat: float = 25.0
    ws_close_timeout: float = 5.0
    ws_token_check_interval: float = 1.0
    # Each process reports its socket count for the dashboard this often.
    connection_report_interval: float = 5.0
    # Expired sessions are deleted this often (FerretDB has no TTL indexes).
    session_sweep_interval: float = 3600.0
    # Read tallies are folded into the sends' read counters this often (by one process at a time).
    read_count_fold_interval: float = 2.0
    # Notifications (and their dispatches and receipts) older than this many days are deleted; 0 keeps them.
    notification_retention_days: int = 365
    # How often the retention job looks for a day to delete.
    retention_interval: float = 3600.0
    # A per-document write lock is held at most this long, and waited for at most this long.
    lock_timeout: float = 10.0
    # /health/ready waits this long for each dependency.
    health_probe_timeout: float = 2.0
    # Every MongoDB operation gives up after this long (then the API answers 503 with Retry-After).
    mongodb_timeout: float = 5.0
    # A pooled Redis connection idle for longer than this is pinged before reuse (stale after a Redis restart).
    redis_health_check_interval: float = 2.0
    # Replays (resume, and the catch-up after a broker outage) that read MongoDB at once, per process: a storm of
    # them is paced so that the API keeps answering.
    replay_concurrency: int = 4
    # Connections the kernel queues for the listening socket until the process accepts them (`tidings serve` and
    # gunicorn): a reconnect storm of thousands of sockets overflows a short queue, and each overflowed connect costs
    # its client a SYN retransmission (1 s, then 2 s, 4 s, ...). Linux caps it at net.core.somaxconn.
    listen_backlog: int = 4096
    # How long start-up waits for MongoDB and Redis, and shutdown for open requests.
    startup_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    trust_forwarded_for: bool = False
    log_level: str = "INFO"
    access_log: bool = True
    # GET /metrics (docs/operations.md): readable from loopback, or with `Authorization: Bearer <metrics_token>`.
    metrics: bool = True
    metrics_token: str = field(default="", repr=False)
    # How often dependencies and job counts are probed for the metrics that sample them.
    metrics_sample_interval: float = 15.0
    # How long the first response to a request with an Idempotency-Key is kept and replayed (services/idempotency.py).
    idempotency_ttl: float = 86_400.0

    # Background jobs (docs/jobs.md): `tidings serve` runs a worker in-process unless run_worker is off.
    run_worker: bool = True
    worker_concurrency: int = 10
    # Attempts of a job before it is dead-lettered; the first retry within job_retry_delay seconds (jittered), each
    # later one up to twice as long, never more than job_retry_max_delay.
    job_attempts: int = 8
    job_retry_delay: float = 20.0
    job_retry_max_delay: float = 3600.0
    # A running job is given up (and retried) after this long.
    job_timeout: int = 120
    # Dead-lettered jobs are kept this long for the panel's Jobs page.
    job_dead_ttl: int = 7 * 24 * 3600

    # Email (docs/email.md). Without smtp_host: messages are logged outside production, and production warns.
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout: float = 30.0
    mail_from: str = "tidings <noreply@localhost>"
    # The base of every link in a mail.
    public_url: str = "http://127.0.0.1:8080"
    password_reset_ttl: int = 3600
    password_reset_per_email: int = 3
    password_reset_per_address: int = 30
    email_verification_ttl: int = 3 * 24 * 3600
    verify_email_resend_per_hour: int = 3
    require_verified_email: bool = False
    digest_after: float = 3600.0
    digest_check_interval: float = 300.0
    digest_interval: float = 86400.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: os.environ); raise SettingsError when they are unsafe."""
        env = os.environ if env is None else env
        environment = env.get("TIDINGS_ENV", "development")
        if environment not in ("development", "test", "production"):
            raise SettingsError(f"TIDINGS_ENV must be development, test or production, got {environment!r}")
        redis_url = env.get("REDIS_URL", cls.redis_url)
        jwt_secret = env.get("JWT_SECRET", "")
        if not jwt_secret and env.get("JWT_SECRET_FILE"):
            jwt_secret = _secret_from_file(Path(env["JWT_SECRET_FILE"]), create=environment == "development")
        settings = cls(
            environment=environment,  # type: ignore[arg-type]
            host=env.get("TIDINGS_HOST", cls.host),
            port=_int(env, "TIDINGS_PORT", cls.port),
            mongodb_url=env.get("MONGODB_URL") or cls.mongodb_url,
            mongodb_db=env.get("MONGODB_DB") or cls.mongodb_db,
            redis_url=redis_url or None,
            redis_prefix=env.get("REDIS_PREFIX") or cls.redis_prefix,
            redis_sentinels=_list(env, "REDIS_SENTINELS", cls.redis_sentinels),
            redis_sentinel_master=env.get("REDIS_SENTINEL_MASTER") or cls.redis_sentinel_master,
            redis_sentinel_password=env.get("REDIS_SENTINEL_PASSWORD") or None,
            redis_password=env.get("REDIS_PASSWORD") or None,
            redis_cluster=_bool(env, "REDIS_CLUSTER", cls.redis_cluster),
            redis_routing=_redis_routing(env),
            jwt_secret=jwt_secret,
            access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", cls.access_token_ttl),
            refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL", cls.refresh_token_ttl),
            panel_session_ttl=_int(env, "PANEL_SESSION_TTL", cls.panel_session_ttl),
            cookie_secure=_bool(env, "COOKIE_SECURE", False) if env.get("COOKIE_SECURE") else None,
            password_time_cost=_int(env, "PASSWORD_TIME_COST", cls.password_time_cost),
            password_memory_kib=_int(env, "PASSWORD_MEMORY_KIB", cls.password_memory_kib),
            password_parallelism=_int(env, "PASSWORD_PARALLELISM", cls.password_parallelism),
            password_hash_threads=_int(env, "PASSWORD_HASH_THREADS", cls.password_hash_threads),
            login_attempts_per_account=_int(env, "LOGIN_ATTEMPTS_PER_ACCOUNT", cls.login_attempts_per_account),
            login_failures_per_address=_int(env, "LOGIN_FAILURES_PER_ADDRESS", cls.login_failures_per_address),
            login_attempts_per_address=_int(env, "LOGIN_ATTEMPTS_PER_ADDRESS", cls.login_attempts_per_address),
            login_window_seconds=_int(env, "LOGIN_WINDOW_SECONDS", cls.login_window_seconds),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes),
            allowed_origins=_list(env, "ALLOWED_ORIGINS", cls.allowed_origins),
            ws_max_per_user=_int(env, "WS_MAX_PER_USER", cls.ws_max_per_user),
            ws_messages_per_second=_int(env, "WS_MESSAGES_PER_SECOND", cls.ws_messages_per_second),
            ws_message_burst=_int(env, "WS_MESSAGE_BURST", cls.ws_message_burst),
            ws_max_frame_bytes=_int(env, "WS_MAX_FRAME_BYTES", cls.ws_max_frame_bytes),
            ws_send_buffer_bytes=_int(env, "WS_SEND_BUFFER_BYTES", cls.ws_send_buffer_bytes),
            ws_auth_timeout=_seconds(env, "WS_AUTH_TIMEOUT", cls.ws_auth_timeout),
            ws_heartbeat=_seconds(env, "WS_HEARTBEAT", cls.ws_heartbeat),
            ws_close_timeout=_seconds(env, "WS_CLOSE_TIMEOUT", cls.ws_close_timeout),
            ws_token_check_interval=_seconds(env, "WS_TOKEN_CHECK_INTERVAL", cls.ws_token_check_interval),
            connection_report_interval=_seconds(env, "CONNECTION_REPORT_INTERVAL", cls.connection_report_interval),
            session_sweep_interval=_seconds(env, "SESSION_SWEEP_INTERVAL", cls.session_sweep_interval),
            read_count_fold_interval=_seconds(env, "READ_COUNT_FOLD_INTERVAL", cls.read_count_fold_interval),
            notification_retention_days=_days(env, "NOTIFICATION_RETENTION_DAYS", cls.notification_retention_days),
            retention_interval=_seconds(env, "RETENTION_INTERVAL", cls.retention_interval),
            lock_timeout=_seconds(env, "LOCK_TIMEOUT", cls.lock_timeout),
            health_probe_timeout=_seconds(env, "HEALTH_PROBE_TIMEOUT", cls.health_probe_timeout),
            mongodb_timeout=_seconds(env, "MONGODB_TIMEOUT", cls.mongodb_timeout),
            redis_health_check_interval=_seconds(env, "REDIS_HEALTH_CHECK_INTERVAL", cls.redis_health_check_interval),
            replay_concurrency=_int(env, "REPLAY_CONCURRENCY", cls.replay_concurrency),
            listen_backlog=listen_backlog(env),
            startup_timeout=_seconds(env, "STARTUP_TIMEOUT", cls.startup_timeout),
            shutdown_timeout=_seconds(env, "SHUTDOWN_TIMEOUT", cls.shutdown_timeout),
            trust_forwarded_for=_bool(env, "TRUST_FORWARDED_FOR", cls.trust_forwarded_for),
            log_level=env.get("LOG_LEVEL", cls.log_level).upper(),
            access_log=_bool(env, "ACCESS_LOG", cls.access_log),
            metrics=_bool(env, "METRICS", cls.metrics),
            metrics_token=env.get("METRICS_TOKEN") or "",
            metrics_sample_interval=_seconds(env, "METRICS_SAMPLE_INTERVAL", cls.metrics_sample_interval),
            idempotency_ttl=_seconds(env, "IDEMPOTENCY_TTL", cls.idempotency_ttl),
            run_worker=_bool(env, "RUN_WORKER", cls.run_worker),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", cls.worker_concurrency),
            job_attempts=_int(env, "JOB_ATTEMPTS", cls.job_attempts),
            job_retry_delay=_seconds(env, "JOB_RETRY_DELAY", cls.job_retry_delay),
            job_retry_max_delay=_seconds(env, "JOB_RETRY_MAX_DELAY", cls.job_retry_max_delay),
            job_timeout=_int(env, "JOB_TIMEOUT", cls.job_timeout),
            job_dead_ttl=_int(env, "JOB_DEAD_TTL", cls.job_dead_ttl),
            smtp_host=env.get("SMTP_HOST") or None,
            smtp_port=_int(env, "SMTP_PORT", cls.smtp_port),
            smtp_username=env.get("SMTP_USERNAME") or None,
            smtp_password=env.get("SMTP_PASSWORD") or None,
            smtp_security=_smtp_security(env),
            smtp_timeout=_seconds(env, "SMTP_TIMEOUT", cls.smtp_timeout),
            mail_from=env.get("MAIL_FROM") or cls.mail_from,
            public_url=(env.get("PUBLIC_URL") or cls.public_url).rstrip("/"),
            password_reset_ttl=_int(env, "PASSWORD_RESET_TTL", cls.password_reset_ttl),
            password_reset_per_email=_int(env, "PASSWORD_RESET_PER_EMAIL", cls.password_reset_per_email),
            password_reset_per_address=_int(env, "PASSWORD_RESET_PER_ADDRESS", cls.password_reset_per_address),
            email_verification_ttl=_int(env, "EMAIL_VERIFICATION_TTL", cls.email_verification_ttl),
            verify_email_resend_per_hour=_int(env, "VERIFY_EMAIL_RESEND_PER_HOUR", cls.verify_email_resend_per_hour),
            require_verified_email=_bool(env, "REQUIRE_VERIFIED_EMAIL", cls.require_verified_email),
            digest_after=_seconds(env, "DIGEST_AFTER", cls.digest_after),
            digest_check_interval=_seconds(env, "DIGEST_CHECK_INTERVAL", cls.digest_check_interval),
            digest_interval=_seconds(env, "DIGEST_INTERVAL", cls.digest_interval),
        )
        return settings.checked()

    @property
    def secure_cookies(self) -> bool:
        return self.environment == "production" if self.cookie_secure is None else self.cookie_secure

    def checked(self) -> Settings:
        """Refuse unsafe settings; outside production, replace a missing JWT secret with a random one, loudly."""
        if self.access_token_ttl <= 0 or self.refresh_token_ttl <= self.access_token_ttl:
            raise SettingsError("token lifetimes must be positive and the refresh token must outlive the access token")
        if self.redis_sentinels and self.redis_cluster:
            raise SettingsError("REDIS_SENTINELS and REDIS_CLUSTER exclude each other: Sentinel or Cluster, not both")
        for sentinel in self.redis_sentinels:
            host, _, port = sentinel.rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"REDIS_SENTINELS takes host:port items, got {sentinel!r}")
        if self.metrics_token and len(self.metrics_token.encode()) < MIN_METRICS_TOKEN_BYTES:
            raise SettingsError(f"METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_BYTES} bytes when it is set")
        if len(self.jwt_secret.encode()) >= MIN_SECRET_BYTES:
            return self
        if self.environment == "production":
            raise SettingsError(
                f"JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes in production "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if self.jwt_secret:
            raise SettingsError(f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes")
        log.warning(
            "JWT_SECRET is not set: using a random secret for this process only. Tokens will not survive a "
            "restart and are not shared between workers. Set JWT_SECRET before deploying."
        )
        return dataclasses.replace(self, jwt_secret=secrets.token_urlsafe(48))
