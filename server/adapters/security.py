"""Password hashing (argon2id, off the event loop) and JWT signing and checking."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tidings.server.settings import Settings

TokenType = Literal["access", "refresh", "panel"]
ALGORITHM = "HS256"
ISSUER = "tidings"
# Each token type has its own audience, so a refresh token is never accepted as an access token and vice versa.
AUDIENCES: dict[TokenType, str] = {
    "access": "tidings:access",
    "refresh": "tidings:refresh",
    # The admin panel's session cookie: checked like an access token, but never accepted as one.
    "panel": "tidings:panel",
}
REQUIRED_CLAIMS = ["sub", "sid", "jti", "ver", "exp", "iat", "aud", "iss"]


class Passwords:
    """Argon2id hashing in a small thread pool, so hashing never blocks the event loop."""

    def __init__(self, settings: Settings, executor: ThreadPoolExecutor) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            type=Type.ID,
        )
        self._executor = executor
        # Verified when the email is unknown, so a login takes about as long whether or not the account exists.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """Return (matches, needs_rehash). With no hash (unknown user), burn the same time and return False."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        try:
            self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, False
        if password_hash is None:
            return False, False
        return True, self._hasher.check_needs_rehash(password_hash)


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims tidings puts in every token, after the signature and expiry were checked."""

    user_id: str
    session_id: str
    jti: str
    version: int
    expires_at: float
    issued_at: float


class InvalidTokenError(Exception):
    """The token is malformed, forged, of the wrong type or expired."""


class _PreparedHS256(jwt.algorithms.HMACAlgorithm):
    """HS256 whose secret is checked and prepared once, not for every token.

    PyJWT prepares the key on each sign and verify: it encodes it and checks that it is not a PEM, SSH, DER or JWK
    key (with PyJWT 2.15, about a sixth of a decode). Here that runs once, in the constructor, raising as PyJWT would;
    the prepared bytes then serve every token signed or checked with that same secret. Any other key goes through
    PyJWT's checks. Verification is PyJWT's, unchanged: the same HMAC, algorithms list, claims checks and errors.
    """

    def __init__(self, secret: str) -> None:
        super().__init__(jwt.algorithms.HMACAlgorithm.SHA256)
        self._secret = secret
        self._prepared = super().prepare_key(secret)

    def prepare_key(self, key: str | bytes) -> bytes:
        if isinstance(key, str) and key == self._secret:
            return self._prepared
        return super().prepare_key(key)


class Tokens:
    """Issues and checks HS256 JWTs; the algorithm is pinned on decode (no `none`, no HS/RS confusion)."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.jwt_secret
        # PyJWT's own API and checks, through an instance of our own that knows one algorithm, HS256 with the secret
        # prepared once. PyJWT has no public way to hand a PyJWT its PyJWS; it sets `_jws` the same way for its
        # module-level functions. Nothing global changes: jwt.decode and jwt.encode are untouched.
        jws = jwt.PyJWS(algorithms=[])
        jws.register_algorithm(ALGORITHM, _PreparedHS256(self._secret))
        self._jwt = jwt.PyJWT()
        self._jwt._jws = jws
        self.ttl: dict[TokenType, int] = {
            "access": settings.access_token_ttl,
            "refresh": settings.refresh_token_ttl,
            "panel": settings.panel_session_ttl,
        }

    def issue(self, kind: TokenType, *, user_id: str, session_id: str, version: int, jti: str | None = None) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCES[kind],
            "sub": user_id,
            "sid": session_id,
            "jti": jti or uuid.uuid4().hex,
            "ver": version,
            "iat": now,
            "exp": now + self.ttl[kind],
        }
        return self._jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def decode(self, kind: TokenType, token: str) -> Claims:
        try:
            payload = self._jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCES[kind],
                issuer=ISSUER,
                options={"require": REQUIRED_CLAIMS},
            )
        except (jwt.PyJWTError, UnicodeError, ValueError) as exc:
            # UnicodeError: a header or message whose text is not UTF-8 (lone surrogates) cannot be a token.
            raise InvalidTokenError(str(exc)) from None
        sub, sid, jti, ver = payload["sub"], payload["sid"], payload["jti"], payload["ver"]
        if not (isinstance(sub, str) and isinstance(sid, str) and isinstance(jti, str) and type(ver) is int):
            raise InvalidTokenError("malformed claims")
        return Claims(sub, sid, jti, ver, float(payload["exp"]), float(payload["iat"]))
