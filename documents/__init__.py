"""Beanie documents: what tidings keeps in MongoDB."""

from beanie import Document

from documents.session import Session
from documents.user import User

ALL_DOCUMENTS: list[type[Document]] = [User, Session]

__all__ = ["ALL_DOCUMENTS", "Session", "User"]
