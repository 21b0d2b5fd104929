"""Fan-out between server processes: one Redis subscription per process, or an in-process broker without Redis."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tidings.server.adapters.tasks import cancel_and_wait

log = logging.getLogger(__name__)

UNSENT_MAX = 10_000

MessageCallback = Callable[[bytes], None]
StateCallback = Callable[[], None]


class Broker:
    """Delivers messages published on a topic to every process's callbacks for that topic.

    `connected` is True only while this process is sure to receive what is published: callers that cache
    state invalidated through the broker must not trust their cache while it is False.
    """

    def __init__(self) -> None:
        self._callbacks: dict[str, list[MessageCallback]] = defaultdict(list)
        self._on_connect: list[StateCallback] = []
        self._on_disconnect: list[StateCallback] = []
        self.connected = False

    def subscribe(self, topic: str, callback: MessageCallback) -> None:
        """Register a callback; call before the app starts."""
        self._callbacks[topic].append(callback)

    def on_connect(self, callback: StateCallback) -> None:
        """Called each time the subscription becomes live: at start and after every reconnect."""
        self._on_connect.append(callback)

    def on_disconnect(self, callback: StateCallback) -> None:
        """Called each time the subscription is lost."""
        self._on_disconnect.append(callback)

    async def publish(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Keep the subscription alive until cancelled."""
        raise NotImplementedError

    def _dispatch(self, topic: str, payload: bytes) -> None:
        for callback in self._callbacks.get(topic, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("broker callback for %s failed", topic)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        for callback in self._on_connect if connected else self._on_disconnect:
            try:
                callback()
            except Exception:
                log.exception("broker state callback failed")


class MemoryBroker(Broker):
    """A broker for a single process, used when REDIS_URL is empty; like a memory channel layer, it cannot
    reach other processes."""

    async def publish(self, topic: str, payload: bytes) -> None:
        self._dispatch(topic, payload)

    async def run(self) -> None:
        self._set_connected(True)
        try:
            await asyncio.Event().wait()
        finally:
            self._set_connected(False)


class RedisBroker(Broker):
    """One Redis pub/sub connection per process, reconnected with jittered backoff when it drops."""

    def __init__(self, url: str, prefix: str, publisher: aioredis.Redis) -> None:
        super().__init__()
        self._prefix = prefix
        self._publisher = publisher
        # What could not be published (Redis down, or a connection that died under the command), bounded.
        self._unsent: deque[tuple[str, bytes]] = deque(maxlen=UNSENT_MAX)
        self._unsent_waiting = asyncio.Event()
        # No hidden retries on the subscriber: a drop must be seen, so caches are distrusted until it is back.
        self._subscriber = aioredis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), socket_keepalive=True, health_check_interval=15
        )

    def _channel(self, topic: str) -> str:
        return f"{self._prefix}{topic}"

    async def publish(self, topic: str, payload: bytes) -> None:
        try:
            await self._publisher.publish(self._channel(topic), payload)
        except (RedisError, OSError):
            # Redis is unreachable: this process's own subscribers hear it now (a revocation closes local sockets,
            # a notification reaches local sockets), and the others once the message is published again. Consumers
            # drop what they already had, so a message published twice is harmless.
            self._dispatch(topic, payload)
            if len(self._unsent) == self._unsent.maxlen:
                log.warning("the queue of messages to publish again is full; dropping the oldest")
            self._unsent.append((topic, payload))
            self._unsent_waiting.set()
            raise

    async def _republish_forever(self) -> None:
        """Publish again, in order, what could not be published, as soon as Redis takes it."""
        delay = 0.05
        while True:
            await self._unsent_waiting.wait()
            while self._unsent:
                topic, payload = self._unsent[0]
                try:
                    await self._publisher.publish(self._channel(topic), payload)
                except (RedisError, OSError):
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not a secret
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.05
                self._unsent.popleft()
            self._unsent_waiting.clear()

    async def run(self) -> None:
        delay = 0.05
        republisher = asyncio.create_task(self._republish_forever(), name="broker-republisher")
        try:
            while True:
                try:
                    await self._listen(self._callbacks.keys())
                except (RedisError, OSError) as exc:
                    log.warning("redis subscription lost or not available: %s", exc)
                # A subscription that was live is retried at once; one that never came up backs off.
                delay = 0.05 if self.connected else min(delay * 2, 5.0)
                self._set_connected(False)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not a secret
        finally:
            await cancel_and_wait(republisher)
            self._set_connected(False)
            await self._subscriber.aclose()

    async def _listen(self, topics: Iterable[str]) -> None:
        channels = {self._channel(topic): topic for topic in topics}
        async with self._subscriber.pubsub() as pubsub:
            await pubsub.subscribe(*channels)
            pending = set(channels)
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                if message["type"] == "subscribe":
                    pending.discard(channel)
                    if not pending:
                        self._set_connected(True)
                elif message["type"] == "message" and channel in channels:
                    self._dispatch(channels[channel], message["data"])
