"""Cross-cutting HTTP behaviour: bodies, error shapes, correlation ids, API keys, routing."""
from __future__ import annotations

import uuid

from cupyserve.runtime import log
from test_server_fake_engine import FakeEngine, assert_openai_error, client_for


def test_malformed_json_wrong_content_type_and_non_object():
    client = client_for()
    headers = {"content-type": "application/json"}
    assert assert_openai_error(client.post("/v1/completions", content=b"{nope", headers=headers),
                               400)["code"] == "invalid_json"
    assert assert_openai_error(client.post("/v1/completions", content=b"[1,2]", headers=headers),
                               400)["code"] == "invalid_json"
    assert assert_openai_error(client.post("/v1/completions", content=b"", headers=headers),
                               400)["code"] == "invalid_json"
    response = client.post("/v1/completions", content=b'{"prompt": "a"}',
                           headers={"content-type": "text/plain"})
    assert assert_openai_error(response, 400)["code"] == "invalid_content_type"
    # No content type at all: parsed as JSON (curl without -H sends form type, which is refused).
    assert client.post("/v1/completions", content=b'{"prompt": "a", "max_tokens": 1}').status_code == 200


def test_unknown_fields_are_ignored():
    response = client_for().post("/v1/completions",
                                 json={"prompt": "a", "max_tokens": 1, "user": "u", "whatever": [1]})
    assert response.status_code == 200


def test_unknown_route_and_method_use_openai_shape():
    client = client_for()
    assert assert_openai_error(client.get("/v1/nothing"), 404)["code"] == "not_found"
    assert assert_openai_error(client.get("/v1/completions"), 405)["code"] == "method_not_allowed"


def test_correlation_id_echoed_or_replaced_on_every_response():
    client = client_for()
    good = "abc-123"
    assert client.get("/health", headers={"X-Correlation-Id": good}).headers["x-correlation-id"] == good
    bad = client.get("/health", headers={"X-Correlation-Id": "bad id!"}).headers["x-correlation-id"]
    assert str(uuid.UUID(bad)) == bad and uuid.UUID(bad).version == 4
    too_long = "a" * 65
    assert client.get("/health", headers={"X-Correlation-Id": too_long}).headers["x-correlation-id"] != too_long
    error = client.post("/v1/completions", json={"prompt": "a", "n": 0}, headers={"X-Correlation-Id": good})
    assert error.status_code == 400 and error.headers["x-correlation-id"] == good
    generated = client.get("/v1/nothing").headers["x-correlation-id"]
    assert uuid.UUID(generated)


def test_correlation_id_reaches_the_engine_and_logs():
    import io
    engine = FakeEngine()
    stream = io.StringIO()
    log.configure(stream=stream)
    try:
        client_for(engine).post("/v1/completions", json={"prompt": "a", "max_tokens": 1},
                                headers={"X-Correlation-Id": "corr-1"})
    finally:
        import sys
        log.configure(stream=sys.stderr)
    assert engine.calls[0].correlation_id == "corr-1"
    lines = [line for line in stream.getvalue().splitlines() if '"completion_request"' in line]
    assert '"correlation_id":"corr-1"' in lines[0] and '"request_id":"cmpl-' in lines[0]


def test_api_key_guards_api_but_not_health_or_metrics():
    client = client_for(api_key="sekret")
    error = assert_openai_error(client.post("/v1/completions", json={"prompt": "a"}), 401)
    assert error["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/tokenize", json={"prompt": "a"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/models").headers["x-correlation-id"]


def test_unexpected_exception_is_500_openai_shape_and_server_keeps_serving():
    class ExplodingEngine(FakeEngine):
        def health(self):
            raise RuntimeError("kaboom")

    client = client_for(ExplodingEngine())
    response = client.get("/health")
    error = assert_openai_error(response, 500)
    assert error["type"] == "server_error" and "kaboom" not in error["message"]
    assert response.headers["x-correlation-id"]
    assert client.get("/v1/models").status_code == 200
