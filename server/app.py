"""The ASGI app factory: routes, middleware and error handlers around one engine.

`create_app(engine)` takes any object implementing `runtime.engine_protocol.EngineClient`; the
HTTP layer never reaches past that protocol.
"""
from __future__ import annotations

from typing import Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cupyserve.runtime.engine_protocol import EngineClient

from . import routes_misc
from .errors import APIError, ErrorInfo
from .middleware import ApiKeyMiddleware, RequestContextMiddleware
from .responses import error_response
from .routes_chat import create_chat_completion
from .routes_completions import create_completion
from .server_state import ServerState


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.info)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), in the OpenAI shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = (f"No route for {request.method} {request.url.path}" if exc.status_code in (404, 405)
               else str(exc.detail))
    return error_response(ErrorInfo(exc.status_code, message, code=code), headers=exc.headers)


def create_app(engine: EngineClient, *, api_key: str | None = None,
               model_aliases: Iterable[str] = ()) -> Starlette:
    """The server for `engine`. `api_key` guards everything but /health and /metrics;
    `model_aliases` are extra names accepted in the `model` field besides engine.model_name."""
    routes = [
        Route("/v1/completions", create_completion, methods=["POST"]),
        Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
        Route("/v1/models", routes_misc.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", routes_misc.get_model, methods=["GET"]),
        Route("/v1/cancel", routes_misc.cancel, methods=["POST"]),
        Route("/health", routes_misc.health, methods=["GET"]),
        Route("/metrics", routes_misc.metrics, methods=["GET"]),
        Route("/tokenize", routes_misc.tokenize, methods=["POST"]),
        Route("/detokenize", routes_misc.detokenize, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware), Middleware(ApiKeyMiddleware, api_key=api_key)],
        exception_handlers={APIError: _api_error, HTTPException: _http_error},
    )
    app.state.server = ServerState(engine, model_aliases)
    return app
