"""Content-Security-Policy: one builder, and the policy of each kind of page."""

from __future__ import annotations


def content_security_policy(**sources: str) -> str:
    """A policy from directives given as keyword arguments (`script_src="'self'"` is `script-src 'self'`).

    Every policy denies by default, never allows framing and keeps forms and <base> on this site.
    """
    directives = {
        "default-src": "'none'",
        **{name.replace("_", "-"): value for name, value in sources.items()},
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


# JSON answers need nothing at all.
API_CSP = content_security_policy()
# The live page and the admin panel: scripts, styles, images and sockets from this origin only, no inline script
# or style; 'self' covers ws:/wss: to the same host.
PAGE_CSP = content_security_policy(
    script_src="'self'",
    style_src="'self'",
    img_src="'self'",
    connect_src="'self'",
    form_action="'self'",
    base_uri="'none'",
)
# Swagger UI loads its own scripts and styles, runs an inline bootstrap script and uses data: images.
DOCS_CSP = content_security_policy(
    default_src="'self'",
    script_src="'self' 'unsafe-inline'",
    style_src="'self' 'unsafe-inline'",
    img_src="'self' data:",
)
