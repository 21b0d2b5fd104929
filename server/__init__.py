"""tidings server: app factory, settings, middlewares, security, pub/sub and websocket hub, CLI."""
