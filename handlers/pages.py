"""The live notifications page at `/`: static HTML and JS, no inline script."""

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Scripts, styles and sockets from this origin only; 'self' covers ws:/wss: to the same host.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})


async def admin_root(request: web.Request) -> web.StreamResponse:
    """`/admin` without its slash: the admin panel lives at /admin/ (a sub-app answers only below it)."""
    raise web.HTTPMovedPermanently("/admin/")
