"""Every route of the app, in one place."""

from aiohttp import web

from tidings.handlers import account_email, api_keys, auth, health, metrics, notifications, pages, users, ws
from tidings.handlers.assets import STATIC_DIR

API = "/api/v1"


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", pages.index)
    app.router.add_get("/admin", pages.admin_root)
    app.router.add_static("/static", STATIC_DIR)
    app.router.add_get("/health/live", health.live)
    app.router.add_get("/health/ready", health.ready)
    app.router.add_get("/metrics", metrics.metrics)

    app.router.add_post(f"{API}/auth/register", auth.register)
    app.router.add_post(f"{API}/auth/login", auth.login)
    app.router.add_post(f"{API}/auth/refresh", auth.refresh)
    app.router.add_post(f"{API}/auth/logout", auth.logout)
    app.router.add_post(f"{API}/auth/logout-all", auth.logout_all)
    app.router.add_post(f"{API}/auth/password-reset", account_email.request_reset)
    app.router.add_post(f"{API}/auth/password-reset/confirm", account_email.confirm_reset)
    app.router.add_post(f"{API}/auth/verify-email", account_email.verify_email)
    app.router.add_post(f"{API}/auth/verify-email/resend", account_email.resend_verification)
    # The pages a mailed link opens: a form each, spent only by its POST (handlers/account_email.py).
    app.router.add_get("/reset-password", account_email.reset_page)
    app.router.add_post("/reset-password", account_email.reset_submit)
    app.router.add_get("/verify-email", account_email.verify_page)
    app.router.add_post("/verify-email", account_email.verify_submit)
    app.router.add_get("/email/unsubscribe", account_email.unsubscribe_page)
    app.router.add_post("/email/unsubscribe", account_email.unsubscribe)
    # The live page's session: its refresh token is a cookie scoped to PAGE_AUTH_PATH (docs/security.md).
    app.router.add_post(f"{auth.PAGE_AUTH_PATH}/login", auth.page_login)
    app.router.add_post(f"{auth.PAGE_AUTH_PATH}/refresh", auth.page_refresh)
    app.router.add_post(f"{auth.PAGE_AUTH_PATH}/logout", auth.page_logout)

    app.router.add_get(f"{API}/users/me", users.get_me)
    app.router.add_patch(f"{API}/users/me", users.patch_me)
    app.router.add_delete(f"{API}/users/me", users.delete_me)
    app.router.add_get(f"{API}/users", users.list_users)
    app.router.add_get(f"{API}/users/{{user_id}}", users.get_user)
    app.router.add_patch(f"{API}/users/{{user_id}}", users.patch_user)
    app.router.add_delete(f"{API}/users/{{user_id}}", users.delete_user)

    app.router.add_post(f"{API}/notifications", notifications.send)
    app.router.add_post(f"{API}/notifications/batch", notifications.send_batch)
    app.router.add_get(f"{API}/notifications", notifications.list_own)
    app.router.add_get(f"{API}/notifications/unread-count", notifications.unread_count)
    app.router.add_post(f"{API}/notifications/read-all", notifications.mark_all_read)
    app.router.add_post(f"{API}/notifications/{{notification_id}}/read", notifications.mark_read)

    app.router.add_get(f"{API}/ws", ws.websocket)

    app.router.add_post(f"{API}/api-keys", api_keys.create)
    app.router.add_get(f"{API}/api-keys", api_keys.list_keys)
    app.router.add_delete(f"{API}/api-keys/{{key_id}}", api_keys.revoke)
