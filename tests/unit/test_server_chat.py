"""/v1/chat/completions against the fake engine: template rendering, shapes, streaming, limits."""
from __future__ import annotations

import orjson
import pytest

from test_server_fake_engine import FakeEngine, assert_openai_error, client_for, sse_payloads

MESSAGES = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]


def post(client, **body):
    return client.post("/v1/chat/completions", json={"model": "fake-model", "messages": MESSAGES, **body})


def test_chat_renders_template_once_with_bos_and_returns_shape():
    engine = FakeEngine()
    body = post(client_for(engine), max_tokens=5).json()
    # The template writes {{ bos_token }} itself, so the tokenizer must not add a second one.
    ids = engine.calls[0].prompt_ids
    assert ids[0] == 0 and ids.count(0) == 1
    assert engine.tokenizer.decode(ids, skip_special_tokens=False) == "<s><system>S\n<user>Hi\n<assistant>"
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "hello"}
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == 5


def test_chat_bos_added_when_template_lacks_it():
    engine = FakeEngine()
    engine.tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    post(client_for(engine), max_tokens=1)
    assert engine.calls[0].prompt_ids[0] == 0


def test_text_parts_joined_and_default_max_tokens_fills_context():
    engine = FakeEngine(max_model_len=64)
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    client_for(engine).post("/v1/chat/completions", json={"messages": messages})
    prompt = engine.tokenizer.decode(engine.calls[0].prompt_ids, skip_special_tokens=False)
    assert "<user>a\nb\n" in prompt
    assert engine.calls[0].params.max_tokens == 64 - len(engine.calls[0].prompt_ids)


def test_max_completion_tokens_wins_over_max_tokens():
    engine = FakeEngine()
    post(client_for(engine), max_tokens=3, max_completion_tokens=2)
    assert engine.calls[0].params.max_tokens == 2


def test_chat_logprobs_shape():
    engine = FakeEngine()
    body = post(client_for(engine), max_tokens=2, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["h", "e"]
    first = content[0]
    assert first["logprob"] == -0.25 and first["bytes"] == [ord("h")]
    assert len(first["top_logprobs"]) == 3
    assert set(first["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    assert engine.calls[0].params.logprobs == 3


def test_chat_logprobs_true_without_top_logprobs():
    body = post(client_for(), max_tokens=1, logprobs=True).json()
    assert body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []


def test_chat_streaming_role_first_then_content_then_finish_and_usage():
    client = client_for()
    with client.stream("POST", "/v1/chat/completions",
                       json={"messages": MESSAGES, "max_tokens": 3, "stream": True, "n": 2,
                             "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        payloads = sse_payloads(response.read().decode())
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == "hel"
        assert mine[-1]["finish_reason"] == "length"
        assert all(c["finish_reason"] is None for c in mine[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": MESSAGES, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": MESSAGES, "logprobs": 1}, "logprobs"),
    ({"messages": MESSAGES, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": MESSAGES, "max_tokens": 500}, "max_tokens"),
    ({"messages": MESSAGES, "temperature": -1}, "temperature"),
    ({"messages": MESSAGES, "n": 100}, "n"),
    ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
    ({"messages": MESSAGES, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x" * 70}]}, "messages"),
])
def test_invalid_chat_requests(body, param):
    error = assert_openai_error(client_for().post("/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_broken_template_is_400():
    engine = FakeEngine()
    engine.tokenizer.chat_template = "{% for m in messages %}"
    assert_openai_error(post(client_for(engine), max_tokens=1), 400, "messages")


def test_assistant_null_content_allowed():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": None},
                {"role": "user", "content": "b"}]
    response = client_for().post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
    assert response.status_code == 200, response.text
