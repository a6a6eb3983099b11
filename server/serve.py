"""Serving the app with Hypercorn (asyncio) and shutting down gracefully.

On SIGTERM or SIGINT: stop admission (new requests get 503, /health says "shutting_down"), let
running completions finish for up to the grace period, abort what is left, stop Hypercorn, then
shut the engine down. A second signal skips the rest of the grace period.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from cupyserve.runtime.log import log_event

from .server_state import ServerState

ABORT_SETTLE_SECONDS = 5.0  # after aborting leftovers, time for their streams to end cleanly


class _JsonLogHandler(logging.Handler):
    """Hypercorn's own messages as JSON log events, so every line of the server log is JSON."""

    def emit(self, record: logging.LogRecord) -> None:
        log_event("hypercorn", level=record.levelname.lower(), message=record.getMessage())


def _hypercorn_logger() -> logging.Logger:
    logger = logging.getLogger("cupyserve.hypercorn")
    if not logger.handlers:
        logger.addHandler(_JsonLogHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


async def maybe_await(value: Any) -> Any:
    """Engines may implement start/shutdown as plain or async methods."""
    return await value if inspect.isawaitable(value) else value


async def serve_app(app: Any, state: ServerState, host: str, port: int,
                    grace_seconds: float) -> None:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # RequestContextMiddleware logs every request as JSON
    config.errorlog = _hypercorn_logger()
    config.graceful_timeout = ABORT_SETTLE_SECONDS
    sockets = config.create_sockets()
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)  # listening before "ready" is logged, so "ready" is true
    bound_port = sockets.insecure_sockets[0].getsockname()[1]

    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            force.set()
        stop.set()
        log_event("signal", signal=signal.Signals(signum).name)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    async def shutdown_trigger() -> None:
        await stop.wait()
        state.begin_drain()
        log_event("shutdown", phase="draining", active=state.num_active, grace_seconds=grace_seconds)
        idle = asyncio.ensure_future(state.wait_idle(grace_seconds))
        forced = asyncio.ensure_future(force.wait())
        await asyncio.wait({idle, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not (idle.done() and idle.result()):
            idle.cancel()
            log_event("shutdown", phase="aborting", active=state.num_active)
            state.abort_all()
            await state.wait_idle(ABORT_SETTLE_SECONDS)

    log_event("ready", url=f"http://{host}:{bound_port}", model=state.engine.model_name)
    try:
        # worker_serve rather than hypercorn.asyncio.serve: only it takes pre-bound sockets.
        await worker_serve(wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                           sockets=sockets, shutdown_trigger=shutdown_trigger)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
