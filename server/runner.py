"""How tidings is served: an `AppRunner` whose connections answer requests that aiohttp's HTTP parser refuses with
the API's JSON error (`TidingsRunner`), made with the app's settings by `runner_for`, and the loop `tidings serve`
runs it in (`run`). Under gunicorn, aiohttp's worker serves the runner that `server.app.gunicorn_runner` returns (its
documented way to take a runner made by the app), so both ways of serving answer, log and shut down alike.

A request the parser refuses (a header line over 8190 bytes, a garbled request line, bad HTTP) never reaches the app
or its middlewares: aiohttp answers it from `RequestHandler.handle_error`, the per-connection protocol, with a plain
text "400 Bad Request". aiohttp has no setting for that answer, and `web.Server` always builds a plain
`RequestHandler`; so `TidingsRunner` builds its `web.Server` as a subclass that builds `_RequestHandler`, whose
`handle_error` gives the JSON answer for the parser's refusals (status < 500) and leaves aiohttp's behaviour, logging
included, unchanged otherwise. Nothing of aiohttp is patched: these are subclasses, used only by this runner.
`web.run_app` cannot take a runner of its own, hence `run`, which does what `run_app` did for `tidings serve`, with
a listen backlog of LISTEN_BACKLOG (gunicorn.conf.py gives gunicorn's sockets the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import uvloop
from aiohttp import web

from tidings.handlers.middlewares import refused_request_response
from tidings.server.keys import settings_key
from tidings.server.logs import AccessLogger

log = logging.getLogger("tidings")

# Seconds an idle keep-alive connection stays open: what `web.run_app` passes (RequestHandler's own default is
# longer), and longer than nginx's upstream keepalive_timeout (60 s by default), so that the proxy closes it first.
KEEPALIVE_TIMEOUT = 75.0


class _RequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own first: it logs (server/logs.py makes a parser refusal one INFO line) and raises
        # ConnectionError when part of a response went out already. Its answer is kept for 5xx (a handler that
        # failed or timed out), which the app's middleware renders itself whenever it can.
        response = super().handle_error(request, status, exc, message)
        if status >= 500:
            return response
        return refused_request_response(status, message or response.reason or "Bad Request")


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        # As web.Server.__call__, with the subclass; its fallback for unknown keyword arguments is not needed, since
        # the arguments are the runner's own (access log, keep-alive, timeouts).
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class TidingsRunner(web.AppRunner):
    """`web.AppRunner` (same arguments) whose connections answer refused requests with the API's JSON error.

    `backlog`, when given, is the listen queue of every site this runner serves, whatever the site was made with:
    aiohttp's gunicorn worker makes its `SockSite`s with aiohttp's default, 128, and starting a site listens again
    on gunicorn's socket with that, replacing gunicorn's `backlog`. A site's backlog is only read when it starts,
    just after it registers with its runner, so it is set there.
    """

    def __init__(self, app: web.Application, *, backlog: int | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._backlog = backlog

    def _reg_site(self, site: web.BaseSite) -> None:
        super()._reg_site(site)
        if self._backlog is not None:
            site._backlog = self._backlog

    async def _make_server(self) -> web.Server:
        # aiohttp's start-up of the app (startup signals, freeze) and its server, rebuilt with the same arguments as
        # the subclass before any connection exists.
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server._kwargs,
        )


# Allocations (net) between young collections, then young collections per middle one, middle ones per full one.
# CPython's defaults are 700, 10, 10.
GC_THRESHOLDS = (50_000, 20, 100)


async def garbage_collector_ctx(app: web.Application) -> AsyncIterator[None]:
    """Once the app has started: freeze what start-up made, and collect garbage less often.

    - A full collection walks every tracked object with the event loop stopped: with the ~100,000 objects start-up
      made (modules, models, the app and its services), about 60 ms, every few tens of seconds under load, which was
      the largest stall of the hot path. `gc.freeze()` keeps them out of every later collection (they live as long
      as the process anyway).
    - A reconnect storm makes long-lived objects fast (10,000 sockets and their state), and at CPython's default
      thresholds the collector walked them over and over: a 10,000-socket storm took 16.8-17.0 s of the server's
      CPU, against 11.1-12.4 s with these thresholds (docs/scaling.md). Cyclic garbage waits a little longer for
      its collection; what is not cyclic is freed at once, by reference counting, as before.
    """
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def runner_for(app: web.Application, *, handle_signals: bool = False) -> TidingsRunner:
    """The runner that serves `app`, from its settings: the JSON access log (ACCESS_LOG), the listen backlog
    (LISTEN_BACKLOG), and SHUTDOWN_TIMEOUT for requests in flight once the sockets are closed. The garbage
    collector is tuned once the app has started (`garbage_collector_ctx`): serving processes only, not apps under
    test."""
    app.cleanup_ctx.append(garbage_collector_ctx)
    settings = app[settings_key]
    return TidingsRunner(
        app,
        handle_signals=handle_signals,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("tidings.access") if settings.access_log else None,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=settings.shutdown_timeout,
        backlog=settings.listen_backlog,
    )


async def _serve(runner: web.AppRunner, host: str, port: int, backlog: int) -> None:
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=backlog)
        await site.start()
        log.info("======== Running on %s ========\n(Press CTRL+C to quit)", site.name)
        await asyncio.Event().wait()  # until the task is cancelled (run: on SIGTERM or SIGINT)
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int) -> None:
    """Serve `app` on host:port on a uvloop event loop until SIGTERM or SIGINT, then shut down gracefully: what
    `web.run_app(app, host=..., port=..., loop=uvloop.new_event_loop())` does, with `runner_for(app)`, whose listen
    queue is LISTEN_BACKLOG (aiohttp's own default, 128, is overflowed by a reconnect storm)."""
    runner = runner_for(app, handle_signals=True)
    backlog = app[settings_key].listen_backlog
    loop = uvloop.new_event_loop()
    main_task = loop.create_task(_serve(runner, host, port, backlog))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):  # the runner's signal handlers raise GracefulExit
        pass
    finally:
        try:
            # The serving task first, so that its runner.cleanup() (on_shutdown: WebSockets closed with 1001, then
            # requests in flight given shutdown_timeout, then the cleanup contexts) runs before anything is cancelled.
            if not main_task.done():
                main_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main_task)
        finally:
            _cancel_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left and wait for it, reporting failures to the loop's exception handler (as run_app does)."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {"message": "unhandled exception during shutdown", "exception": task.exception(), "task": task}
            )
