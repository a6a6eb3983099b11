"""Harmony reasoning output through the HTTP layer (fake engine, one character per step, so every
control token arrives split across many stream chunks): `reasoning_content` and `content` in the
message and as stream deltas, a reply cut by max_tokens, `reasoning_effort` reaching the
template, and models without a reasoning format left exactly as they were."""
from __future__ import annotations

import orjson
import pytest

from cupyserve.runtime.paths import configs_dir
from cupyserve.runtime.reasoning import HARMONY_TOKENS

from test_server_fake_engine import FakeEngine, assert_openai_error, client_for, sse_payloads

HARMONY_TEMPLATE = (configs_dir() / "chat_templates" / "harmony.jinja").read_text(encoding="utf-8")
REASONING = "User asks 2+2. Answer 4."
CONTENT = "2 + 2 = 4."
REPLY = (f"<|channel|>analysis<|message|>{REASONING}<|end|>"
         f"<|start|>assistant<|channel|>final<|message|>{CONTENT}")
MESSAGES = [{"role": "user", "content": "2+2?"}]


def harmony_engine(reply: str = REPLY) -> FakeEngine:
    engine = FakeEngine(reply=reply, max_model_len=1024)
    engine.tokenizer.chat_template = HARMONY_TEMPLATE
    return engine


def post(client, **body):
    return client.post("/v1/chat/completions", json={"messages": MESSAGES, **body})


def stream_chunks(client, **body) -> list[dict]:
    response = post(client, stream=True, **body)
    assert response.status_code == 200, response.text
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    return [orjson.loads(p) for p in payloads[:-1]]


def joined(chunks: list[dict], key: str) -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"])


def assert_no_control_tokens(*texts: str) -> None:
    for text in texts:
        for token in HARMONY_TOKENS:
            assert token not in text, (token, text)


def test_message_splits_reasoning_from_content():
    body = post(client_for(harmony_engine()), max_tokens=200).json()
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": CONTENT, "reasoning_content": REASONING}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(REPLY) + 1  # one token per character + EOS


def test_stream_deltas_split_reasoning_from_content():
    chunks = stream_chunks(client_for(harmony_engine()), max_tokens=200)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    assert joined(chunks, "reasoning_content") == REASONING and joined(chunks, "content") == CONTENT
    assert_no_control_tokens(*(d.get("reasoning_content") or "" for d in deltas),
                             *(d.get("content") or "" for d in deltas))
    kinds = [k for d in deltas for k in d if d[k]]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning_content"), "reasoning comes first"
    assert len(kinds) >= len(REASONING) + len(CONTENT) - 2, "deltas stream as the text arrives"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("max_tokens", [1, 5, 11, 30, 40, len(REPLY) - len(CONTENT) - 3,
                                        len(REPLY) - len(CONTENT), len(REPLY) - 3])
def test_a_reply_cut_by_max_tokens_leaks_no_framing(max_tokens):
    message = post(client_for(harmony_engine()), max_tokens=max_tokens).json()["choices"][0]["message"]
    chunks = stream_chunks(client_for(harmony_engine()), max_tokens=max_tokens)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    reasoning, content = joined(chunks, "reasoning_content"), joined(chunks, "content")
    assert (reasoning, content) == (message["reasoning_content"] or "", message["content"])
    assert "<|" not in reasoning + content, "not even part of a control token"
    assert REASONING.startswith(reasoning) and CONTENT.startswith(content)
    cut = REPLY[:max_tokens]
    if "<|end|>" in cut:
        assert reasoning == REASONING
    if cut.count("<|message|>") < 2:
        assert content == "", "no final channel yet: no content"
    else:
        assert content == cut.rsplit("<|message|>", 1)[1]


def test_final_channel_missing_entirely():
    reply = f"<|channel|>analysis<|message|>{REASONING}<|end|>"
    message = post(client_for(harmony_engine(reply)), max_tokens=200).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "", "reasoning_content": REASONING}


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_reasoning_effort_reaches_the_template(effort):
    engine = harmony_engine()
    assert post(client_for(engine), max_tokens=1, reasoning_effort=effort).status_code == 200
    prompt = engine.tokenizer.decode(engine.calls[0].prompt_ids, skip_special_tokens=False)
    assert f"\nReasoning: {effort}\n" in prompt
    assert prompt.endswith("<|start|>user<|message|>2+2?<|end|><|start|>assistant")


def test_reasoning_effort_defaults_to_medium_in_the_template():
    engine = harmony_engine()
    post(client_for(engine), max_tokens=1)
    assert "\nReasoning: medium\n" in engine.tokenizer.decode(engine.calls[0].prompt_ids)


@pytest.mark.parametrize("effort", ["extreme", "", "HIGH", 3, ["low"]])
def test_bad_reasoning_effort_is_400(effort):
    engine = harmony_engine()
    assert_openai_error(post(client_for(engine), max_tokens=1, reasoning_effort=effort), 400,
                        param="reasoning_effort")
    assert engine.calls == []


def test_models_without_a_reasoning_format_are_unchanged():
    engine = FakeEngine(reply=REPLY, max_model_len=1024)  # ChatML-like template, no <|channel|>
    client = client_for(engine)
    message = post(client, max_tokens=200).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": REPLY}
    chunks = stream_chunks(client, max_tokens=200)
    assert joined(chunks, "content") == REPLY and joined(chunks, "reasoning_content") == ""
    assert client.get("/health").json()["reasoning_format"] is None
    assert client_for(harmony_engine()).get("/health").json()["reasoning_format"] == "harmony"
