"""Beanie documents: what tidings keeps in MongoDB."""

from beanie import Document

from documents.notification import BroadcastReceipt, Inbox, Notification
from documents.session import Session
from documents.user import User

ALL_DOCUMENTS: list[type[Document]] = [User, Session, Notification, BroadcastReceipt, Inbox]

__all__ = ["ALL_DOCUMENTS", "BroadcastReceipt", "Inbox", "Notification", "Session", "User"]
