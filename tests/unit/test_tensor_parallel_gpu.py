"""Tensor parallel on NVIDIA GPUs (skipped without CuPy and a GPU; CI has none).

One GPU: the NCCL communicator's collectives as a single rank, and a rank's column-sliced
quantized weights loaded and multiplied by the CUDA kernels. Two GPUs or more: TP=2 on the cuda
backend gives TP=1's greedy tokens (same walk and bounds as the CPU test)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cupyserve.kernels import get_ops
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.parallel.rank_model import plan_for_file
from cupyserve.runtime.parallel.rank_shard import RankShard
from cupyserve.runtime.parallel.sharded_gguf import ShardedGGUFFile

from testdata import require_gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oracle"))

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


def require_gpus(count: int):
    cupy = require_gpu()
    if cupy.cuda.runtime.getDeviceCount() < count:
        pytest.skip(f"needs {count} GPUs")
    return cupy


def smollm2_model(request) -> Path:
    """The real SmolLM2 file, or $CUPYSERVE_TEST_TP_GGUF (a cut of it) where only that was staged."""
    override = os.environ.get("CUPYSERVE_TEST_TP_GGUF")
    return Path(override) if override else request.getfixturevalue("smollm2_gguf")


@pytest.mark.parametrize("size", [2, 4])
def test_tp_on_gpus_matches_tp1_smollm2(request, size: int) -> None:
    """9 query / 3 KV heads: uneven at TP=2 (6+3 query heads), KV heads replicated at TP=4 is
    refused (3 KV heads do not divide over 4 ranks), so TP=4 runs only where it splits."""
    require_gpus(size)
    from test_tensor_parallel import MAX_LOGPROB_ERROR, MAX_MEAN_TOP5_ERROR, MIN_STEPS_COMPARED, compare, run

    path = smollm2_model(request)
    if size == 4:
        pytest.skip("SmolLM2's 3 KV heads cannot be split over 4 ranks")
    num_compared, errors = compare(run(path, 1, "cuda"), run(path, size, "cuda"))
    print(f"cuda TP={size} vs TP=1 on {path.name}: {num_compared} steps, top-5 error mean "
          f"{np.mean(errors):.4f} max {max(errors):.4f}")
    assert num_compared >= MIN_STEPS_COMPARED
    assert np.mean(errors) < MAX_MEAN_TOP5_ERROR and max(errors) < MAX_LOGPROB_ERROR


@pytest.mark.parametrize("family,quant", [("phi3", "q4_0"), ("qwen2", "f16"), ("gpt-oss", "mxfp4_moe")])
def test_tp2_on_gpus_matches_tp1_synthetic(tmp_path, family: str, quant: str) -> None:
    """Fused QKV/gate-up (phi3), Q/K/V biases and a split tied vocab (qwen2), expert parallelism
    with sinks and sliding window (gpt-oss: the committed MXFP4_MOE fixture)."""
    require_gpus(2)
    from make_synthetic_family_gguf import VOCAB_DIR, write
    from make_synthetic_gpt_oss_gguf import FIXTURE as GPT_OSS
    from test_tensor_parallel import MAX_LOGPROB_ERROR, MAX_MEAN_TOP5_ERROR, MIN_STEPS_COMPARED, compare, run

    if family == "gpt-oss":
        path = GPT_OSS
    elif not VOCAB_DIR.is_dir():
        pytest.skip(f"{VOCAB_DIR} not found; set CUPYSERVE_VOCAB_DIR")
    else:
        path = tmp_path / f"{family}-{quant}.gguf"
        write(family, quant, path)
    num_compared, errors = compare(run(path, 1, "cuda"), run(path, 2, "cuda"))
    print(f"cuda TP=2 vs TP=1 on {family} {quant}: {num_compared} steps, top-5 error mean "
          f"{np.mean(errors):.4f} max {max(errors):.4f}")
    assert num_compared >= MIN_STEPS_COMPARED
    assert np.mean(errors) < MAX_MEAN_TOP5_ERROR and max(errors) < MAX_LOGPROB_ERROR
