"""Fan-out between server processes: one Redis pub/sub connection per process (one per shard on a Redis Cluster), or
an in-process broker without Redis.

Two kinds of channel. A topic (`subscribe`) is a channel every process holds for its whole life: broadcasts and the
control channel of invalidations. A routed topic (`route`) is a channel per key, here per user: a process holds
`<prefix><topic>:<key>` only while something in it holds the key (`hold`, `release`), so a message for one user
reaches only the processes with a socket of that user. Holds and releases are batched: at most one SUBSCRIBE and
one UNSUBSCRIBE (of at most BATCH_CHANNELS channels each) go out per BATCH_SECONDS, with whatever accumulated since
the last of their kind, so a reconnect storm of thousands of sockets costs Redis a handful of commands, and a lone
connect waits for none.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from tidings.server.adapters import redis_client
from tidings.server.adapters.tasks import cancel_and_wait
from tidings.server.settings import Settings

log = logging.getLogger(__name__)

UNSENT_MAX = 10_000
# How long holds and releases accumulate before they go out together, and how many channels one command names.
BATCH_SECONDS = 0.02
BATCH_CHANNELS = 1_000
# The subscription is pinged when idle this long; no answer within PING_SECONDS more means it is lost.
PING_SECONDS = 15.0
# Publishes of routed messages sent in one round trip.
PUBLISH_BATCH = 1_000

MessageCallback = Callable[[bytes], None]
StateCallback = Callable[[], None]


class Held(enum.Enum):
    """What `hold` found once it settled."""

    LIVE = "live"  # the channel was subscribed already: everything published since the hold arrives
    NEW = "new"  # the subscription was made for this hold: what was published before it took effect was missed
    DOWN = "down"  # the broker is not connected: its reconnect will catch everyone up (on_connect)


class Broker:
    """Delivers messages published on a topic (or on a routed topic's key) to the processes subscribed to it.

    `connected` is True only while this process is sure to receive what is published on its topics and held keys:
    callers that cache state invalidated through the broker must not trust their cache while it is False.
    """

    def __init__(self) -> None:
        self._callbacks: dict[str, list[MessageCallback]] = defaultdict(list)
        self._routes: dict[str, MessageCallback] = {}
        self._holds: Counter[str] = Counter()  # routed channel -> holders
        self._on_connect: list[StateCallback] = []
        self._on_disconnect: list[StateCallback] = []
        self.connected = False
        # Messages received, by kind of channel ("topic:<topic>" or "routed:<topic>"): what routing saves shows here.
        self.received: Counter[str] = Counter()

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        """Register a callback for a topic every process holds; call before the app starts."""
        self._callbacks[topic].append(callback)

    def route(self, topic: str, callback: MessageCallback) -> None:
        """Register the callback of a routed topic (one per topic); call before the app starts."""
        if topic in self._routes:
            raise ValueError(f"routed topic {topic!r} has a callback already")
        self._routes[topic] = callback

    def on_connect(self, callback: StateCallback) -> None:
        """Called each time the subscription becomes live: at start and after every reconnect."""
        self._on_connect.append(callback)

    def on_disconnect(self, callback: StateCallback) -> None:
        """Called each time the subscription is lost."""
        self._on_disconnect.append(callback)

    def hold(self, topic: str, key: str) -> Awaitable[Held]:
        """Receive the routed topic's messages for `key` until the matching `release`. Takes effect at once (no
        await between this and the caller's own bookkeeping); the awaitable says when the subscription is live."""
        raise NotImplementedError

    def release(self, topic: str, key: str) -> None:
        """Give one hold back; the last one unsubscribes (batched)."""
        raise NotImplementedError

    def held(self) -> int:
        """Routed channels this process holds."""
        return len(self._holds)

    async def publish(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def publish_routed(self, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish each (key, payload) on the routed topic's channel for its key."""
        raise NotImplementedError

    async def run(self) -> None:
        """Keep the subscription alive until cancelled."""
        raise NotImplementedError

    def _dispatch(self, topic: str, payload: bytes) -> None:
        self.received[f"topic:{topic}"] += 1
        for callback in self._callbacks.get(topic, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("broker callback for %s failed", topic)

    def _dispatch_routed(self, topic: str, payload: bytes) -> None:
        self.received[f"routed:{topic}"] += 1
        callback = self._routes.get(topic)
        if callback is None:
            return
        try:
            callback(payload)
        except Exception:
            log.exception("broker callback for routed %s failed", topic)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        for callback in self._on_connect if connected else self._on_disconnect:
            try:
                callback()
            except Exception:
                log.exception("broker state callback failed")


def _settled(held: Held) -> asyncio.Future[Held]:
    future: asyncio.Future[Held] = asyncio.get_running_loop().create_future()
    future.set_result(held)
    return future


class MemoryBroker(Broker):
    """A broker for a single process, used when REDIS_URL is empty; like a memory channel layer, it cannot
    reach other processes."""

    def hold(self, topic: str, key: str) -> Awaitable[Held]:
        self._holds[f"{topic}:{key}"] += 1
        return _settled(Held.LIVE if self.connected else Held.DOWN)

    def release(self, topic: str, key: str) -> None:
        channel = f"{topic}:{key}"
        self._holds[channel] -= 1
        if self._holds[channel] <= 0:
            del self._holds[channel]

    async def publish(self, topic: str, payload: bytes) -> None:
        self._dispatch(topic, payload)

    async def publish_routed(self, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
        for key, payload in messages:
            if f"{topic}:{key}" in self._holds:
                self._dispatch_routed(topic, payload)

    async def run(self) -> None:
        self._set_connected(True)
        try:
            await asyncio.Event().wait()
        finally:
            self._set_connected(False)


class RedisBroker(Broker):
    """One Redis pub/sub connection per process, reconnected with jittered backoff when it drops.

    The connection is made by `subscriber`'s pool (a plain Redis, or a Sentinel's master_for, which finds the
    current primary at every connect), and spoken to directly: one task writes SUBSCRIBE/UNSUBSCRIBE batches and
    pings, one reads, so holds never wait behind a read. `sharded` uses SSUBSCRIBE/SPUBLISH (Redis 7; a Redis
    Cluster needs it: a plain PUBLISH there reaches every node).
    """

    def __init__(
        self,
        subscriber: aioredis.Redis,
        prefix: str,
        publisher: aioredis.Redis,
        *,
        sharded: bool = False,
        global_routes: bool = False,
    ) -> None:
        super().__init__()
        # REDIS_ROUTING=global: a routed topic is one channel every process holds (what tidings did before per-user
        # routing; kept to compare against, and as a fallback).
        self._global_routes = global_routes
        self._prefix = prefix
        self._publisher = publisher
        self._subscriber = subscriber
        self._sharded = sharded
        self._subscribe_command = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsubscribe_command = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        # What could not be published (Redis down, or a connection that died under the command), bounded.
        self._unsent: deque[tuple[str, bytes]] = deque(maxlen=UNSENT_MAX)
        self._unsent_waiting = asyncio.Event()
        # The state of the current connection's subscription, all by channel name.
        self._requested: set[str] = set()  # subscribed as sent (a later UNSUBSCRIBE removes it)
        self._inflight: Counter[str] = Counter()  # SUBSCRIBEs sent and not yet confirmed
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[Held]]] = defaultdict(list)
        self._changed = asyncio.Event()

    def channel(self, topic: str) -> str:
        return f"{self._prefix}{topic}"

    def routed_channel(self, topic: str, key: str) -> str:
        return f"{self._prefix}{topic}" if self._global_routes else f"{self._prefix}{topic}:{key}"

    # Holds

    def hold(self, topic: str, key: str) -> Awaitable[Held]:
        if self._global_routes:
            self._holds[f"{topic}:{key}"] += 1
            return _settled(Held.LIVE if self.connected else Held.DOWN)
        channel = self.routed_channel(topic, key)
        self._holds[channel] += 1
        if self._holds[channel] == 1:
            if channel in self._to_unsubscribe:
                self._to_unsubscribe.discard(channel)  # its UNSUBSCRIBE never went out: still subscribed
            else:
                self._to_subscribe.add(channel)
                self._changed.set()
        if not self.connected:
            return _settled(Held.DOWN)
        if channel in self._requested and not self._inflight[channel] and channel not in self._to_subscribe:
            return _settled(Held.LIVE)
        future: asyncio.Future[Held] = asyncio.get_running_loop().create_future()
        self._waiters[channel].append(future)
        return future

    def release(self, topic: str, key: str) -> None:
        channel = f"{topic}:{key}" if self._global_routes else self.routed_channel(topic, key)
        self._holds[channel] -= 1
        if self._holds[channel] > 0:
            return
        del self._holds[channel]
        if self._global_routes:
            return
        self._settle(channel, Held.DOWN)
        if channel in self._to_subscribe:
            self._to_subscribe.discard(channel)  # its SUBSCRIBE never went out
        else:
            self._to_unsubscribe.add(channel)
            self._changed.set()

    def _settle(self, channel: str, held: Held) -> None:
        for future in self._waiters.pop(channel, ()):
            if not future.done():
                future.set_result(held)

    def _settle_all(self, held: Held) -> None:
        for channel in list(self._waiters):
            self._settle(channel, held)

    # Publishing

    async def publish(self, topic: str, payload: bytes) -> None:
        channel = self.channel(topic)
        try:
            await self._publish_one(channel, payload)
        except (RedisError, OSError):
            # Redis is unreachable: this process's own subscribers hear it now (a revocation closes local sockets,
            # a notification reaches local sockets), and the others once the message is published again. Consumers
            # drop what they already had, so a message published twice is harmless.
            self._dispatch(topic, payload)
            self._keep_unsent([(channel, payload)])
            raise

    async def publish_routed(self, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
        channels = [(self.routed_channel(topic, key), payload) for key, payload in messages]
        for start in range(0, len(channels), PUBLISH_BATCH):
            batch = channels[start : start + PUBLISH_BATCH]
            try:
                await self._publish_many(batch)
            except (RedisError, OSError):
                for channel, payload in channels[start:]:
                    if channel in self._holds:
                        self._dispatch_routed(topic, payload)
                self._keep_unsent(channels[start:])
                raise

    async def _publish_one(self, channel: str, payload: bytes) -> None:
        if self._sharded:
            await self._publisher.spublish(channel, payload)
        else:
            await self._publisher.publish(channel, payload)

    async def _publish_many(self, batch: Sequence[tuple[str, bytes]]) -> None:
        if len(batch) == 1:
            await self._publish_one(*batch[0])
            return
        async with self._publisher.pipeline(transaction=False) as pipe:
            for channel, payload in batch:
                if self._sharded:
                    pipe.spublish(channel, payload)
                else:
                    pipe.publish(channel, payload)
            await pipe.execute()

    def _keep_unsent(self, messages: Iterable[tuple[str, bytes]]) -> None:
        for message in messages:
            if len(self._unsent) == self._unsent.maxlen:
                log.warning("the queue of messages to publish again is full; dropping the oldest")
            self._unsent.append(message)
        self._unsent_waiting.set()

    async def _republish_forever(self) -> None:
        """Publish again, in order, what could not be published, as soon as Redis takes it."""
        delay = 0.05
        while True:
            await self._unsent_waiting.wait()
            while self._unsent:
                channel, payload = self._unsent[0]
                try:
                    await self._publish_one(channel, payload)
                except (RedisError, OSError):
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not a secret
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.05
                self._unsent.popleft()
            self._unsent_waiting.clear()

    # The subscription

    async def run(self) -> None:
        delay = 0.05
        republisher = asyncio.create_task(self._republish_forever(), name="broker-republisher")
        try:
            while True:
                try:
                    await self._listen()
                except (RedisError, OSError) as exc:
                    log.warning("redis subscription lost or not available: %s", exc)
                # A subscription that was live is retried at once; one that never came up backs off.
                delay = 0.05 if self.connected else min(delay * 2, 5.0)
                self._set_connected(False)
                self._settle_all(Held.DOWN)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not a secret
        finally:
            await cancel_and_wait(republisher)
            self._set_connected(False)
            self._settle_all(Held.DOWN)
            await self._close_subscriber()

    async def _close_subscriber(self) -> None:
        await self._subscriber.aclose()

    async def _connect(self) -> list[AbstractConnection]:
        """The subscription's connections: one, to the primary (behind Sentinel, the one the sentinels name now)."""
        connection: AbstractConnection = self._subscriber.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        await connection.connect()  # type: ignore[no-untyped-call]
        return [connection]

    async def _send(self, connections: list[AbstractConnection], command: str, channels: list[str]) -> None:
        for start in range(0, len(channels), BATCH_CHANNELS):
            await connections[0].send_command(command, *channels[start : start + BATCH_CHANNELS], check_health=False)

    async def _listen(self) -> None:
        connections: list[AbstractConnection] = []
        try:
            connections = await self._connect()
            # A fresh connection subscribes to everything wanted now; connected once all of it is confirmed.
            self._requested, self._inflight = set(), Counter()
            self._to_subscribe = {self.channel(topic) for topic in self._callbacks}
            if self._global_routes:
                self._to_subscribe |= {self.channel(topic) for topic in self._routes}
            else:
                self._to_subscribe |= set(self._holds)
            self._to_unsubscribe = set()
            self._changed.set()
            tasks = [asyncio.create_task(self._read(c), name="broker-reader") for c in connections]
            tasks.append(asyncio.create_task(self._write(connections), name="broker-writer"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(*tasks)
            for task in done:
                task.result()  # raises what ended it
        finally:
            for connection in connections:
                await connection.disconnect()

    async def _write(self, connections: list[AbstractConnection]) -> None:
        """Send what holds and releases changed, in batches, and a ping whenever the subscription was idle.

        At most one SUBSCRIBE and one UNSUBSCRIBE per BATCH_SECONDS each: a hold after a quiet spell goes out at once
        (a socket's "ready" waits for its channel), even right after a release went out, while a storm's holds (or
        closes) gather behind the last command of their kind."""
        loop = asyncio.get_running_loop()
        sent_at = {"subscribe": -BATCH_SECONDS, "unsubscribe": -BATCH_SECONDS}
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), PING_SECONDS)
            except TimeoutError:
                for connection in connections:
                    await connection.send_command("PING", check_health=False)
                continue
            pending = {"subscribe": bool(self._to_subscribe), "unsubscribe": bool(self._to_unsubscribe)}
            waits = [sent_at[kind] + BATCH_SECONDS - loop.time() for kind, due in pending.items() if due]
            if waits and min(waits) > 0:
                await asyncio.sleep(min(waits))  # let a storm of holds, or of releases, gather
            now = loop.time()
            self._changed.clear()
            subscribe: list[str] = []
            unsubscribe: list[str] = []
            if self._to_subscribe and sent_at["subscribe"] + BATCH_SECONDS <= now:
                subscribe, self._to_subscribe = list(self._to_subscribe), set()
                sent_at["subscribe"] = now
            if self._to_unsubscribe and sent_at["unsubscribe"] + BATCH_SECONDS <= now:
                unsubscribe, self._to_unsubscribe = list(self._to_unsubscribe), set()
                sent_at["unsubscribe"] = now
            if self._to_subscribe or self._to_unsubscribe:
                self._changed.set()  # the other kind's turn comes later
            self._requested.difference_update(unsubscribe)
            self._requested.update(subscribe)
            self._inflight.update(subscribe)
            if unsubscribe:
                await self._send(connections, self._unsubscribe_command, unsubscribe)
            if subscribe:
                await self._send(connections, self._subscribe_command, subscribe)

    async def _read(self, connection: AbstractConnection) -> None:
        topics = {self.channel(topic): topic for topic in self._callbacks}
        routes = {self.channel(topic) + ":": topic for topic in self._routes}
        while True:
            reply: Any = await connection.read_response(timeout=2 * PING_SECONDS, push_request=True)
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            if kind in ("message", "smessage"):
                channel = reply[1].decode()
                topic = topics.get(channel)
                if topic is not None:
                    self._dispatch(topic, reply[2])
                elif self._global_routes and channel[len(self._prefix) :] in self._routes:
                    self._dispatch_routed(channel[len(self._prefix) :], reply[2])
                else:
                    head = channel[: channel.rfind(":") + 1]
                    if head in routes:
                        self._dispatch_routed(routes[head], reply[2])
            elif kind in ("subscribe", "ssubscribe"):
                self._confirmed(reply[1].decode())
            elif kind in ("unsubscribe", "sunsubscribe") and reply[1] is not None:
                continue  # replies come in order: a later SUBSCRIBE of the same channel is confirmed after it

    def _confirmed(self, channel: str) -> None:
        self._inflight[channel] -= 1
        if self._inflight[channel] <= 0:
            del self._inflight[channel]
            if channel in self._requested:
                self._settle(channel, Held.NEW)
        if not self.connected and not self._inflight and not self._to_subscribe:
            self._set_connected(True)


class ClusterBroker(RedisBroker):
    """A Redis Cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH), so a message travels only to the shard that owns its
    channel's slot, and per-user channels spread over every shard. Sharded subscriptions live on the node owning the
    slot, so the subscription is one connection per primary (the one exception to one connection per process), and
    one SSUBSCRIBE names channels of a single slot: batches are grouped by slot and pipelined per node. Any of these
    connections failing (a node down, slots moved) takes the whole subscription down and up again, which catches
    every socket up from MongoDB.
    """

    def __init__(self, cluster: RedisCluster, prefix: str) -> None:
        super().__init__(cast(aioredis.Redis, cluster), prefix, cast(aioredis.Redis, cluster), sharded=True)
        self._cluster = cluster
        self._by_node: dict[str, AbstractConnection] = {}

    async def _connect(self) -> list[AbstractConnection]:
        await self._cluster.initialize()
        self._by_node = {}
        try:
            for node in self._cluster.get_primaries():
                connection: AbstractConnection = node.connection_class(**node.connection_kwargs)
                connection.health_check_interval = 0  # the broker pings on its own
                self._by_node[node.name] = connection
                await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            for connection in self._by_node.values():
                await connection.disconnect()
            raise
        return list(self._by_node.values())

    async def _send(self, connections: list[AbstractConnection], command: str, channels: list[str]) -> None:
        by_node: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        for channel in channels:
            node = self._cluster.get_node_from_key(channel)
            if node is None:
                raise RedisError(f"no node owns {channel}'s slot: the cluster changed")
            by_node[node.name][self._cluster.keyslot(channel)].append(channel)
        for name, slots in by_node.items():
            connection = self._by_node.get(name)
            if connection is None:
                raise RedisError(f"no subscription connection to {name}: the cluster changed")
            await connection.send_packed_command(
                [b"".join(connection.pack_command(command, *group)) for group in slots.values()],
                check_health=False,
            )

    async def _close_subscriber(self) -> None:
        """The cluster client is the app's own (redis_ctx closes it); the subscription's connections are closed."""


def redis_broker(settings: Settings, publisher: aioredis.Redis) -> Broker:
    """The broker for the settings' Redis: its subscription on a connection of its own (to the current primary,
    behind Sentinel; sharded pub/sub on every shard of a Redis Cluster)."""
    if settings.redis_cluster:
        return ClusterBroker(cast(RedisCluster, publisher), settings.redis_prefix)
    return RedisBroker(
        redis_client.subscriber_for(settings),
        settings.redis_prefix,
        publisher,
        global_routes=settings.redis_routing == "global",
    )
