"""A KV pool too small for everything running: preemption, same tokens, and a 400 for the
request that could never fit.

The pool is 8 MiB = 22 blocks of 16 tokens (368,640 bytes each for SmolLM2). Eight prompts of
47 tokens take 3 blocks each: seven are admitted (21 blocks) and each needs a 4th block by its
second generated token, which only preempting the newest ones can provide. Every request must
still finish with exactly the text it produces alone.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from runtime_support import assert_healthy_and_idle, completion_text, metric_value, start_runtime_server
from server_process import stop_server
from testdata import xfail_unless_batch_invariant

pytestmark = pytest.mark.e2e

NUM_REQUESTS = 8
PROMPT_TOKENS = 47  # 3 blocks; the 2nd generated token needs a 4th
TEXT = ("Far to the north, where the pines give way to bare stone, a narrow road climbs toward a "
        "monastery that few travellers have ever seen, and the monks there keep bees, copy old "
        "books by candlelight, and ring a bronze bell at every hour of the day and night. ") * 4


@pytest.fixture(scope="module")
def small_pool_server(smollm2_gguf, tmp_path_factory):
    running = start_runtime_server(smollm2_gguf, tmp_path_factory.mktemp("preemption"),
                                   ("--block-size", "16", "--kv-cache-memory", "8MiB"))
    try:
        yield running
    finally:
        code = stop_server(running)
    assert code == 0, running.log_tail()


@xfail_unless_batch_invariant
def test_small_pool_preempts_and_every_request_matches_its_solo_run(small_pool_server):
    with httpx.Client(base_url=small_pool_server.url, timeout=300.0) as http:
        health = http.get("/health").json()
        assert health["kv_blocks_total"] == 22 and health["kv_block_size"] == 16
        ids = http.post("/tokenize", json={"prompt": TEXT, "add_special_tokens": False}).json()["tokens"]
        bodies = [{"prompt": ids[5 * i:5 * i + PROMPT_TOKENS], "max_tokens": 8, "ignore_eos": True,
                   "temperature": 0} for i in range(NUM_REQUESTS)]
        # Token-id prompts at different offsets: distinct from their first block on.
        assert len({tuple(b["prompt"]) for b in bodies}) == NUM_REQUESTS
        assert all(len(b["prompt"]) == PROMPT_TOKENS for b in bodies)
        solo = [completion_text(http, body) for body in bodies]
        assert metric_value(http, "cupyserve:num_preemptions_total") == 0

        with ThreadPoolExecutor(NUM_REQUESTS) as pool:
            together = list(pool.map(lambda body: completion_text(http, body), bodies))

        assert metric_value(http, "cupyserve:num_preemptions_total") > 0
        assert together == solo
        assert all(reason == "length" for _, reason in together)
        assert_healthy_and_idle(small_pool_server, http)


def test_request_that_cannot_fit_alone_gets_400_naming_the_limit(small_pool_server):
    with httpx.Client(base_url=small_pool_server.url, timeout=60.0) as http:
        # 300 + 100 tokens need 25 blocks; the whole pool is 22.
        response = http.post("/v1/completions", json={"prompt": [300] * 300, "max_tokens": 100})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "25 KV blocks" in error["message"] and "22 blocks of 16 tokens" in error["message"]
        assert_healthy_and_idle(small_pool_server, http)
