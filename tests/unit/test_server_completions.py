"""/v1/completions against the fake engine: shapes, batching, n, seeds, echo, logprobs, limits."""
from __future__ import annotations

import orjson
import pytest

from cupyserve.runtime.outputs import EngineError
from test_server_fake_engine import FakeEngine, assert_openai_error, client_for, sse_payloads


def post(client, **body):
    return client.post("/v1/completions", json={"model": "fake-model", **body})


def test_basic_completion_shape_and_usage():
    engine = FakeEngine()
    response = post(client_for(engine), prompt="Hi", max_tokens=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "fake-model" and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice == {"index": 0, "text": "hello", "logprobs": None, "finish_reason": "length",
                      "stop_reason": None}
    # "Hi" -> <s> H i
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert engine.calls[0].prompt_ids == [0, ord("H") + 3, ord("i") + 3]
    assert engine.calls[0].params.max_tokens == 5


def test_default_max_tokens_is_16_and_lowered_to_fit():
    engine = FakeEngine(max_model_len=10)
    post(client_for(engine), prompt="abc")
    assert engine.calls[0].params.max_tokens == 6  # 10 - 4 prompt tokens < 16
    engine = FakeEngine(max_model_len=100)
    post(client_for(engine), prompt="abc")
    assert engine.calls[0].params.max_tokens == 16


def test_stop_finish_reason_and_model_optional():
    response = client_for().post("/v1/completions", json={"prompt": "x", "stop": " ", "max_tokens": 20})
    choice = response.json()["choices"][0]
    assert choice["text"] == "hello" and choice["finish_reason"] == "stop" and choice["stop_reason"] == " "


def test_batch_prompts_and_n_order_choices_by_prompt_then_n():
    engine = FakeEngine()
    response = post(client_for(engine), prompt=["a", "bb"], n=2, max_tokens=2, seed=7, temperature=0.5)
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    seeds = [c.params.seed for c in engine.calls]
    assert seeds == [7, 8, 7, 8]
    assert [c.prompt_ids for c in engine.calls] == [[0, 100], [0, 100], [0, 101, 101], [0, 101, 101]]
    assert body["usage"]["prompt_tokens"] == 5  # each prompt counted once
    assert body["usage"]["completion_tokens"] == 8


def test_seed_wraps_at_u64():
    engine = FakeEngine()
    post(client_for(engine), prompt="a", n=2, seed=2**64 - 1, max_tokens=1)
    assert [c.params.seed for c in engine.calls] == [2**64 - 1, 0]


def test_token_id_prompts():
    engine = FakeEngine()
    client = client_for(engine)
    assert post(client, prompt=[10, 11, 12], max_tokens=1).status_code == 200
    assert post(client, prompt=[[10], [11, 12]], max_tokens=1).status_code == 200
    assert [c.prompt_ids for c in engine.calls] == [[10, 11, 12], [10], [11, 12]]


def test_echo_and_logprobs_with_prompt_logprobs():
    engine = FakeEngine()
    body = post(client_for(engine), prompt="ab", max_tokens=2, echo=True, logprobs=2).json()
    choice = body["choices"][0]
    assert choice["text"] == "abhe"
    lp = choice["logprobs"]
    assert lp["tokens"] == ["<s>", "a", "b", "h", "e"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == [-0.25] * 4
    assert lp["text_offset"] == [0, 3, 4, 5, 6]
    assert all(len(t) <= 3 for t in lp["top_logprobs"][1:])
    assert engine.calls[0].params.prompt_logprobs == 2 and engine.calls[0].params.logprobs == 2


def test_logprobs_zero_has_only_the_chosen_token_and_token_ids_option():
    body = post(client_for(), prompt="a", max_tokens=2, logprobs=0,
                return_tokens_as_token_ids=True).json()
    lp = body["choices"][0]["logprobs"]
    assert lp["tokens"] == [f"token_id:{ord('h') + 3}", f"token_id:{ord('e') + 3}"]
    assert lp["top_logprobs"] == [{f"token_id:{ord('h') + 3}": -0.25}, {f"token_id:{ord('e') + 3}": -0.25}]
    assert lp["text_offset"] == [0, len(f"token_id:{ord('h') + 3}")]


def test_streaming_chunks_and_usage():
    client = client_for()
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "a", "max_tokens": 3, "stream": True,
                             "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert "".join(texts) == "hel"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert len({c["id"] for c in chunks}) == 1


def test_streaming_without_usage_has_no_usage_key_and_echo_on_first_chunk():
    with client_for().stream("POST", "/v1/completions",
                             json={"prompt": "ab", "max_tokens": 2, "stream": True,
                                   "echo": True}) as response:
        payloads = sse_payloads(response.read().decode())
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["text"] == "abh"
    assert all("usage" not in c for c in chunks)


def test_streaming_n_each_choice_finishes():
    with client_for().stream("POST", "/v1/completions",
                             json={"prompt": ["a", "b"], "n": 2, "max_tokens": 2, "stream": True}) as r:
        payloads = sse_payloads(r.read().decode())
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    finished = sorted(c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"])
    assert finished == [0, 1, 2, 3]


@pytest.mark.parametrize("body,param", [
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "max_tokens": 2049}, "max_tokens"),
    ({"prompt": "a", "temperature": 2.5}, "temperature"),
    ({"prompt": "a", "temperature": "hot"}, "temperature"),
    ({"prompt": "a", "top_p": 0}, "top_p"),
    ({"prompt": "a", "top_k": -2}, "top_k"),
    ({"prompt": "a", "min_p": 1.5}, "min_p"),
    ({"prompt": "a", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "a", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "a", "frequency_penalty": -2.5}, "frequency_penalty"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "a", "stop": 5}, "stop"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "seed": 2**64}, "seed"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "n": 17}, "n"),
    ({"prompt": "a", "logprobs": 6}, "logprobs"),
    ({"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias"),
    ({"prompt": "a", "logit_bias": {"5": 101}}, "logit_bias"),
    ({"prompt": "a", "logit_bias": {"999": 1}}, "logit_bias"),
    ({"prompt": "a", "stream": "yes"}, "stream"),
    ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "a", "echo": 1}, "echo"),
    ({"prompt": "a", "min_tokens": 20, "max_tokens": 5}, "min_tokens"),
    ({"prompt": "a", "suffix": "z"}, "suffix"),
    ({"prompt": "a", "best_of": 3}, "best_of"),
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [300]}, "prompt"),
    ({"prompt": "x" * 32769}, "prompt"),
    ({"prompt": "a" * 70}, "prompt"),  # more tokens than the 64-token context
    ({"prompt": "a" * 40, "max_tokens": 40}, "max_tokens"),
    ({"prompt": "a", "max_tokens": True}, "max_tokens"),
])
def test_invalid_requests_are_400_with_param(body, param):
    error = assert_openai_error(client_for().post("/v1/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_empty_text_prompt_without_bos_is_400():
    engine = FakeEngine()
    engine.tokenizer.add_bos = False
    assert_openai_error(post(client_for(engine), prompt=""), 400, "prompt")


def test_context_length_error_code():
    error = assert_openai_error(post(client_for(), prompt="a" * 40, max_tokens=40), 400)
    assert error["code"] == "context_length_exceeded" and "64" in error["message"]


def test_unknown_model_is_404_and_alias_accepted():
    error = assert_openai_error(client_for().post("/v1/completions", json={"model": "gpt-9", "prompt": "a"}),
                                404, "model")
    assert error["code"] == "model_not_found"
    client = client_for(model_aliases=["alias"])
    assert client.post("/v1/completions", json={"model": "alias", "prompt": "a"}).status_code == 200


def test_rejection_maps_status_before_and_in_stream():
    engine = FakeEngine(reject=EngineError("too busy", "overloaded", 503))
    response = post(client_for(engine), prompt="a")
    error = assert_openai_error(response, 503)
    assert error["code"] == "overloaded" and response.headers["retry-after"]
    engine = FakeEngine(reject=EngineError("never fits", "context_length_exceeded", 400))
    response = post(client_for(engine), prompt="a", stream=True)
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"


def test_engine_error_mid_request_non_streaming_and_streaming():
    engine = FakeEngine(fail_after=2)
    error = assert_openai_error(post(client_for(engine), prompt="a", max_tokens=5), 500)
    assert error["code"] == "vram_oom"
    with client_for(engine).stream("POST", "/v1/completions",
                                   json={"prompt": "a", "max_tokens": 5, "stream": True}) as response:
        assert response.status_code == 200
        payloads = sse_payloads(response.read().decode())
    assert payloads[-1] == "[DONE]"
    last = orjson.loads(payloads[-2])
    assert last["error"]["code"] == "vram_oom"


def test_unexpected_engine_exception_is_500_and_server_keeps_serving():
    engine = FakeEngine(raise_after=1)
    client = client_for(engine)
    error = assert_openai_error(post(client, prompt="a", max_tokens=5), 500)
    assert error["code"] == "internal_error"
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "a", "max_tokens": 5, "stream": True}) as response:
        payloads = sse_payloads(response.read().decode())
    assert orjson.loads(payloads[-2])["error"]["type"] == "server_error"
    engine.raise_after = None
    assert post(client, prompt="a", max_tokens=1).status_code == 200


def test_shutting_down_is_503():
    engine = FakeEngine(accepting=False)
    error = assert_openai_error(post(client_for(engine), prompt="a"), 503)
    assert error["code"] == "shutting_down"
