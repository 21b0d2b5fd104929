"""The admin panel's sub-application: its middleware, templates and routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from tidings.handlers.admin import api_keys, audit, dashboard, jobs, login, notifications, users
from tidings.handlers.admin.cookies import take_flash
from tidings.handlers.admin.csrf import csrf_token_for
from tidings.handlers.admin.forms import refuse_nul
from tidings.handlers.admin.session import admin_middleware
from tidings.handlers.admin.text import detail_lines, noun, plural
from tidings.handlers.assets import TEMPLATES_DIR
from tidings.server.keys import principal_key


def _datetime(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


async def _context(request: web.Request) -> dict[str, Any]:
    principal = request.get(principal_key)
    return {
        "admin": principal,
        "csrf_token": csrf_token_for(request) if principal else "",
        "flash": take_flash(request),
        "path": request.path,
    }


def setup_routes(panel: web.Application) -> None:
    panel.router.add_get("/login", login.login_page)
    panel.router.add_post("/login", login.login_submit)
    panel.router.add_post("/logout", login.logout)
    panel.router.add_get("/", dashboard.dashboard)
    panel.router.add_get("/dashboard.json", dashboard.dashboard_json)
    panel.router.add_get("/users", users.users)
    panel.router.add_get("/users/{user_id}", users.user_detail)
    panel.router.add_post("/users/{user_id}/active", users.set_active)
    panel.router.add_post("/users/{user_id}/admin", users.set_admin)
    panel.router.add_post("/users/{user_id}/revoke", users.revoke_sessions)
    panel.router.add_post("/users/{user_id}/password", users.set_password)
    panel.router.add_get("/users/{user_id}/delete", users.delete_page)
    panel.router.add_post("/users/{user_id}/delete", users.delete_user)
    panel.router.add_post("/users/{user_id}/notify", users.notify_user)
    panel.router.add_get("/notifications", notifications.notifications)
    panel.router.add_post("/notifications", notifications.notifications)
    panel.router.add_get("/audit", audit.audit)
    panel.router.add_get("/jobs", jobs.jobs)
    panel.router.add_post("/jobs/retry", jobs.retry_job)
    panel.router.add_post("/jobs/discard", jobs.discard_job)
    panel.router.add_post("/users/{user_id}/password-reset", users.send_password_reset)
    panel.router.add_get("/api-keys", api_keys.api_keys)
    panel.router.add_post("/api-keys", api_keys.create_key)
    panel.router.add_get("/api-keys/{key_id}/revoke", api_keys.revoke_page)
    panel.router.add_post("/api-keys/{key_id}/revoke", api_keys.revoke_key)


def create_admin_app() -> web.Application:
    """The panel, mounted at /admin/ by create_app; it reads the parent's services through config_dict."""
    panel = web.Application(middlewares=[admin_middleware])
    env = aiohttp_jinja2.setup(
        panel,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        context_processors=[_context],
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["datetime"] = _datetime
    env.filters["plural"] = plural
    env.filters["noun"] = noun
    env.filters["detail_lines"] = detail_lines
    # After the gate and the context processors' middleware (which setup appended): the refusal is a panel page.
    panel.middlewares.append(refuse_nul)
    setup_routes(panel)
    return panel
