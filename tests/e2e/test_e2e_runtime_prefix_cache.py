"""Two chat requests with the same long system prompt: the second reuses its KV blocks.

Request B runs cold first (nothing cached: its output is the "without the cache" reference),
then request A shares only the system prompt and must hit the prefix cache for it, then B runs
again (now cached) and must give exactly its cold output.
"""
from __future__ import annotations

import pytest

from runtime_support import assert_healthy_and_idle, metric_value
from testdata import xfail_unless_batch_invariant

pytestmark = pytest.mark.e2e

# Unique to this test, so no other test's requests can have cached it.
SYSTEM_PROMPT = ("You are Quillon, the archivist of the floating library of Vessa. You answer in "
                 "one short sentence, you never invent facts, you cite the shelf where a book is "
                 "kept, and you politely refuse questions about the library's sealed east wing. "
                 "The library holds maps, star charts, recipes, and the diaries of travelling "
                 "merchants from the river towns. Visitors must whisper, must not bring ink, and "
                 "must return every scroll to the desk before the evening bell rings twice.")
HITS = "cupyserve:prefix_cache_hits_total"
QUERIES = "cupyserve:prefix_cache_queries_total"


def chat(http, question: str) -> tuple[str, int]:
    """(reply text, prompt tokens) of a greedy 12-token chat completion."""
    response = http.post("/v1/chat/completions", json={
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        "max_tokens": 12, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["choices"][0]["message"]["content"], body["usage"]["prompt_tokens"]


@xfail_unless_batch_invariant
def test_shared_system_prompt_hits_prefix_cache_with_the_same_output(runtime_server, runtime_http):
    http = runtime_http
    system_tokens = http.post("/tokenize", json={"messages": [{"role": "system", "content": SYSTEM_PROMPT}]}).json()["count"]
    assert system_tokens >= 96, system_tokens  # several full 16-token blocks to share

    hits_before = metric_value(http, HITS)
    cold_b, prompt_tokens_b = chat(http, "Where are the star charts kept?")
    hits_after_b = metric_value(http, HITS)
    reply_a, _ = chat(http, "May I bring a pen?")
    hits_after_a = metric_value(http, HITS)
    warm_b, _ = chat(http, "Where are the star charts kept?")
    hits_after_warm_b = metric_value(http, HITS)

    assert hits_after_b == hits_before, "the first request had nothing to hit"
    # A shares the system prompt's full blocks (at least all but the last partial one).
    assert hits_after_a - hits_after_b >= (system_tokens // 16 - 1) * 16
    # B again: everything but its last token's block comes from the cache.
    assert hits_after_warm_b - hits_after_a >= (prompt_tokens_b - 1) // 16 * 16
    assert metric_value(http, QUERIES) >= hits_after_warm_b
    assert warm_b == cold_b and cold_b
    assert reply_a != cold_b
    assert_healthy_and_idle(runtime_server, http)
