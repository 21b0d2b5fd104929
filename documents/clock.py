"""Time as the documents store it."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, to the millisecond: what MongoDB stores, so a response shows what a later read returns."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
