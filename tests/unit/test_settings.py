"""Settings from the environment: safe defaults, and a refusal to start on unsafe or malformed values."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tidings.server.settings import MIN_SECRET_BYTES, Settings, SettingsError, listen_backlog

pytestmark = pytest.mark.unit

SECRET = "s" * MIN_SECRET_BYTES

INT_VARIABLES = {
    "TIDINGS_PORT": "port",
    "ACCESS_TOKEN_TTL": "access_token_ttl",
    "REFRESH_TOKEN_TTL": "refresh_token_ttl",
    "PASSWORD_TIME_COST": "password_time_cost",
    "PASSWORD_MEMORY_KIB": "password_memory_kib",
    "PASSWORD_PARALLELISM": "password_parallelism",
    "PASSWORD_HASH_THREADS": "password_hash_threads",
    "LOGIN_ATTEMPTS_PER_ACCOUNT": "login_attempts_per_account",
    "LOGIN_FAILURES_PER_ADDRESS": "login_failures_per_address",
    "LOGIN_ATTEMPTS_PER_ADDRESS": "login_attempts_per_address",
    "LOGIN_WINDOW_SECONDS": "login_window_seconds",
    "MAX_BODY_BYTES": "max_body_bytes",
    "LISTEN_BACKLOG": "listen_backlog",
}


def production(**env: str) -> dict[str, str]:
    return {"TIDINGS_ENV": "production", **env}


def test_defaults() -> None:
    settings = Settings.from_env({"JWT_SECRET": SECRET})
    assert settings.environment == "development"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.mongodb_url == "mongodb://127.0.0.1:27017"
    assert settings.mongodb_db == "tidings"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.redis_prefix == "tidings:"
    assert settings.jwt_secret == SECRET
    assert 0 < settings.access_token_ttl < settings.refresh_token_ttl
    assert settings.trust_forwarded_for is False


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "TIDINGS_ENV": "test",
            "TIDINGS_HOST": "0.0.0.0",  # noqa: S104 - only a value under test
            "TIDINGS_PORT": "9000",
            "MONGODB_URL": "mongodb://db:27017",
            "MONGODB_DB": "other",
            "REDIS_URL": "redis://cache:6379/2",
            "REDIS_PREFIX": "x:",
            "JWT_SECRET": SECRET,
            "ACCESS_TOKEN_TTL": "60",
            "REFRESH_TOKEN_TTL": "3600",
            "LOGIN_ATTEMPTS_PER_ACCOUNT": "3",
            "TRUST_FORWARDED_FOR": "yes",
            "ACCESS_LOG": "off",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.environment == "test"
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)  # noqa: S104
    assert (settings.mongodb_url, settings.mongodb_db) == ("mongodb://db:27017", "other")
    assert (settings.redis_url, settings.redis_prefix) == ("redis://cache:6379/2", "x:")
    assert (settings.access_token_ttl, settings.refresh_token_ttl) == (60, 3600)
    assert settings.login_attempts_per_account == 3
    assert settings.trust_forwarded_for is True
    assert settings.access_log is False
    assert settings.log_level == "DEBUG"


def test_an_empty_redis_url_means_no_redis() -> None:
    assert Settings.from_env({"JWT_SECRET": SECRET, "REDIS_URL": ""}).redis_url is None


@pytest.mark.parametrize("env", [production(), production(JWT_SECRET="")])
def test_production_refuses_a_missing_secret(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET must be set"):
        Settings.from_env(env)


@pytest.mark.parametrize("secret", ["short", "x" * (MIN_SECRET_BYTES - 1), "é" * (MIN_SECRET_BYTES // 2 - 1)])
def test_production_refuses_a_short_secret(secret: str) -> None:
    with pytest.raises(SettingsError, match=f"at least {MIN_SECRET_BYTES} bytes"):
        Settings.from_env(production(JWT_SECRET=secret))


@pytest.mark.parametrize("secret", ["x" * MIN_SECRET_BYTES, "é" * (MIN_SECRET_BYTES // 2), "y" * 200])
def test_production_accepts_a_long_enough_secret(secret: str) -> None:
    settings = Settings.from_env(production(JWT_SECRET=secret))
    assert settings.environment == "production"
    assert settings.jwt_secret == secret


@pytest.mark.parametrize("environment", ["development", "test"])
def test_outside_production_a_missing_secret_is_replaced_loudly(
    environment: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = Settings.from_env({"TIDINGS_ENV": environment})
    second = Settings.from_env({"TIDINGS_ENV": environment})
    assert len(first.jwt_secret.encode()) >= MIN_SECRET_BYTES
    assert first.jwt_secret != second.jwt_secret
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert any("JWT_SECRET is not set" in record.getMessage() for record in warnings)


def test_outside_production_a_short_secret_is_still_refused() -> None:
    with pytest.raises(SettingsError, match="shorter than"):
        Settings.from_env({"JWT_SECRET": "too-short"})


def test_the_secret_is_not_in_the_repr() -> None:
    assert SECRET not in repr(Settings.from_env({"JWT_SECRET": SECRET}))


@pytest.mark.parametrize("variable", sorted(INT_VARIABLES))
@pytest.mark.parametrize("value", ["abc", "1.5", "10s", "0x10", " ", "1e3"])
def test_malformed_integers_are_refused(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{variable} must be an integer, got {value!r}"):
        Settings.from_env({"JWT_SECRET": SECRET, variable: value})


@pytest.mark.parametrize("variable", sorted(INT_VARIABLES))
@pytest.mark.parametrize("value", ["0", "-1"])
def test_integers_must_be_positive(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({"JWT_SECRET": SECRET, variable: value})


@pytest.mark.parametrize("variable", sorted(INT_VARIABLES))
def test_an_empty_integer_means_the_default(variable: str) -> None:
    settings = Settings.from_env({"JWT_SECRET": SECRET, variable: ""})
    assert getattr(settings, INT_VARIABLES[variable]) == getattr(Settings(), INT_VARIABLES[variable])


@pytest.mark.parametrize("variable", sorted(INT_VARIABLES))
def test_integers_are_read(variable: str) -> None:
    value = 100_000 if variable == "REFRESH_TOKEN_TTL" else 7
    settings = Settings.from_env({"JWT_SECRET": SECRET, variable: f" {value} "})
    assert getattr(settings, INT_VARIABLES[variable]) == value


@pytest.mark.parametrize("variable", ["TRUST_FORWARDED_FOR", "ACCESS_LOG", "METRICS"])
@pytest.mark.parametrize("value", ["maybe", "2", "y", "enabled"])
def test_malformed_booleans_are_refused(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{variable} must be a boolean"):
        Settings.from_env({"JWT_SECRET": SECRET, variable: value})


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("No", False)]
)
def test_booleans_are_read(value: str, expected: bool) -> None:
    assert Settings.from_env({"JWT_SECRET": SECRET, "TRUST_FORWARDED_FOR": value}).trust_forwarded_for is expected


def test_metrics_settings_are_read() -> None:
    settings = Settings.from_env(
        {"JWT_SECRET": SECRET, "METRICS": "0", "METRICS_TOKEN": "t" * 16, "METRICS_SAMPLE_INTERVAL": "2.5"}
    )
    assert (settings.metrics, settings.metrics_token, settings.metrics_sample_interval) == (False, "t" * 16, 2.5)
    assert "t" * 16 not in repr(settings)
    assert Settings.from_env({"JWT_SECRET": SECRET}).metrics is True


def test_a_short_metrics_token_is_refused() -> None:
    with pytest.raises(SettingsError, match="METRICS_TOKEN must be at least 16 bytes"):
        Settings.from_env({"JWT_SECRET": SECRET, "METRICS_TOKEN": "short"})


@pytest.mark.parametrize("environment", ["prod", "Production", "staging", ""])
def test_unknown_environment_is_refused(environment: str) -> None:
    with pytest.raises(SettingsError, match="TIDINGS_ENV"):
        Settings.from_env({"TIDINGS_ENV": environment, "JWT_SECRET": SECRET})


@pytest.mark.parametrize(
    ("access", "refresh"), [("900", "900"), ("900", "899"), ("3600", "60")], ids=["equal", "shorter", "much-shorter"]
)
def test_the_refresh_token_must_outlive_the_access_token(access: str, refresh: str) -> None:
    with pytest.raises(SettingsError, match="token lifetimes"):
        Settings.from_env({"JWT_SECRET": SECRET, "ACCESS_TOKEN_TTL": access, "REFRESH_TOKEN_TTL": refresh})


def test_the_environment_itself_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_ENV", "production")
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(SettingsError, match="JWT_SECRET must be set"):
        Settings.from_env()
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("TIDINGS_PORT", "8123")
    assert Settings.from_env().port == 8123


def test_development_keeps_a_generated_secret_in_its_file(tmp_path: Path) -> None:
    """`make run` sets JWT_SECRET_FILE=.data/jwt-secret: the first start makes it (mode 0600), a restart reads it,
    so sessions survive a restart."""
    secret_file = tmp_path / "data" / "jwt-secret"
    first = Settings.from_env({"JWT_SECRET_FILE": str(secret_file)})
    second = Settings.from_env({"JWT_SECRET_FILE": str(secret_file)})
    assert first.jwt_secret == second.jwt_secret
    assert len(first.jwt_secret.encode()) >= MIN_SECRET_BYTES
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text().strip() == first.jwt_secret


def test_outside_development_the_secret_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "jwt-secret"
    for environment in ("production", "test"):
        with pytest.raises(SettingsError, match="does not exist"):
            Settings.from_env({"TIDINGS_ENV": environment, "JWT_SECRET_FILE": str(missing)})
    assert not missing.exists()
    missing.write_text("s" * 48 + "\n")
    assert Settings.from_env(production(JWT_SECRET_FILE=str(missing))).jwt_secret == "s" * 48


def test_jwt_secret_wins_over_the_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt-secret"
    settings = Settings.from_env({"JWT_SECRET": "e" * 40, "JWT_SECRET_FILE": str(secret_file)})
    assert settings.jwt_secret == "e" * 40
    assert not secret_file.exists()


def test_the_listen_backlog_is_read_alone_too() -> None:
    """gunicorn.conf.py reads LISTEN_BACKLOG with the same rules, without the rest of the settings."""
    assert Settings().listen_backlog == listen_backlog({}) == 4096
    assert listen_backlog({"LISTEN_BACKLOG": "1024"}) == 1024
    assert listen_backlog({"LISTEN_BACKLOG": ""}) == 4096
    for value in ("0", "-5", "many"):
        with pytest.raises(SettingsError, match="LISTEN_BACKLOG"):
            listen_backlog({"LISTEN_BACKLOG": value})
