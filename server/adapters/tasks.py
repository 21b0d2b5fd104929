"""Ending the app's own background tasks reliably."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait until they end, cancelling again any task that swallowed its cancellation.

    On Python 3.11, asyncio.wait_for (which redis-py uses to send commands) can swallow a cancellation that
    lands just as the command completes (CPython gh-86296, fixed in 3.12): the task runs on, and a plain
    `await task` would hang the shutdown (or `tidings create-admin`) forever.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    await asyncio.gather(*tasks, return_exceptions=True)
