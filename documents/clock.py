"""Time as the documents store it."""

from datetime import UTC, datetime

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    """Now, to the millisecond: what MongoDB stores, so a response shows what a later read returns."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def day_number(moment: datetime) -> int:
    """The UTC day `moment` falls on, counted from 1970-01-01: what retention deletes by, one equality per day."""
    return (moment.astimezone(UTC) - EPOCH).days


def today_number() -> int:
    return day_number(datetime.now(UTC))
