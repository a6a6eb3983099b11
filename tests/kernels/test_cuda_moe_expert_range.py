"""CUDA `moe_ffn` with `expert_range` (expert parallelism, docs/tensor_parallel.md) against the
NumPy op of kernels/reference/moe.py. Skipped without CuPy or a GPU.

A rank holds global experts [begin, end) (local id = global - begin) and gets the router logits
of all experts. In every path (moe_int8.cu per pair and on sorted tiles, the float decode GEMV,
the grouped SIMT GEMM, the grouped tensor-core GEMM, both row tiles) and for E = 12 experts split over 2, 3 and 4 ranks:
- each rank's CUDA op equals the reference's expert-range op within test_cuda_moe.py's bounds,
  and a token with no slot in the range gets an exact zero row;
- the sum over the ranks equals the whole CUDA op within the same bounds (only the grouping of
  each token's k terms differs);
- a slot routed outside the range contributes exact zeros: the op equals, bit for bit, the whole
  op whose experts outside the range are all zero (weights and biases), which the grouped path
  tiles alike because the row tile depends on pairs / all experts;
- routing writes local ids and -1, the counting sort leaves the -1 pairs out of every tile, and
  the op replays equal from a CUDA graph.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from cupyserve.kernels.reference import moe as reference

from test_cuda_moe import assert_close_to_reference, make_inputs, make_layer

pytestmark = pytest.mark.gpu

NUM_EXPERTS, HIDDEN, FFN, K = 12, 96, 160, 4  # 12 experts split evenly over 2, 3 and 4 ranks
ROLES = (("gate", FFN, HIDDEN), ("up", FFN, HIDDEN), ("down", HIDDEN, FFN))
SUM_OF_PARTS_MAX = 1e-5  # float32 regrouping of <= K terms, relative to the terms' norms
# path: (num_tokens, moe_int8.cu on, grouped tensor cores, row tile of the grouped GEMM or of
# moe_int8.cu's sort, None for a tile per pair)
PATHS = {
    "int8_per_pair": (5, True, True, None),
    "int8_sorted": (40, True, True, 8),
    "gemv": (5, False, True, None),
    "grouped_simt": (40, False, False, 16),
    "grouped_mma": (40, False, True, 16),
    "grouped_simt_large_tiles": (300, False, False, 64),
    "grouped_mma_large_tiles": (300, False, True, 64),
}


def rank_ranges(world_size: int) -> list[tuple[int, int]]:
    size = NUM_EXPERTS // world_size
    return [(begin, begin + size) for begin in range(0, NUM_EXPERTS, size)]


def force_path(moe, monkeypatch, path: str) -> int:
    """Selects the path as test_cuda_moe.py does (token count, INT8_TYPES, GROUPED_TENSOR_CORES);
    returns the token count after checking that it takes that path and row tile."""
    num_tokens, is_int8, tensor_cores, tile_rows = PATHS[path]
    if is_int8:  # sorted int8 tiles at every group size, not only below the tuned limit
        monkeypatch.setattr(moe, "INT8_MAX_AVERAGE_GROUP", 1 << 30)
        monkeypatch.setattr(moe, "INT8_MAX_AVERAGE_GROUP_MMA", 1 << 30)
    else:
        monkeypatch.setattr(moe, "INT8_TYPES", frozenset())
    monkeypatch.setattr(moe, "GROUPED_TENSOR_CORES", tensor_cores)
    assert (num_tokens <= moe.GEMV_MAX_TOKENS) == (tile_rows is None)
    assert moe.uses_int8_tiles(T.MXFP4, num_tokens * K, NUM_EXPERTS, num_tokens) == is_int8
    if is_int8 and tile_rows is not None:
        assert tile_rows == moe.INT8_TILE_ROWS
    elif tile_rows is not None:
        assert moe.tile_rows_for(num_tokens * K, NUM_EXPERTS) == tile_rows
    return num_tokens


def make_case(num_tokens: int, seed: int):
    """A random MXFP4 layer and inputs; token 0 routes to the last K experts only, so the ranks
    that hold none of them see a token without any slot in their range."""
    rng = np.random.default_rng([seed, num_tokens])
    raws, dense, biases = make_layer(T.MXFP4, NUM_EXPERTS, HIDDEN, FFN, rng)
    x, logits = make_inputs(dense, num_tokens, NUM_EXPERTS, rng)
    logits[0, -K:] += np.float32(20.0)
    return raws, biases, x, logits


def op_args(cuda_ops, raws, biases, x, logits, held: tuple[int, int]) -> list:
    """moe_ffn's arguments before k: the router logits of all experts, and the tensors and biases
    of experts `held` = [begin, end), loaded from their rows of the GGUF bytes as a rank loads
    them (runtime/parallel/sharded_gguf.py)."""
    import cupy

    begin, end = held
    args = [cupy.asarray(x), cupy.asarray(logits)]
    for name, rows, cols in ROLES:
        local = raws[name][begin * rows:end * rows]  # [num_local * rows, row_bytes]
        args += [cuda_ops.load_experts(local, T.MXFP4, end - begin, rows, cols),
                 cupy.asarray(biases[name][begin:end])]
    return args


def cuda_op(cuda_ops, raws, biases, x, logits, expert_range=None) -> np.ndarray:
    """The CUDA op on the tensors of `expert_range` (all experts when None), on the host."""
    import cupy

    args = op_args(cuda_ops, raws, biases, x, logits, expert_range or (0, NUM_EXPERTS))
    return cupy.asnumpy(cuda_ops.moe_ffn(*args, K, expert_range=expert_range))


def reference_op(raws, biases, x, logits, expert_range):
    begin, end = expert_range
    args = [x, logits]
    for name, rows, cols in ROLES:
        whole = reference.load_experts(raws[name], T.MXFP4, NUM_EXPERTS, rows, cols)
        local = reference.ExpertWeights(whole.raw[begin:end], T.MXFP4, end - begin, rows, cols)
        args += [local, biases[name][begin:end]]
    return reference.moe_ffn(*args, K, expert_range=expert_range)


def tokens_outside(logits, expert_range) -> np.ndarray:  # [num_tokens] bool
    """Tokens none of whose k slots is routed into the range."""
    selected, _ = reference.route(logits, K)
    begin, end = expert_range
    return ~np.any((selected >= begin) & (selected < end), axis=1)


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("path", list(PATHS))
def test_rank_ops_match_reference_and_sum_to_the_whole_op(cuda_ops, monkeypatch, path, world_size):
    from cupyserve.kernels.cuda import moe

    num_tokens = force_path(moe, monkeypatch, path)
    raws, biases, x, logits = make_case(num_tokens, world_size)
    partials = []
    for expert_range in rank_ranges(world_size):
        actual = cuda_op(cuda_ops, raws, biases, x, logits, expert_range)
        expected = reference_op(raws, biases, x, logits, expert_range)
        assert actual.shape == (num_tokens, HIDDEN) and actual.dtype == np.float32
        outside = tokens_outside(logits, expert_range)
        assert not actual[outside].any() and not expected[outside].any()
        if (~outside).any():
            assert_close_to_reference(actual[~outside], expected[~outside])
        partials.append(actual)
    assert tokens_outside(logits, rank_ranges(world_size)[0])[0]  # token 0 skips rank 0 entirely
    whole = cuda_op(cuda_ops, raws, biases, x, logits)
    # Only the grouping of each token's k float32 terms differs, so the error scale is the size of
    # the terms, not of their sum: a row whose ranks' parts nearly cancel is still exact to the
    # float32 rounding of the parts (seen on the H100: one row 0.66% off relative to its own
    # norm, most likely such a row; this form of the check has not run on a GPU yet).
    summed = np.sum(partials, axis=0, dtype=np.float32)
    parts_norm = np.sum([np.linalg.norm(p, axis=1) for p in partials], axis=0)
    errors = np.linalg.norm(summed.astype(np.float64) - whole, axis=1) / parts_norm
    assert np.all(np.isfinite(whole)) and errors.max() <= SUM_OF_PARTS_MAX, errors.max()


@pytest.mark.parametrize("expert_range", [(0, 6), (4, 8), (9, 12)])
@pytest.mark.parametrize("path", list(PATHS))
def test_slots_outside_the_range_contribute_exact_zeros(cuda_ops, monkeypatch, path, expert_range):
    from cupyserve.kernels.cuda import moe

    num_tokens = force_path(moe, monkeypatch, path)
    raws, biases, x, logits = make_case(num_tokens, 99)
    begin, end = expert_range
    zeroed_raws, zeroed_biases = {}, {}
    for name, rows, _ in ROLES:
        zeroed_raws[name] = np.zeros_like(raws[name])  # MXFP4 zero bytes: every value +0
        zeroed_raws[name][begin * rows:end * rows] = raws[name][begin * rows:end * rows]
        zeroed_biases[name] = np.zeros_like(biases[name])
        zeroed_biases[name][begin:end] = biases[name][begin:end]
    ranged = cuda_op(cuda_ops, raws, biases, x, logits, expert_range)
    zeroed_whole = cuda_op(cuda_ops, zeroed_raws, zeroed_biases, x, logits)
    assert np.all(np.isfinite(ranged)) and ranged.any()
    np.testing.assert_array_equal(ranged, zeroed_whole)


@pytest.mark.parametrize("tile_rows", [16, 64])
@pytest.mark.parametrize("expert_range", [(0, 4), (4, 8), (8, 12)])
def test_routing_marks_other_ranks_and_the_sort_leaves_them_out(cuda_ops, expert_range, tile_rows):
    import cupy

    from cupyserve.kernels.cuda import moe

    logits = np.random.default_rng(8).standard_normal((300, NUM_EXPERTS)).astype(np.float32)
    logits[:, 5] += 3.0  # one crowded expert: groups of several tiles
    begin, end = expert_range
    whole_ids, whole_weights = (cupy.asnumpy(a) for a in moe.route(cupy.asarray(logits), K))
    local_ids, weights = moe.route(cupy.asarray(logits), K, expert_range)
    is_held = (whole_ids >= begin) & (whole_ids < end)
    np.testing.assert_array_equal(cupy.asnumpy(local_ids), np.where(is_held, whole_ids - begin, -1))
    np.testing.assert_array_equal(cupy.asnumpy(weights), whole_weights)  # over all experts
    tile_expert, sorted_pairs = (cupy.asnumpy(a) for a in moe.group_pairs(local_ids, end - begin, tile_rows))
    flat = cupy.asnumpy(local_ids).reshape(-1)
    assert sorted(p for p in sorted_pairs if p >= 0) == np.flatnonzero(flat >= 0).tolist()
    for tile, expert in zip(sorted_pairs.reshape(-1, tile_rows), tile_expert):
        pairs = tile[tile >= 0]
        assert (pairs.size == 0) if expert < 0 else (pairs.size > 0 and np.all(flat[pairs] == expert))
    counts = np.bincount(flat[flat >= 0], minlength=end - begin)
    used = tile_expert[tile_expert >= 0]
    np.testing.assert_array_equal(np.bincount(used, minlength=end - begin), -(-counts // tile_rows))


@pytest.mark.parametrize("num_tokens", [4, 100])  # the GEMV and the grouped path
def test_expert_range_op_captures_in_a_cuda_graph(cuda_ops, num_tokens):
    """No host synchronization with a sub-range either: the replay reproduces the eager result."""
    import cupy

    raws, biases, x, logits = make_case(num_tokens, 5)
    begin, end = 4, 8
    args = op_args(cuda_ops, raws, biases, x, logits, (begin, end))
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        eager = cupy.asnumpy(cuda_ops.moe_ffn(*args, K, expert_range=(begin, end)))
        cuda_ops.moe_ffn(*args, K, expert_range=(begin, end))  # warm the memory pool
        stream.synchronize()
        stream.begin_capture()
        captured = cuda_ops.moe_ffn(*args, K, expert_range=(begin, end))
        graph = stream.end_capture()
        captured.fill(np.nan)  # only the replay below may write the result
        graph.launch()
        stream.synchronize()
    assert eager.any()
    np.testing.assert_array_equal(cupy.asnumpy(captured), eager)


@pytest.mark.parametrize("num_tokens", [3, 40])  # the GEMV and the grouped path
def test_whole_expert_range_is_the_default_op(cuda_ops, num_tokens: int) -> None:
    raws, biases, x, logits = make_case(num_tokens, 11)
    default = cuda_op(cuda_ops, raws, biases, x, logits)
    assert np.all(np.isfinite(default))
    np.testing.assert_array_equal(cuda_op(cuda_ops, raws, biases, x, logits, (0, NUM_EXPERTS)), default)


def test_mismatched_expert_range_is_refused(cuda_ops) -> None:
    raws, biases, x, logits = make_case(3, 1)
    args = op_args(cuda_ops, raws, biases, x, logits, (0, 4))
    with pytest.raises(ValueError, match="holds 3 experts but the expert tensors hold 4"):
        cuda_ops.moe_ffn(*args, K, expert_range=(0, 3))
    with pytest.raises(ValueError, match="non-empty part of 0..12"):
        cuda_ops.moe_ffn(*args, K, expert_range=(10, 14))
