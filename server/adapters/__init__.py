"""Adapters: the broker and its message codecs, security, rate limits, locks, the database, pagination, errors."""
