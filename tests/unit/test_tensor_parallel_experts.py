"""Expert parallelism for gpt-oss: the NumPy expert-range MoE op against the full op, the
sharder's expert rules on the committed synthetic MXFP4 file, and TP=2 (two processes, pipe
collectives) against TP=1 through the engine; on two GPUs (marked gpu, skipped elsewhere) the same
comparison on the cuda backend (NCCL, the CUDA expert-range op of kernels/cuda/moe.py).

Tolerances (docs/tensor_parallel.md): TP=2 computes the same products but adds the per-rank
halves of every attn_output product and of every token's k expert terms after the fact, a float32
summation-order change (~1e-7 relative). The experts are MXFP4, whose activations are rounded to
8 bits (q8_32) as llama.cpp does, and top-k routing is discontinuous, so such a change can move a
rounding or a near-tied routing choice downstream. The bars are the project's for two correct
implementations of one model (docs/fidelity.md: chosen-token error mean < 0.1, top-5 mean < 0.15;
on this very fixture llama.cpp's own flash-attention on/off top-5 spread is 0.147,
docs/families.md), greedy tokens equal until the first step whose top-2 gap is under 0.25 nats,
and no error above 1 nat (a wrong expert shard is off by several).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.cpu_ops import CpuOps
from cupyserve.kernels.reference import moe
from cupyserve.runtime.engine import LLMEngine
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.parallel.block_slicing import ShardingError
from cupyserve.runtime.parallel.rank_model import plan_for_file
from cupyserve.runtime.parallel.rank_shard import RankShard
from cupyserve.runtime.parallel.sharded_gguf import ShardedGGUFFile
from cupyserve.runtime.parallel.tensor_parallel_model import TensorParallelModel
from cupyserve.runtime.sampling_params import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))
from make_synthetic_gpt_oss_gguf import FIXTURE as GPT_OSS  # noqa: E402  (the committed file)
from testdata import require_gpu  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
MAX_TOKENS = 8
NEAR_TIE_NATS = 0.25  # llama.cpp's own top-2 gap reproducibility (docs/fidelity.md)
MAX_MEAN_CHOSEN_ERROR = 0.1  # docs/fidelity.md
MAX_MEAN_TOP5_ERROR = 0.15  # docs/fidelity.md; llama.cpp FA on/off on this fixture: 0.147
MAX_LOGPROB_ERROR = 1.0
MIN_STEPS_COMPARED = 6  # of the 2 x 8 greedy steps


# ---- the expert-range reference op ------------------------------------------------------------

def random_experts(rng, num_experts: int, out_features: int, in_features: int) -> moe.ExpertWeights:
    """F32 experts kept as raw bytes, the layout `load_experts` takes from a GGUF."""
    dense = rng.standard_normal((num_experts, out_features, in_features)).astype(np.float32) * 0.2
    return moe.load_experts(dense.view(np.uint8), T.F32, num_experts, out_features, in_features)


def expert_slice(weights: moe.ExpertWeights, begin: int, end: int) -> moe.ExpertWeights:
    return moe.ExpertWeights(weights.raw[begin:end], weights.ggml_type, end - begin,
                             weights.out_features, weights.in_features)


@pytest.mark.parametrize("world_size", [2, 3, 6])
def test_expert_ranges_sum_to_the_full_op(world_size: int) -> None:
    rng = np.random.default_rng(7)
    num_tokens, hidden, ffn, num_experts, k = 9, 32, 16, 6, 3
    x = rng.standard_normal((num_tokens, hidden)).astype(np.float32)
    logits = rng.standard_normal((num_tokens, num_experts)).astype(np.float32)
    gate, up = (random_experts(rng, num_experts, ffn, hidden) for _ in range(2))
    down = random_experts(rng, num_experts, hidden, ffn)
    biases = [rng.standard_normal((num_experts, w)).astype(np.float32) for w in (ffn, ffn, hidden)]
    full = moe.moe_ffn(x, logits, gate, biases[0], up, biases[1], down, biases[2], k)
    size = num_experts // world_size
    partials = []
    for begin in range(0, num_experts, size):
        end = begin + size
        partials.append(moe.moe_ffn(
            x, logits, expert_slice(gate, begin, end), biases[0][begin:end],
            expert_slice(up, begin, end), biases[1][begin:end],
            expert_slice(down, begin, end), biases[2][begin:end], k, expert_range=(begin, end)))
    # Each token's k terms are summed in another grouping: float32 summation order only.
    np.testing.assert_allclose(np.sum(partials, axis=0), full, rtol=1e-5, atol=1e-5)
    # A range whose experts no token chose contributes exact zeros, not its biases.
    chosen = set(np.argsort(-logits, axis=1, kind="stable")[:, :k].ravel().tolist())
    for index, begin in enumerate(range(0, num_experts, size)):
        if not chosen & set(range(begin, begin + size)):
            assert not partials[index].any()


def test_full_range_is_the_default_op_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    args = [random_experts(rng, 4, 16, 32), None, random_experts(rng, 4, 16, 32), None,
            random_experts(rng, 4, 32, 16), None, 2]
    np.testing.assert_array_equal(moe.moe_ffn(x, logits, *args, expert_range=(0, 4)),
                                  moe.moe_ffn(x, logits, *args))


def test_expert_range_must_match_the_tensors() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    logits = rng.standard_normal((2, 6)).astype(np.float32)
    args = [random_experts(rng, 3, 16, 32), None, random_experts(rng, 3, 16, 32), None,
            random_experts(rng, 3, 32, 16), None, 2]
    with pytest.raises(ValueError, match=r"holds 2 experts but the expert tensors hold 3"):
        moe.moe_ffn(x, logits, *args, expert_range=(0, 2))
    with pytest.raises(ValueError, match=r"non-empty part of 0..6"):
        moe.moe_ffn(x, logits, *args, expert_range=(4, 7))
    with pytest.raises(ValueError, match=r"router_logits must be \[2, 3\]"):
        moe.moe_ffn(x, logits, *args)  # without a range the tensors must hold every expert


# ---- the sharder on the synthetic gpt-oss file --------------------------------------------------

def test_each_rank_loads_only_its_experts() -> None:
    gguf = GGUFFile.open(GPT_OSS)
    config, family, plans = plan_for_file(gguf, 2)
    assert [p.experts for p in plans] == [(0, 3), (3, 6)]
    assert [p.q_heads for p in plans] == [(0, 2), (2, 4)]
    for plan in plans:
        view = ShardedGGUFFile(gguf, family, config, RankShard(plan, communicator=None))
        begin, end = plan.experts
        for role in ("gate", "up", "down"):
            name = f"blk.1.ffn_{role}_exps.weight"
            whole = gguf.raw(name).reshape(6, -1)
            assert view.tensors[name].shape == (3, *gguf.tensors[name].shape[1:])
            local = view.raw(name)
            assert np.shares_memory(local, gguf.raw(name))  # a view of the memory map, still MXFP4
            np.testing.assert_array_equal(local.reshape(3, -1), whole[begin:end])
            bias = f"blk.1.ffn_{role}_exps.bias"
            np.testing.assert_array_equal(view.array(bias), gguf.array(bias)[begin:end])
        np.testing.assert_array_equal(view.array("blk.0.attn_sinks.weight"),
                                      gguf.array("blk.0.attn_sinks.weight")[slice(*plan.q_heads)])
        for replicated in ("blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_inp.bias",
                           "blk.0.attn_output.bias"):
            assert view.tensors[replicated] is gguf.tensors[replicated]


def test_expert_count_not_divisible_fails_at_startup() -> None:
    """6 experts over 4 ranks (the heads split: 2 KV heads, each on 2 ranks)."""
    with pytest.raises(ShardingError, match="6 experts cannot be split evenly over 4 ranks"):
        plan_for_file(GGUFFile.open(GPT_OSS), 4)


def visible_gpus() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, or no driver
        return 0


def test_expert_parallel_on_cuda_passes_the_startup_checks() -> None:
    """The CUDA MoE op takes an expert sub-range, so `--device cuda` with a MoE file at TP=2 is no
    longer refused by the sharding checks: without 2 GPUs it stops only at the GPU check (CuPy
    missing, or too few GPUs). An unsplittable expert count is still refused on cuda, before CuPy."""
    gguf = GGUFFile.open(GPT_OSS)
    with pytest.raises(ShardingError, match="6 experts cannot be split evenly over 4 ranks"):
        TensorParallelModel(gguf, CpuOps(), "cuda", 4)
    if visible_gpus() >= 2:
        pytest.skip("2 GPUs visible: test_gpt_oss_tp2_on_two_gpus_matches_tp1 runs this model")
    with pytest.raises((ImportError, ValueError, RuntimeError)) as info:
        TensorParallelModel(gguf, CpuOps(), "cuda", 2)
    assert not isinstance(info.value, ShardingError), info.value
    message = str(info.value).lower()
    assert any(word in message for word in ("cupy", "cuda", "gpu")), info.value


# ---- TP=2 against TP=1 through the engine ------------------------------------------------------

def generate(path, tensor_parallel_size: int, device: str = "cpu") -> tuple[dict[str, list], list[int]]:
    """Greedy tokens with top-5 logprobs, both prompts batched together; weight bytes per rank."""
    engine = LLMEngine(EngineArgs(model=str(path), device=device, max_model_len=128, max_num_seqs=4,
                                  kv_cache_memory=8 << 20, enable_prefix_caching=False,
                                  tensor_parallel_size=tensor_parallel_size))
    try:
        for index, prompt in enumerate(PROMPTS):
            ids = engine.tokenizer.encode(prompt, add_special_tokens=True, parse_special=False)
            engine.add_request(str(index), ids, SamplingParams(
                max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True))
        steps: dict[str, list] = {str(i): [] for i in range(len(PROMPTS))}
        while engine.has_unfinished():
            for out in engine.step():
                assert out.error is None, out.error
                steps[out.request_id].extend(out.logprobs)
        return steps, getattr(engine.model, "num_weight_bytes_per_rank", [engine.model.num_weight_bytes])
    finally:
        engine.close()


def test_gpt_oss_tp2_matches_tp1(monkeypatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # the spawned worker: one BLAS thread
    assert_tp2_matches_tp1(generate(GPT_OSS, 1), generate(GPT_OSS, 2), "cpu")


@pytest.mark.gpu
def test_gpt_oss_tp2_on_two_gpus_matches_tp1() -> None:
    """The same walk and bars on the cuda backend: each GPU holds 3 of the 6 experts and runs
    the CUDA expert-range op (decode steps take the GEMV, larger prefill batches the grouped
    GEMM); NCCL all-reduces the partial outputs."""
    require_gpu()
    if visible_gpus() < 2:
        pytest.skip("needs 2 GPUs")
    assert_tp2_matches_tp1(generate(GPT_OSS, 1, "cuda"), generate(GPT_OSS, 2, "cuda"), "cuda")


def assert_tp2_matches_tp1(single_run, parallel_run, device: str) -> None:
    (single, (whole_bytes,)), (parallel, rank_bytes) = single_run, parallel_run
    # Each rank loads half the experts and attention plus the replicated router, norms and o bias.
    assert len(rank_bytes) == 2 and all(b < 0.52 * whole_bytes for b in rank_bytes), \
        (rank_bytes, whole_bytes)
    num_compared, chosen, top5 = 0, [], []
    for request_id, steps in single.items():
        assert len(parallel[request_id]) == len(steps) == MAX_TOKENS
        for ref, got in zip(steps, parallel[request_id]):
            assert got.token_id == ref.token_id, (request_id, num_compared)
            chosen.append(abs(got.logprob - ref.logprob))
            ref_top, got_top = dict(ref.top), dict(got.top)
            top5.extend(abs(ref_top[t] - got_top[t]) for t in ref_top if t in got_top)
            num_compared += 1
            if ref.top[0][1] - ref.top[1][1] < NEAR_TIE_NATS:
                break  # past a near tie the two paths may rightly diverge
    print(f"gpt-oss {device} TP=2 vs TP=1: {num_compared} steps, chosen-token error mean "
          f"{np.mean(chosen):.5f}, top-5 error mean {np.mean(top5):.5f} max {max(top5):.5f}")
    assert num_compared >= MIN_STEPS_COMPARED
    assert np.mean(chosen) < MAX_MEAN_CHOSEN_ERROR, np.mean(chosen)
    assert np.mean(top5) < MAX_MEAN_TOP5_ERROR and max(top5) < MAX_LOGPROB_ERROR, \
        (np.mean(top5), max(top5))
