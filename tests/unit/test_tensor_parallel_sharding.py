"""Tensor-parallel sharding without processes: the split rules, the quantized block slicing
(against dequantize-then-slice), a rank's view of a real GGUF, and the pipe collectives."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference.dequant import dequantize
from cupyserve.runtime.engine_args import EngineArgs
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.models.config import ModelConfig
from cupyserve.runtime.parallel.block_slicing import ShardingError, block_shape, slice_columns, slice_rows
from cupyserve.runtime.parallel.communicator import CommunicatorError
from cupyserve.runtime.parallel.pipe_communicator import PipeCommunicator, make_pipe_group
from cupyserve.runtime.parallel.rank_shard import RankShard
from cupyserve.runtime.parallel.rank_model import plan_for_file
from cupyserve.runtime.parallel.shard_plan import even_split, plan_shards
from cupyserve.runtime.parallel.sharded_gguf import ShardedGGUFFile

TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K, T.MXFP4]


def random_blocks(ggml_type: T, num_rows: int, num_cols: int, seed: int) -> np.ndarray:
    """Random bytes for every block ([num_rows, row_bytes] uint8); NaN/inf codes are fine:
    slicing must move bytes, whatever they mean."""
    block_size, type_size = block_shape(ggml_type)
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num_rows, num_cols // block_size * type_size), dtype=np.uint8)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # random bytes: NaN scales
@pytest.mark.parametrize("ggml_type", TYPES, ids=[t.name for t in TYPES])
def test_column_slice_equals_dequantize_then_slice(ggml_type: T) -> None:
    block_size, _ = block_shape(ggml_type)
    num_cols = 4 * max(block_size, 32)
    raw = random_blocks(ggml_type, 6, num_cols, seed=int(ggml_type))
    whole = dequantize(raw, ggml_type, num_cols)
    for begin, end in [(0, num_cols // 2), (num_cols // 4, num_cols), (num_cols // 4, 3 * num_cols // 4)]:
        part = slice_columns(raw, ggml_type, num_cols, begin, end)
        np.testing.assert_array_equal(dequantize(part, ggml_type, end - begin), whole[:, begin:end])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # random bytes: NaN scales
@pytest.mark.parametrize("ggml_type", TYPES, ids=[t.name for t in TYPES])
def test_row_slices_equal_dequantize_then_take(ggml_type: T) -> None:
    num_cols = 2 * max(block_shape(ggml_type)[0], 32)
    raw = random_blocks(ggml_type, 10, num_cols, seed=100 + int(ggml_type))
    whole = dequantize(raw, ggml_type, num_cols)
    ranges = [(1, 3), (6, 10), (0, 1)]
    part = slice_rows(raw, ranges)
    expected = np.concatenate([whole[b:e] for b, e in ranges])
    np.testing.assert_array_equal(dequantize(part, ggml_type, num_cols), expected)
    assert np.shares_memory(slice_rows(raw, [(2, 5)]), raw)  # one range: a view of the mmap


def test_a_split_inside_a_block_is_refused() -> None:
    raw = random_blocks(T.Q4_K, 2, 512, seed=1)
    with pytest.raises(ShardingError, match="cuts a Q4_K block of 256 columns"):
        slice_columns(raw, T.Q4_K, 512, 0, 128, "blk.0.attn_output.weight")
    with pytest.raises(ShardingError, match="outside"):
        slice_rows(raw, [(1, 3)])


def config(num_heads: int, num_kv_heads: int, ffn: int = 1536, head_dim: int = 64) -> ModelConfig:
    return ModelConfig(family="llama", architecture="llama", num_layers=2, hidden_size=576,
                       ffn_size=ffn, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                       norm_eps=1e-5, rope_theta=1e4, rope_dim=head_dim, context_length=64, vocab_size=100)


def test_even_split() -> None:
    assert even_split(9, 2) == [(0, 5), (5, 9)]
    assert even_split(48, 3) == [(0, 16), (16, 32), (32, 48)]


def test_smollm2_heads_split_by_kv_group() -> None:
    """9 heads / 3 KV heads at TP=2: groups of 3 go 2 + 1, so ranks hold 6 and 3 query heads."""
    plans = plan_shards(config(9, 3), 2, num_vocab_rows=49152, attn_output_block=32, ffn_down_block=32)
    assert [(p.q_heads, p.kv_heads) for p in plans] == [((0, 6), (0, 2)), ((6, 9), (2, 3))]
    assert [p.q_columns for p in plans] == [(0, 384), (384, 576)]
    assert [p.ffn for p in plans] == [(0, 768), (768, 1536)]
    assert [p.vocab for p in plans] == [(0, 24576), (24576, 49152)]
    local = plans[1].local_config(config(9, 3))
    assert (local.num_heads, local.num_kv_heads, local.ffn_size, local.vocab_size) == (3, 1, 768, 24576)


def test_fewer_kv_heads_than_ranks_replicates_them() -> None:
    plans = plan_shards(config(8, 2), 4, num_vocab_rows=10, attn_output_block=32, ffn_down_block=32)
    assert [(p.q_heads, p.kv_heads) for p in plans] == [
        ((0, 2), (0, 1)), ((2, 4), (0, 1)), ((4, 6), (1, 2)), ((6, 8), (1, 2))]
    with pytest.raises(ShardingError, match="multiple of 2"):
        plan_shards(config(8, 2), 3, num_vocab_rows=10, attn_output_block=32, ffn_down_block=32)


def test_unsplittable_shapes_fail_clearly() -> None:
    with pytest.raises(ShardingError, match="256-column quantization block"):
        plan_shards(config(4, 2), 2, num_vocab_rows=10, attn_output_block=256, ffn_down_block=32)
    with pytest.raises(ShardingError, match="too few"):
        plan_shards(config(4, 2, ffn=256), 2, num_vocab_rows=10, attn_output_block=32, ffn_down_block=256)
    with pytest.raises(ShardingError, match="cannot be split over 5"):
        plan_shards(config(4, 2), 5, num_vocab_rows=10, attn_output_block=32, ffn_down_block=32)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_engine_args_validate_tensor_parallel_size(size) -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineArgs(tensor_parallel_size=size)


def test_rank_view_of_smollm2_slices_the_mapped_file(smollm2_gguf) -> None:
    gguf = GGUFFile.open(smollm2_gguf)
    cfg, family, plans = plan_for_file(gguf, 2)
    view = ShardedGGUFFile(gguf, family, cfg, RankShard(plans[1], communicator=None))
    name = "blk.3.attn_output.weight"  # Q4_1 [576, 576]: rank 1 owns input columns 384..576
    info = gguf.tensors[name]
    whole = dequantize(gguf.raw(name), info.ggml_type, 576)
    local = view.tensors[name]
    assert local.shape == (576, 192) and local.num_bytes == info.num_bytes // 3
    np.testing.assert_array_equal(dequantize(view.raw(name), info.ggml_type, 192), whole[:, 384:])
    q = "blk.3.attn_q.weight"
    assert view.tensors[q].shape == (192, 576)  # 3 heads x 64
    np.testing.assert_array_equal(dequantize(view.raw(q), info.ggml_type, 576),
                                  dequantize(gguf.raw(q), info.ggml_type, 576)[384:])
    assert view.tensors["blk.3.attn_norm.weight"] is gguf.tensors["blk.3.attn_norm.weight"]
    assert view.tensors["token_embd.weight"].shape == (24576, 576)


def run_ranks(world_size: int, body, timeout_s: float = 10.0) -> list:
    """Run body(communicator) on world_size threads joined by a pipe group; results by rank."""
    hub, spokes = make_pipe_group(world_size)
    comms = [PipeCommunicator(0, world_size, hub, timeout_s)] + [
        PipeCommunicator(r, world_size, [spokes[r - 1]], timeout_s) for r in range(1, world_size)]
    results: list = [None] * world_size

    def run(rank: int) -> None:
        try:
            results[rank] = body(comms[rank])
        except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for comm in comms:
        comm.close()
    return results


def test_pipe_collectives() -> None:
    def body(comm):
        r = comm.rank
        x = np.full((2, 3), r + 1, dtype=np.float32)
        total = comm.all_reduce_sum(x)
        gathered = comm.all_gather(np.full((2, r + 1), r, dtype=np.float32), axis=1)
        from_root = comm.broadcast(np.arange(4) * (r == 0))
        comm.barrier()
        return total, gathered, from_root

    results = run_ranks(3, body)
    for total, gathered, from_root in results:
        np.testing.assert_array_equal(total, np.full((2, 3), 6, dtype=np.float32))
        np.testing.assert_array_equal(gathered[0], [0, 1, 1, 2, 2, 2])
        np.testing.assert_array_equal(from_root, np.arange(4))


def test_pipe_collective_fails_when_a_peer_is_gone() -> None:
    def body(comm):
        if comm.rank == 1:
            comm.close()  # as if the process died: its pipe end closes
            return None
        return comm.all_reduce_sum(np.ones(3, dtype=np.float32))

    results = run_ranks(2, body)
    assert isinstance(results[0], CommunicatorError) and "rank 1 is gone" in str(results[0])


def test_pipe_collective_mismatch_is_an_error() -> None:
    def body(comm):
        if comm.rank == 1:
            return comm.barrier()
        return comm.all_reduce_sum(np.ones(3, dtype=np.float32))

    results = run_ranks(2, body, timeout_s=0.5)
    assert "called barrier" in str(results[0])
    assert "did not answer barrier within 0.5 s" in str(results[1])  # rank 0 never replied


def test_cli_maps_and_rejects_tensor_parallel_size(capsys) -> None:
    from cupyserve.server.cli import build_parser, engine_args_from, main

    ns = build_parser().parse_args(["serve", "--tensor-parallel-size", "2"])
    assert engine_args_from(ns).tensor_parallel_size == 2
    assert main(["serve", "--tensor-parallel-size", "0", "--no-pull"]) == 2
    assert "tensor_parallel_size must be an integer >= 1" in capsys.readouterr().err
