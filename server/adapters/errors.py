"""Errors a client can cause, each mapped to one status and one JSON shape by the error middleware."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base of every error a client can cause; rendered as {"error": {"code", "message", "details"?}}."""

    status = 400
    code = "bad_request"
    message = "The request is not valid."

    def __init__(
        self, message: str | None = None, *, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class BadRequest(ApiError):
    pass


class ValidationFailed(ApiError):
    status = 422
    code = "validation_error"
    message = "The request does not match the schema."


class NotAuthenticated(ApiError):
    status = 401
    code = "not_authenticated"
    message = "Authentication is required."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="tidings"'})
        super().__init__(message, **kwargs)


class InvalidToken(NotAuthenticated):
    code = "invalid_token"
    message = "The token is invalid, expired or revoked."


class InvalidCredentials(NotAuthenticated):
    code = "invalid_credentials"
    message = "Email or password is incorrect."


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    message = "You are not allowed to do this."


class InsufficientScope(Forbidden):
    """An API key without the scope an endpoint needs (or an endpoint no key may call)."""

    code = "insufficient_scope"
    message = "This API key's scopes do not allow this request."


class NotFound(ApiError):
    status = 404
    code = "not_found"
    message = "Not found."


class Conflict(ApiError):
    status = 409
    code = "conflict"
    message = "This conflicts with existing data."


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"
    message = "A request with this Idempotency-Key is still running; retry shortly."


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"
    message = "This Idempotency-Key was used with another request; use a new key for a new request."


class TooManyRequests(ApiError):
    status = 429
    code = "rate_limited"
    message = "Too many attempts; try again later."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(
            message, headers={"Retry-After": str(max(1, retry_after))}, details={"retry_after": retry_after}
        )
