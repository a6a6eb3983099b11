"""`cupyserve bench serving` against the real server: every streamed token is counted, and the
latency percentiles come from real timings."""
from __future__ import annotations

import json
import math

import pytest

from cupyserve.runtime import bench

pytestmark = pytest.mark.e2e


def test_serving_bench_reports_every_token_and_latency(server, tmp_path, capsys):
    out = tmp_path / "serving.json"
    code = bench.main(["serving", "--url", server.url, "--concurrency", "1,3", "--num-requests", "3",
                       "--prompt-len", "8", "--gen-len", "4", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["concurrency"] for r in report["results"]] == [1, 3]
    for level in report["results"]:
        assert level["num_requests"] == 3
        assert level["num_output_tokens"] == 3 * 4  # ignore_eos: every request streams gen_len tokens
        assert 0 < level["ttft_ms_p50"] <= level["ttft_ms_p99"]
        assert 0 < level["itl_ms_p50"] <= level["itl_ms_p99"] and math.isfinite(level["itl_ms_p99"])
        assert level["output_tokens_per_s"] > 0
    assert "ttft p50" in capsys.readouterr().out


def test_serving_bench_fails_loudly_on_a_rejected_request(server):
    """A request the server rejects (an unknown model) is an error, not a fast empty sample."""
    with pytest.raises(RuntimeError, match="HTTP 404"):
        bench.main(["serving", "--url", server.url, "--model", "no-such-model", "--concurrency", "1",
                    "--num-requests", "1", "--prompt-len", "4", "--gen-len", "2"])
