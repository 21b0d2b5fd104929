"""Typed keys for everything the app and its requests carry."""

from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from pymongo import AsyncMongoClient

from tidings.server.adapters.broker import Broker
from tidings.server.adapters.jobs import Jobs
from tidings.server.adapters.metrics import Metrics
from tidings.server.adapters.ratelimit import RateLimiter
from tidings.server.adapters.security import Tokens
from tidings.server.realtime.gauge import ConnectionGauge
from tidings.server.realtime.hub import Hub
from tidings.server.services.accounts import AccountService
from tidings.server.services.api_keys import ApiKeys, KeyPrincipal
from tidings.server.services.audit import AuditLog
from tidings.server.services.authenticator import Authenticator, Principal
from tidings.server.services.digests import Digests
from tidings.server.services.dispatch_log import DispatchLog
from tidings.server.services.email_tokens import AccountEmail
from tidings.server.services.idempotency import Idempotency
from tidings.server.services.job_admin import JobAdmin
from tidings.server.services.notifications import NotificationService
from tidings.server.services.read_counts import ReadCounts
from tidings.server.services.retention import Retention
from tidings.server.services.sessions import SessionService
from tidings.server.settings import Settings

settings_key = web.AppKey("settings", Settings)
mongo_key: web.AppKey[AsyncMongoClient[Any]] = web.AppKey("mongo", AsyncMongoClient)
redis_key = web.AppKey("redis", aioredis.Redis)
broker_key = web.AppKey("broker", Broker)
limiter_key = web.AppKey("limiter", RateLimiter)
tokens_key = web.AppKey("tokens", Tokens)
authenticator_key = web.AppKey("authenticator", Authenticator)
sessions_key = web.AppKey("sessions", SessionService)
accounts_key = web.AppKey("accounts", AccountService)
notifications_key = web.AppKey("notifications", NotificationService)
dispatch_log_key = web.AppKey("dispatch_log", DispatchLog)
read_counts_key = web.AppKey("read_counts", ReadCounts)
retention_key = web.AppKey("retention", Retention)
hub_key = web.AppKey("hub", Hub)
audit_key = web.AppKey("audit", AuditLog)
gauge_key = web.AppKey("gauge", ConnectionGauge)
jobs_key = web.AppKey("jobs", Jobs)
account_email_key = web.AppKey("account_email", AccountEmail)
digests_key = web.AppKey("digests", Digests)
job_admin_key = web.AppKey("job_admin", JobAdmin)
api_keys_key = web.AppKey("api_keys", ApiKeys)
idempotency_key = web.AppKey("idempotency", Idempotency)
metrics_key = web.AppKey("metrics", Metrics)

principal_key = web.RequestKey("principal", Principal)
# A request made with an API key has this instead of principal_key (a key is not a user).
key_principal_key = web.RequestKey("key_principal", KeyPrincipal)
# Where aiohttp-apigami's validation middleware puts the validated body, query or path.
validated_key: web.RequestKey[dict[str, Any]] = web.RequestKey("validated", dict)
# Where it puts validated path parameters of handlers that also validate a body.
path_key: web.RequestKey[dict[str, Any]] = web.RequestKey("path", dict)
