"""Request and response schemas: they validate input and generate the OpenAPI document."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from tidings.documents.ids import parse_object_id
from tidings.handlers.nul import NUL
from tidings.server.services.api_keys import DEFAULT_RATE_LIMIT, MIN_EXPIRES_IN, SCOPES

USERNAME = validate.Regexp(r"^[A-Za-z0-9_.-]{3,32}$", error="3 to 32 letters, digits, '_', '.' or '-'.")
PASSWORD = validate.Length(min=8, max=128)
EMAIL_LENGTH = validate.Length(max=254)
NAME_LENGTH = validate.Length(max=100)
BIO_LENGTH = validate.Length(max=1000)
MAX_RECIPIENTS = 1000
RECIPIENT_COUNT = validate.Length(min=1, max=MAX_RECIPIENTS)
# The ids parse_object_id accepts, as the OpenAPI document states them.
OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"
NUL_ESCAPED = "\\u0000"  # how a sentence shows a NUL in a field name


def error_sentences(messages: Any, field: str = "") -> list[str]:
    """Validation messages (nested by field, index or list) as sentences, one per message: "email: Not a valid
    email address." Schema-wide messages have no field. A NUL in a field name (a key a client sent, refused by
    handlers/nul.py) is written as \\u0000, as JSON would."""
    if isinstance(messages, dict):
        return [
            sentence
            for key, value in messages.items()
            for sentence in error_sentences(value, str(key) if not field else f"{field}.{key}")
        ]
    if isinstance(messages, list):
        return [sentence for value in messages for sentence in error_sentences(value, field)]
    prefix = f"{field.replace(NUL, NUL_ESCAPED)}: " if field and field != "_schema" else ""
    return [f"{prefix}{messages}"]


class StrictSchema(Schema):
    """Unknown fields are an error, never silently dropped or stored."""

    class Meta:
        unknown = RAISE


class ObjectIdField(fields.String):
    """A MongoDB ObjectId as 24 hexadecimal characters."""

    def __init__(self, **kwargs: Any) -> None:
        # Documentation only (the OpenAPI document's pattern): _deserialize is what checks the id.
        kwargs["metadata"] = {"pattern": OBJECT_ID_PATTERN, **(kwargs.get("metadata") or {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        oid = parse_object_id(text)
        if oid is None:
            raise ValidationError("Not a valid id.")
        return str(oid)  # one spelling (lower case) of each id, so ids compare as strings


class Text(fields.String):
    """Text a person reads (a title, a name, a bio): white space around it is stripped before any rule applies, so
    a title of only spaces is empty. With `blank_is_none`, text that is empty after stripping is stored as null."""

    def __init__(self, *, blank_is_none: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blank_is_none = blank_is_none

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | None:
        text: str = super()._deserialize(value, attr, data, **kwargs).strip()
        return None if self.blank_is_none and not text else text

    def _validate(self, value: Any) -> None:
        if value is not None:  # blank, now null: the length rules are for text
            super()._validate(value)


class StrictBoolean(fields.Boolean):
    """JSON true or false only; not 1, "yes" or "true"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


# Requests


class RegisterSchema(StrictSchema):
    email = fields.Email(required=True, validate=EMAIL_LENGTH)
    username = fields.String(required=True, validate=USERNAME)
    password = fields.String(required=True, validate=PASSWORD, load_only=True)
    full_name = Text(load_default=None, allow_none=True, blank_is_none=True, validate=NAME_LENGTH)


class LoginSchema(StrictSchema):
    email = fields.String(required=True, validate=EMAIL_LENGTH)
    password = fields.String(required=True, validate=validate.Length(max=128), load_only=True)


class RefreshSchema(StrictSchema):
    refresh_token = fields.String(required=True, validate=validate.Length(max=2048), load_only=True)


class UpdateMeSchema(StrictSchema):
    email = fields.Email(validate=EMAIL_LENGTH)
    username = fields.String(validate=USERNAME)
    full_name = Text(allow_none=True, blank_is_none=True, validate=NAME_LENGTH)
    bio = Text(allow_none=True, blank_is_none=True, validate=BIO_LENGTH)
    password = fields.String(validate=PASSWORD, load_only=True)
    current_password = fields.String(validate=validate.Length(max=128), load_only=True)
    email_digest = StrictBoolean()

    @validates_schema
    def not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.keys() - {"current_password"}:
            raise ValidationError("Nothing to change.")


class DeleteMeSchema(StrictSchema):
    current_password = fields.String(required=True, validate=validate.Length(max=128), load_only=True)


class AdminUpdateUserSchema(StrictSchema):
    email = fields.Email(validate=EMAIL_LENGTH)
    username = fields.String(validate=USERNAME)
    full_name = Text(allow_none=True, blank_is_none=True, validate=NAME_LENGTH)
    bio = Text(allow_none=True, blank_is_none=True, validate=BIO_LENGTH)
    password = fields.String(validate=PASSWORD, load_only=True)
    is_active = StrictBoolean()
    is_admin = StrictBoolean()

    @validates_schema
    def not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Nothing to change.")


class UserListQuerySchema(StrictSchema):
    q = fields.String(validate=validate.Length(min=1, max=100))
    before = ObjectIdField()
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    is_active = fields.Boolean()
    is_admin = fields.Boolean()


class UserIdSchema(StrictSchema):
    user_id = ObjectIdField(required=True)


# Responses (documentation only: handlers shape their JSON directly)


class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"example": "validation_error"})
    message = fields.String(required=True)
    details = fields.Raw()


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)


class UserSchema(Schema):
    id = fields.String(required=True)
    email = fields.String(required=True)
    username = fields.String(required=True)
    full_name = fields.String(allow_none=True)
    bio = fields.String(allow_none=True)
    is_active = fields.Boolean(required=True)
    is_admin = fields.Boolean(required=True)
    email_verified = fields.Boolean(required=True)
    pending_email = fields.String(
        allow_none=True, required=True, metadata={"description": "An address waiting for its confirmation link"}
    )
    email_digest = fields.Boolean(required=True, metadata={"description": "Whether unread digests are mailed"})
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema), required=True)
    next_before = fields.String(allow_none=True, required=True)


class TokenPairSchema(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "bearer"})
    expires_in = fields.Integer(required=True)


class AccessTokenSchema(Schema):
    """The live page's login and refresh: the refresh token is in the HttpOnly cookie, never in the body."""

    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "bearer"})
    expires_in = fields.Integer(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())


# Notifications


class SendNotificationSchema(StrictSchema):
    title = Text(required=True, validate=validate.Length(min=1, max=200, error="1 to 200 characters, not only spaces."))
    body = fields.String(required=True, validate=validate.Length(max=5000))
    data = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), load_default=None, allow_none=True)
    # Recipients by id, email or username (together at most MAX_RECIPIENTS), or everyone with broadcast: true.
    user_ids = fields.List(ObjectIdField(), validate=RECIPIENT_COUNT, load_default=list)
    emails = fields.List(fields.String(validate=EMAIL_LENGTH), validate=RECIPIENT_COUNT, load_default=list)
    usernames = fields.List(
        fields.String(validate=validate.Length(max=32)), validate=RECIPIENT_COUNT, load_default=list
    )
    broadcast = StrictBoolean(load_default=False)

    # The OpenAPI document states this rule too (SEND_AUDIENCE in handlers/openapi.py): keep the two in step.
    @validates_schema
    def one_audience(self, data: dict[str, Any], **kwargs: Any) -> None:
        named = sum(len(data.get(field) or ()) for field in ("user_ids", "emails", "usernames"))
        if data.get("broadcast") == bool(named):
            raise ValidationError("Give user_ids, emails or usernames, or broadcast: true.")
        if named > MAX_RECIPIENTS:
            raise ValidationError(f"At most {MAX_RECIPIENTS} recipients in one send.")


class NotificationListQuerySchema(StrictSchema):
    before = ObjectIdField()
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    unread = fields.Boolean(load_default=False)


class NotificationIdSchema(StrictSchema):
    notification_id = ObjectIdField(required=True)


class SenderSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(["user", "key"]))
    id = fields.String(required=True)
    name = fields.String(allow_none=True, required=True)


class NotificationSchema(Schema):
    id = fields.String(required=True)
    title = fields.String(required=True)
    body = fields.String(required=True)
    data = fields.Dict(allow_none=True)
    created_at = fields.DateTime(required=True)
    broadcast = fields.Boolean(required=True)
    read = fields.Boolean(required=True)
    # Who sent it: an admin or an API key; null for what the system sent.
    sender = fields.Nested(SenderSchema, allow_none=True)


class NotificationPageSchema(Schema):
    items = fields.List(fields.Nested(NotificationSchema), required=True)
    next_before = fields.String(allow_none=True, required=True)


class SentSchema(Schema):
    broadcast = fields.Boolean(required=True)
    notifications = fields.List(fields.Nested(NotificationSchema), required=True)


class UnreadCountSchema(Schema):
    unread = fields.Integer(required=True)


class PasswordResetRequestSchema(StrictSchema):
    email = fields.String(required=True, validate=EMAIL_LENGTH)


class PasswordResetConfirmSchema(StrictSchema):
    token = fields.String(required=True, validate=validate.Length(min=1, max=200), load_only=True)
    password = fields.String(required=True, validate=PASSWORD, load_only=True)


class EmailTokenSchema(StrictSchema):
    token = fields.String(required=True, validate=validate.Length(min=1, max=200), load_only=True)


class AcceptedSchema(Schema):
    status = fields.String(required=True, metadata={"example": "accepted"})
    message = fields.String(required=True)


# Batch sends


MAX_BATCH = 100


class BatchSendSchema(StrictSchema):
    # Each item is checked by SendNotificationSchema on its own (even one that is not an object), so that a bad item
    # fails only itself.
    notifications = fields.List(
        fields.Raw(metadata={"type": "object", "description": "As the body of POST /api/v1/notifications."}),
        required=True,
        validate=validate.Length(min=1, max=MAX_BATCH, error=f"1 to {MAX_BATCH} items."),
    )


class BatchItemErrorSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Raw()


class BatchResultSchema(Schema):
    status = fields.Integer(required=True, metadata={"example": 201})
    broadcast = fields.Boolean()
    notifications = fields.List(fields.Nested(NotificationSchema))
    error = fields.Nested(BatchItemErrorSchema)


class BatchSentSchema(Schema):
    results = fields.List(fields.Nested(BatchResultSchema), required=True)


# API keys


MAX_EXPIRES_IN = 10 * 366 * 86_400


class CreateApiKeySchema(StrictSchema):
    name = Text(required=True, validate=validate.Length(min=1, max=100, error="1 to 100 characters, not only spaces."))
    scopes = fields.List(
        fields.String(validate=validate.OneOf(list(SCOPES))), required=True, validate=validate.Length(min=1)
    )
    # Seconds until the key expires; none: it never does.
    expires_in = fields.Integer(
        load_default=None, allow_none=True, strict=True, validate=validate.Range(min=MIN_EXPIRES_IN, max=MAX_EXPIRES_IN)
    )
    rate_limit_per_minute = fields.Integer(
        load_default=DEFAULT_RATE_LIMIT, strict=True, validate=validate.Range(min=1, max=100_000)
    )


class ApiKeyIdSchema(StrictSchema):
    key_id = ObjectIdField(required=True)


class ApiKeyCreatorSchema(Schema):
    id = fields.String(required=True)
    email = fields.String(allow_none=True)


class ApiKeySchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    scopes = fields.List(fields.String(), required=True)
    prefix = fields.String(required=True, metadata={"description": "The first 8 characters after tdg_."})
    created_by = fields.Nested(ApiKeyCreatorSchema, allow_none=True, required=True)
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(allow_none=True, required=True)
    last_used_at = fields.DateTime(allow_none=True, required=True)
    revoked_at = fields.DateTime(allow_none=True, required=True)
    rate_limit_per_minute = fields.Integer(required=True)


class CreatedApiKeySchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    scopes = fields.List(fields.String(), required=True)
    key = fields.String(required=True, metadata={"description": "The secret: shown this once, never again."})
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(allow_none=True, required=True)
    rate_limit_per_minute = fields.Integer(required=True)


class ApiKeyListSchema(Schema):
    items = fields.List(fields.Nested(ApiKeySchema), required=True)
