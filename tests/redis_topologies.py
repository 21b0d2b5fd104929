"""Real Redis topologies on loopback, from Debian's packages, for the tests that need them: a primary with a replica
watched by three sentinels, and a three-primary cluster. Each starts on ports of its own in a directory the caller
owns and is stopped by `close` (use them as context managers); the project's own Redis is never touched.

Needs nothing from pytest; `installed()` says whether the binaries are there (scripts/install-system.sh installs
redis-server, redis-tools and redis-sentinel).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from tests.launcher import HOST, START_TIMEOUT, LaunchError, RedisProcess, ServiceProcess, free_port

MASTER_NAME = "tidings"
# Sentinel's failure detection: a primary silent this long is down (subjectively, then with the quorum, objectively).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
CLUSTER_NODE_TIMEOUT_MS = 2000


def _command(client: redis.Redis, *args: str) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _wait(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll `check` (these daemons give no signal when they are ready) until true; the seconds it took."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return time.monotonic() - started
        if time.monotonic() - started > within:
            raise LaunchError(f"{what}: not within {within:.0f} s")
        time.sleep(0.05)


class SentinelProcess(ServiceProcess):
    """`redis-sentinel <config>` on 127.0.0.1:<port>, watching `MASTER_NAME` at the given primary."""

    def __init__(self, log_dir: Path, name: str, primary_port: int, quorum: int = 2) -> None:
        port = free_port()
        config = log_dir / f"{name}.conf"  # Sentinel rewrites its config file: one each, writable
        config.write_text(
            "\n".join(
                [
                    f"bind {HOST}",
                    f"port {port}",
                    f"dir {log_dir}",
                    f"sentinel monitor {MASTER_NAME} {HOST} {primary_port} {quorum}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        binary = shutil.which("redis-sentinel")
        argv = (
            [binary, str(config)]
            if binary
            else [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"]
        )
        super().__init__(name, argv, log_dir, port)

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def answers(self) -> bool:
        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def master_port(self) -> int | None:
        with contextlib.closing(self.client()) as client:
            address = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(address[1]) if address else None

    def known(self) -> tuple[int, int]:
        """How many replicas and other sentinels this sentinel knows of."""
        with contextlib.closing(self.client()) as client:
            replicas = _command(client, "SENTINEL", "REPLICAS", MASTER_NAME)
            sentinels = _command(client, "SENTINEL", "SENTINELS", MASTER_NAME)
        return len(replicas), len(sentinels)


class _Topology:
    """Started on entering, stopped on leaving, whatever happened inside."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class SentinelTopology(_Topology):
    """A primary, a replica of it, and three sentinels (quorum 2) that fail over to the replica."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.primary = RedisProcess(directory, name="primary")
        self.replica = RedisProcess(directory, name="replica")
        self.replica.argv += ["--replicaof", HOST, str(self.primary.port)]
        self.sentinels = [SentinelProcess(directory, f"sentinel-{i}", self.primary.port) for i in range(3)]

    @staticmethod
    def installed() -> bool:
        return RedisProcess.installed() and (shutil.which("redis-sentinel") or shutil.which("redis-server")) is not None

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.primary, self.replica, *self.sentinels]

    @property
    def sentinel_addresses(self) -> str:
        """REDIS_SENTINELS for the servers."""
        return ",".join(f"{HOST}:{sentinel.port}" for sentinel in self.sentinels)

    def start(self) -> None:
        """Start everything and wait until the replica is in sync and every sentinel knows the replica and the two
        other sentinels: only then can a failover happen."""
        try:
            for service in self.services:
                service.start()

            def in_sync() -> bool:
                with contextlib.closing(self.replica.client()) as client:
                    return client.info("replication").get("master_link_status") == "up"

            _wait(in_sync, START_TIMEOUT, "the replica in sync")
            _wait(lambda: all(s.known() == (1, 2) for s in self.sentinels), START_TIMEOUT, "sentinels know each other")
        except BaseException:
            self.close()
            raise

    def master_port(self) -> int | None:
        """The primary's port, as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                return sentinel.master_port()
        return None

    def kill_primary(self) -> None:
        self.primary.kill()

    def wait_for_promotion(self, within: float = 30.0) -> float:
        """Seconds until every sentinel names the replica as the primary and the replica says it is one."""

        def promoted() -> bool:
            if any(s.master_port() != self.replica.port for s in self.sentinels):
                return False
            with contextlib.closing(self.replica.client()) as client:
                return client.info("replication").get("role") == "master"

        return _wait(promoted, within, "the replica promoted")

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop()


class ClusterTopology(_Topology):
    """Three primaries (no replicas) made a cluster by `redis-cli --cluster create`, each owning a third of the
    slots."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.nodes = [RedisProcess(directory, name=f"node-{i}") for i in range(size)]
        for node in self.nodes:
            node.argv += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"nodes-{node.port}.conf"),
                "--cluster-node-timeout",
                str(CLUSTER_NODE_TIMEOUT_MS),
                # The bus defaults to port + 10000, past 65535 for the kernel's ephemeral ports: one of its own.
                "--cluster-port",
                str(free_port()),
            ]

    @staticmethod
    def installed() -> bool:
        return RedisProcess.installed() and shutil.which("redis-cli") is not None

    @property
    def url(self) -> str:
        """REDIS_URL for the servers: any node will do."""
        return self.nodes[0].url

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            done = subprocess.run(  # noqa: S603 - our own command line
                [
                    shutil.which("redis-cli") or "redis-cli",
                    "--cluster",
                    "create",
                    *(f"{HOST}:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                raise LaunchError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")

            def ok(node: RedisProcess) -> bool:
                with contextlib.closing(node.client()) as client:
                    info = _command(client, "CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                return "cluster_state:ok" in text

            _wait(lambda: all(ok(node) for node in self.nodes), START_TIMEOUT, "the cluster's state ok")
        except BaseException:
            self.close()
            raise

    def node_of(self, key: str) -> RedisProcess:
        """The node that owns `key`'s slot."""
        with contextlib.closing(redis.RedisCluster(host=HOST, port=self.nodes[0].port)) as cluster:
            port = cluster.get_node_from_key(key).port  # type: ignore[no-untyped-call]
        return next(node for node in self.nodes if node.port == port)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
