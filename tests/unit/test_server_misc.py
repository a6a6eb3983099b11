"""Models, health, metrics, tokenize/detokenize and cancel against the fake engine."""
from __future__ import annotations

import threading
import time

from test_server_fake_engine import FakeEngine, assert_openai_error, client_for


def test_models_list_and_single():
    client = client_for(model_aliases=["alias"])
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == "fake-model" and card["object"] == "model" and card["owned_by"]
    assert isinstance(card["created"], int) and card["max_model_len"] == 64
    assert client.get("/v1/models/alias").json()["id"] == "alias"
    assert assert_openai_error(client.get("/v1/models/nope"), 404)["code"] == "model_not_found"


def test_health_merges_engine_fields_and_reports_shutdown():
    engine = FakeEngine()
    client = client_for(engine)
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "fake-model"
    assert body["kv_blocks_total"] == 10 and body["uptime_seconds"] >= 0
    engine.accepting = False
    response = client.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "shutting_down"


def test_metrics_is_prometheus_text():
    response = client_for().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# HELP" in response.text or "# TYPE" in response.text or response.text == ""


def test_tokenize_detokenize_round_trip():
    client = client_for()
    body = client.post("/tokenize", json={"prompt": "ab"}).json()
    assert body == {"tokens": [0, 100, 101], "count": 3, "max_model_len": 64}
    body = client.post("/tokenize", json={"prompt": "ab", "add_special_tokens": False}).json()
    assert body["tokens"] == [100, 101]
    assert client.post("/detokenize", json={"tokens": [100, 101]}).json() == {"prompt": "ab"}
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "a"}]}).json()
    assert chat["tokens"][0] == 0 and chat["count"] == len(chat["tokens"])


def test_tokenize_detokenize_errors():
    client = client_for()
    assert_openai_error(client.post("/tokenize", json={}), 400, "prompt")
    assert_openai_error(client.post("/tokenize", json={"prompt": 5}), 400, "prompt")
    assert_openai_error(client.post("/detokenize", json={"tokens": [1, 256]}), 400, "tokens")
    assert_openai_error(client.post("/detokenize", json={"tokens": "ab"}), 400, "tokens")
    assert_openai_error(client.post("/detokenize", json={"tokens": [-1]}), 400, "tokens")


def test_cancel_aborts_every_choice_and_is_idempotent():
    engine = FakeEngine(step_delay_s=0.05, reply="x" * 100, max_model_len=256)
    with client_for(engine) as client:  # one event loop shared by both threads' requests
        _cancel_while_running(client, engine)


def _cancel_while_running(client, engine):
    result = {}

    def run():
        result["response"] = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 100, "n": 2})

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 5
    while len(engine.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    completion_id = engine.calls[0].request_id.rsplit("-", 1)[0]
    response = client.post("/v1/cancel", json={"id": completion_id})
    assert response.status_code == 202
    thread.join(10)
    body = result["response"].json()
    assert [c["finish_reason"] for c in body["choices"]] == ["cancelled", "cancelled"]
    assert sorted(engine.aborted) == sorted(c.request_id for c in engine.calls)
    assert client.post("/v1/cancel", json={"id": completion_id}).status_code == 202
    assert assert_openai_error(client.post("/v1/cancel", json={"id": "cmpl-unknown"}), 404)["code"] \
        == "completion_not_found"
    assert_openai_error(client.post("/v1/cancel", json={}), 400, "id")
