"""Everything that is not generation: models, health, metrics, tokenize/detokenize, cancel.

`/health` answers 200 with `status: "ok"`, or 503 with `status: "shutting_down"` once shutdown
began (so load balancers stop routing here) or `status: "unhealthy"` when the engine reports
`healthy: false` (an integrity check failed). `/v1/cancel` answers 202 for a live or recently
finished completion id (idempotent) and 404 for an id the server never issued.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from .chat_request import parse_messages
from .errors import invalid_request, not_found
from .prompt_tokens import chat_prompt_ids, render_chat_messages
from .request_body import read_json_object
from .request_fields import get_bool, get_str
from .responses import JSONResponse
from .server_state import ServerState
from .token_budget import check_prompt_chars


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _model_card(state: ServerState, model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": state.created, "owned_by": "cupyserve",
            "root": state.engine.model_name, "parent": None,
            "max_model_len": state.engine.max_model_len,
            **getattr(state.engine, "model_info", {})}


async def list_models(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"object": "list", "data": [_model_card(state, state.engine.model_name)]})


async def get_model(request: Request) -> Response:
    state = _state(request)
    model_id = request.path_params["model_id"]
    state.check_model(model_id)
    return JSONResponse(_model_card(state, model_id))


async def health(request: Request) -> Response:
    state = _state(request)
    engine_health = state.engine.health()
    if not state.accepting:
        status = "shutting_down"
    elif engine_health.get("healthy", True) is False:  # e.g. an integrity check failed
        status = "unhealthy"
    else:
        status = "ok"
    body = {"status": status, "model": state.engine.model_name,
            "reasoning_format": state.reasoning_format,
            "uptime_seconds": round(state.uptime_seconds, 3)}
    # The engine's fields first, ours last: `status` must reflect admission as the server sees it.
    body = {**engine_health, **body}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def tokenize(request: Request) -> Response:
    """`{"prompt": str, "add_special_tokens": true}` or vLLM's `{"messages": [...]}` (rendered
    with the chat template, as /v1/chat/completions would)."""
    state = _state(request)
    body = await read_json_object(request)
    tokenizer = state.engine.tokenizer
    if body.get("messages") is not None:
        ids = list(chat_prompt_ids(tokenizer, render_chat_messages(tokenizer, parse_messages(body["messages"]))))
    else:
        prompt = get_str(body, "prompt", None)
        if prompt is None:
            raise invalid_request("'prompt' (a string) or 'messages' is required", param="prompt")
        check_prompt_chars(prompt, "prompt")
        ids = tokenizer.encode(prompt, add_special_tokens=get_bool(body, "add_special_tokens", True),
                               parse_special=True)
    return JSONResponse({"tokens": list(ids), "count": len(ids),
                         "max_model_len": state.engine.max_model_len})


async def detokenize(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                               for t in tokens):
        raise invalid_request("'tokens' must be a list of token ids", param="tokens")
    vocab_size = state.engine.tokenizer.vocab_size
    unknown = [t for t in tokens if not 0 <= t < vocab_size]
    if unknown:
        raise invalid_request(f"'tokens' holds ids outside the vocabulary (size {vocab_size}): "
                              f"{unknown[:5]}", param="tokens")
    return JSONResponse({"prompt": state.engine.tokenizer.decode(tokens, skip_special_tokens=False)})


async def cancel(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    completion_id = get_str(body, "id", None)
    if not completion_id:
        raise invalid_request("'id' (a completion id) is required", param="id")
    if not state.cancel(completion_id):
        raise not_found(f"No completion with id `{completion_id}`.", code="completion_not_found")
    return JSONResponse({"id": completion_id, "object": "cancellation", "status": "accepted"},
                        status_code=202)
