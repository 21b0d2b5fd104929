"""Beanie documents: what tidings keeps in MongoDB."""

from beanie import Document

from tidings.documents.audit import AuditEntry
from tidings.documents.notification import BroadcastReceipt, Dispatch, Inbox, Notification
from tidings.documents.session import Session
from tidings.documents.user import User

ALL_DOCUMENTS: list[type[Document]] = [User, Session, Notification, BroadcastReceipt, Inbox, Dispatch, AuditEntry]

__all__ = ["ALL_DOCUMENTS", "AuditEntry", "BroadcastReceipt", "Dispatch", "Inbox", "Notification", "Session", "User"]
