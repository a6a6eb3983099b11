"""Models, health, metrics, tokenize/detokenize, correlation ids, and invalid requests."""
from __future__ import annotations

import pytest

from testdata import backend_under_test

pytestmark = pytest.mark.e2e


def test_models(openai_client, http, server):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [server.model]
    card = http.get("/v1/models").json()["data"][0]
    assert card["object"] == "model" and card["max_model_len"] == 2048
    assert card["family"] == "llama" and card["device"] == backend_under_test() and card["quant_kind"].startswith("Q4_1")


def test_health_fields(http, server):
    body = http.get("/health").json()
    assert body["status"] == "ok" and body["model"] == server.model
    for key in ("family", "quant_kind", "device", "kv_blocks_total", "kv_blocks_free",
                "tokenizer_kind", "vocab_size", "context_length", "uptime_seconds"):
        assert key in body, key
    assert body["device"] == backend_under_test() and body["family"] == "llama"


def test_metrics_exposition(http):
    response = http.get("/metrics")
    assert response.status_code == 200 and "# TYPE" in response.text


def test_tokenize_detokenize_round_trip(http):
    text = "Hello world, héllo 🌍!"
    body = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] == 2048
    assert http.post("/detokenize", json={"tokens": body["tokens"]}).json()["prompt"] == text


def test_correlation_id_echoed(http):
    assert http.get("/health", headers={"X-Correlation-Id": "e2e-123"}).headers["x-correlation-id"] == "e2e-123"
    assert http.get("/v1/nope").headers["x-correlation-id"]


INVALID = [
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400),
    ("/v1/completions", {"prompt": "a", "temperature": 3}, 400),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400),
    ("/v1/completions", {"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, 400),
    ("/v1/completions", {"prompt": "a", "logprobs": 9}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": 4000}, 400),
    ("/v1/completions", {"prompt": "a" * 40000}, 400),
    ("/v1/completions", {"prompt": "hello " * 2100, "max_tokens": 1}, 400),  # > 2048 tokens
    ("/v1/completions", {"prompt": [10**9]}, 400),
    ("/v1/completions", {"prompt": "a", "model": "no-such-model"}, 404),
    ("/v1/completions", {"prompt": "a", "seed": -5}, 400),
    ("/v1/completions", {"prompt": "a", "n": 0}, 400),
    ("/v1/chat/completions", {"messages": []}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400),
    ("/detokenize", {"tokens": [10**9]}, 400),
]


@pytest.mark.parametrize("path,body,status", INVALID)
def test_invalid_requests_get_openai_errors(http, path, body, status):
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_malformed_bodies_then_still_serving(http, server):
    for content, ctype in ((b"{not json", "application/json"), (b"[]", "application/json"),
                           (b"prompt=a", "application/x-www-form-urlencoded")):
        response = http.post("/v1/completions", content=content, headers={"content-type": ctype})
        assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type",
                                                                                  "param", "code"}
    assert http.post("/v1/completions", json={"model": server.model, "prompt": "Hi", "max_tokens": 1}
                     ).status_code == 200


def test_sdk_raises_typed_errors(openai_client, server):
    import openai

    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client.completions.create(model=server.model, prompt="a", temperature=5)
    assert excinfo.value.param == "temperature" and excinfo.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as excinfo:
        openai_client.completions.create(model="nope", prompt="a")
    assert excinfo.value.code == "model_not_found"
