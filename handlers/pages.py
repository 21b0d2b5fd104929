"""The live notifications page at `/`: static HTML and JS, no inline script."""

from aiohttp import web

from tidings.handlers.assets import STATIC_DIR
from tidings.handlers.csp import PAGE_CSP


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})


async def admin_root(request: web.Request) -> web.StreamResponse:
    """`/admin` without its slash: the admin panel lives at /admin/ (a sub-app answers only below it)."""
    raise web.HTTPMovedPermanently("/admin/")
