"""Tensor parallel on NVIDIA GPUs (skipped without CuPy and a GPU; CI has none).

One GPU: the NCCL communicator's collectives as a single rank, and a rank's column-sliced
quantized weights loaded and multiplied by the CUDA kernels. Two GPUs or more: TP=2 on the cuda
backend gives TP=1's greedy tokens (same walk and bounds as the CPU test)."""
from __future__ import annotations

import numpy as np
import pytest

from cupyserve.kernels import get_ops
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.parallel.rank_model import plan_for_file
from cupyserve.runtime.parallel.rank_shard import RankShard
from cupyserve.runtime.parallel.sharded_gguf import ShardedGGUFFile

from testdata import require_gpu

pytestmark = pytest.mark.gpu


def test_nccl_single_rank_collectives() -> None:
    cupy = require_gpu()
    from cupyserve.runtime.parallel.nccl_communicator import NcclCommunicator, new_unique_id

    comm = NcclCommunicator(0, 1, new_unique_id())
    try:
        x = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
        np.testing.assert_array_equal(comm.all_reduce_sum(x).get(), x.get())
        np.testing.assert_array_equal(comm.all_gather(x, axis=1).get(), x.get())
        np.testing.assert_array_equal(comm.broadcast(x, root=0).get(), x.get())
        comm.barrier()
        with pytest.raises(TypeError, match="NCCL collectives"):
            comm.all_reduce_sum(cupy.zeros(2, dtype=cupy.complex64))
    finally:
        comm.close()


@pytest.mark.parametrize("role_name", ["blk.0.attn_output.weight", "blk.5.ffn_down.weight",
                                       "blk.2.attn_q.weight", "token_embd.weight"])
def test_cuda_loads_a_rank_slice_like_the_cpu(smollm2_gguf, role_name: str) -> None:
    require_gpu()
    gguf = GGUFFile.open(smollm2_gguf)
    config, family, plans = plan_for_file(gguf, 2)
    view = ShardedGGUFFile(gguf, family, config, RankShard(plans[1], communicator=None))
    info = view.tensors[role_name]
    cpu, cuda = get_ops("cpu"), get_ops("cuda")
    x = np.random.default_rng(0).standard_normal((4, info.shape[1])).astype(np.float32)
    weights = [ops.load_weight([view.raw(role_name)], [int(info.ggml_type)], info.shape[1]) for ops in (cpu, cuda)]
    expected = cpu.linear(x, weights[0])
    got = cuda.to_host(cuda.linear(cuda.upload(x), weights[1]))
    assert got.shape == expected.shape == (4, info.shape[0])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=2e-2 * scale, rtol=0)


def test_tp2_on_two_gpus_matches_tp1(smollm2_gguf) -> None:
    cupy = require_gpu()
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs 2 GPUs")
    from cupyserve.runtime.engine import LLMEngine
    from cupyserve.runtime.engine_args import EngineArgs
    from test_tensor_parallel import MIN_STEPS_COMPARED, PROMPTS, compare, generate

    results = []
    for size in (1, 2):
        engine = LLMEngine(EngineArgs(model=str(smollm2_gguf), device="cuda", max_model_len=128,
                                      max_num_seqs=4, kv_cache_memory=8 << 20,
                                      tensor_parallel_size=size))
        try:
            results.append(generate(engine, PROMPTS))
        finally:
            engine.close()
    num_compared, errors = compare(*results)
    assert num_compared >= MIN_STEPS_COMPARED
    print(f"cuda TP=2 vs TP=1: {num_compared} steps, top-5 error mean {np.mean(errors):.4f} max {max(errors):.4f}")
