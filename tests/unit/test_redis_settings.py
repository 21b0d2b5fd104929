"""The Redis topology settings: Sentinel, Cluster, routing, and what they refuse."""

from __future__ import annotations

import pytest

from tidings.server.adapters import redis_client
from tidings.server.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_sentinels_are_read_with_their_master_and_passwords() -> None:
    settings = Settings.from_env(
        {
            "REDIS_SENTINELS": "127.0.0.1:26379, 10.0.0.2:26380",
            "REDIS_SENTINEL_MASTER": "tidings",
            "REDIS_SENTINEL_PASSWORD": "s",
            "REDIS_PASSWORD": "r",
        }
    )
    assert settings.redis_sentinels == ("127.0.0.1:26379", "10.0.0.2:26380")
    assert settings.redis_sentinel_master == "tidings"
    assert (settings.redis_sentinel_password, settings.redis_password) == ("s", "r")
    assert "'s'" not in repr(settings) and "'r'" not in repr(settings)  # passwords stay out of logs


def test_sentinels_alone_enable_redis() -> None:
    assert redis_client.enabled(Settings.from_env({"REDIS_URL": "", "REDIS_SENTINELS": "127.0.0.1:26379"}))
    assert not redis_client.enabled(Settings.from_env({"REDIS_URL": ""}))


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_CLUSTER": "1"},
        {"REDIS_SENTINELS": "nowhere"},
        {"REDIS_SENTINELS": "host:port"},
        {"REDIS_ROUTING": "shard"},
    ],
)
def test_contradictory_or_malformed_topologies_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_routing_is_per_user_unless_asked_otherwise() -> None:
    assert Settings.from_env({}).redis_routing == "user"
    assert Settings.from_env({"REDIS_ROUTING": "global"}).redis_routing == "global"
