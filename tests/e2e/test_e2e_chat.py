"""/v1/chat/completions on the real server (SmolLM2's own chat template)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_non_streaming_and_streaming_agree(openai_client, server):
    full = openai_client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=6,
                                                 temperature=0)
    assert full.object == "chat.completion"
    message = full.choices[0].message
    assert message.role == "assistant" and message.content
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.prompt_tokens > 5 and full.usage.completion_tokens <= 6
    stream = openai_client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=6,
                                                   temperature=0, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == [full.choices[0].finish_reason]
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_chat_prompt_matches_tokenize_messages(http, server):
    body = http.post("/v1/chat/completions", json={"model": server.model, "messages": MESSAGES,
                                                   "max_tokens": 1, "temperature": 0}).json()
    count = http.post("/tokenize", json={"messages": MESSAGES}).json()["count"]
    assert body["usage"]["prompt_tokens"] == count


def test_chat_logprobs_and_n(http, server):
    body = http.post("/v1/chat/completions", json={
        "model": server.model, "messages": MESSAGES, "max_completion_tokens": 3, "temperature": 0.7,
        "seed": 3, "n": 2, "logprobs": True, "top_logprobs": 2}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        content = choice["logprobs"]["content"]
        assert 1 <= len(content) <= 3
        for item in content:
            assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
            assert len(item["top_logprobs"]) == 2 and isinstance(item["bytes"], list)
