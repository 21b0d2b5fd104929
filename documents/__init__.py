"""Beanie documents: what tidings keeps in MongoDB."""

from beanie import Document

from tidings.documents.api_key import ApiKey, ApiKeyUsage
from tidings.documents.audit import AuditEntry
from tidings.documents.dispatch_log import DispatchLogChunk, DispatchLogDirectory
from tidings.documents.email_token import EmailToken
from tidings.documents.idempotency import IdempotencyRecord
from tidings.documents.notification import BroadcastIndex, BroadcastReceipt, Dispatch, Inbox, InboxPage, Notification
from tidings.documents.read_count import (
    CoveragePage,
    CoverageSummary,
    CoverageTally,
    FoldState,
    ReadCounter,
    ReadTally,
)
from tidings.documents.retention import RetentionMark
from tidings.documents.session import Session
from tidings.documents.user import User

ALL_DOCUMENTS: list[type[Document]] = [
    User,
    Session,
    Notification,
    BroadcastReceipt,
    BroadcastIndex,
    Inbox,
    InboxPage,
    Dispatch,
    AuditEntry,
    DispatchLogDirectory,
    DispatchLogChunk,
    ReadTally,
    CoverageTally,
    ReadCounter,
    CoveragePage,
    CoverageSummary,
    FoldState,
    RetentionMark,
    ApiKey,
    ApiKeyUsage,
    IdempotencyRecord,
    EmailToken,
]

__all__ = [
    "ALL_DOCUMENTS",
    "ApiKey",
    "ApiKeyUsage",
    "AuditEntry",
    "BroadcastIndex",
    "BroadcastReceipt",
    "CoveragePage",
    "CoverageSummary",
    "CoverageTally",
    "Dispatch",
    "DispatchLogChunk",
    "DispatchLogDirectory",
    "EmailToken",
    "FoldState",
    "IdempotencyRecord",
    "Inbox",
    "InboxPage",
    "Notification",
    "ReadCounter",
    "ReadTally",
    "RetentionMark",
    "Session",
    "User",
]
