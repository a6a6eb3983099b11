"""CUDA paged attention vs the NumPy reference over ragged batches of prefill chunks and decodes."""
from __future__ import annotations

import numpy as np
import pytest

from cupyserve.kernels.batch import AttentionBatch
from cupyserve.kernels.reference import attention

from quant_samples import rel_error

pytestmark = pytest.mark.gpu
TOLERANCE = 2e-5  # float32 online softmax vs the reference's two-pass float32 softmax


def _make_batch(rng, query_lens, context_lens, block_size, num_blocks, xp):
    """Sequences with random, non-overlapping block tables."""
    blocks_needed = [-(-c // block_size) for c in context_lens]
    max_blocks = max(blocks_needed)
    pool = rng.permutation(num_blocks)
    tables = np.zeros((len(context_lens), max_blocks), dtype=np.int32)
    used = 0
    for s, n in enumerate(blocks_needed):
        tables[s, :n] = pool[used:used + n]
        used += n
    query_start = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
    positions = np.concatenate([np.arange(c - q, c) for q, c in zip(query_lens, context_lens)]).astype(np.int32)
    slots = np.concatenate([
        tables[s][np.arange(c - q, c) // block_size].astype(np.int64) * block_size + np.arange(c - q, c) % block_size
        for s, (q, c) in enumerate(zip(query_lens, context_lens))
    ])
    return AttentionBatch(
        query_start=xp.asarray(query_start), context_lens=xp.asarray(np.asarray(context_lens, np.int32)),
        block_tables=xp.asarray(tables), slot_mapping=xp.asarray(slots), positions=xp.asarray(positions),
        num_seqs=len(context_lens), max_query_len=max(query_lens), max_context_len=max(context_lens),
        query_start_host=tuple(int(v) for v in query_start), context_lens_host=tuple(context_lens),
    )


CASES = {
    # name: (query_lens, context_lens, num_heads, num_kv_heads, head_dim, block_size)
    "decode_one": ([1], [1], 9, 3, 64, 16),
    "decode_batch": ([1] * 7, [5, 17, 128, 129, 300, 1, 64], 9, 3, 64, 16),
    "decode_long": ([1, 1], [4000, 2500], 8, 2, 128, 32),
    "prefill_one": ([77], [77], 9, 3, 64, 16),
    "prefill_chunked": ([50, 13], [250, 13], 4, 4, 64, 16),
    "mixed": ([1, 40, 1, 129], [700, 40, 3, 200], 16, 2, 128, 16),
    "head_dim_256": ([3, 1], [30, 99], 4, 1, 256, 8),
    "head_dim_80": ([9], [20], 32, 32, 80, 16),
    # Decode batches run paged_attention_decode.cu (more shapes: DECODE_SHAPES below).
    "decode_head_dim_80": ([1] * 3, [20, 300, 7], 32, 32, 80, 16),
    "decode_head_dim_256": ([1, 1], [30, 999], 4, 1, 256, 8),
    "decode_many": ([1] * 40, [1 + (37 * i) % 900 for i in range(40)], 14, 2, 64, 16),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", ["plain", "window", "sinks_softcap"])
def test_paged_attention_matches_reference(cuda_ops, case, variant):
    import cupy

    query_lens, context_lens, num_heads, num_kv_heads, head_dim, block_size = CASES[case]
    rng = np.random.default_rng(abs(hash((case, variant))) % 2**32)
    num_blocks = sum(-(-c // block_size) for c in context_lens) + 5
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = rng.standard_normal(shape).astype(np.float16)
    v_cache = rng.standard_normal(shape).astype(np.float16)
    q = rng.standard_normal((sum(query_lens), num_heads, head_dim), dtype=np.float32)
    options = {}
    if variant == "window":
        options["sliding_window"] = 37
    elif variant == "sinks_softcap":
        options["softcap"] = 30.0
        sinks = rng.standard_normal(num_heads, dtype=np.float32) * 2
    scale = head_dim ** -0.5 * 3  # sharper than usual: peaked softmaxes
    host_batch = _make_batch(rng, query_lens, context_lens, block_size, num_blocks, np)
    dev_batch = _make_batch(np.random.default_rng(0), query_lens, context_lens, block_size, num_blocks, cupy)
    dev_batch = AttentionBatch(**{**dev_batch.__dict__, "block_tables": cupy.asarray(host_batch.block_tables)})
    host_options = dict(options, sinks=sinks) if variant == "sinks_softcap" else options
    dev_options = dict(options, sinks=cupy.asarray(sinks)) if variant == "sinks_softcap" else options
    expected = attention.paged_attention(q, k_cache, v_cache, host_batch, scale, **host_options)
    actual = cuda_ops.paged_attention(cupy.asarray(q), cupy.asarray(k_cache), cupy.asarray(v_cache),
                                      dev_batch, scale, **dev_options)
    assert rel_error(cupy.asnumpy(actual), expected) < TOLERANCE


def test_decode_splits_agree_between_a_batch_and_its_graph_bucket(cuda_ops):
    """Rows of a decode batch and of the CUDA-graph bucket it is padded to are bit-identical only
    if both split the context alike (kernels/cuda/attention.py decode_splits)."""
    from cupyserve.kernels.cuda.attention import decode_splits
    from cupyserve.runtime.decode_graphs import bucket_sizes

    sizes = bucket_sizes(512)
    for ctas_per_row in (1, 2, 3, 4, 8, 14, 32, 64):
        for n in range(1, 513):
            bucket = next(b for b in sizes if b >= n)
            assert decode_splits(n, ctas_per_row) == decode_splits(bucket, ctas_per_row), (n, bucket)


# Decode batches (paged_attention_decode.cu): one CTA per (row, KV head) and up to 8 heads of its
# group, contexts split over CTAs by the batch shape. name: (num_heads, num_kv_heads, head_dim)
DECODE_SHAPES = {
    "smollm2": (9, 3, 64),
    "llama8b": (32, 8, 128),
    "mha": (8, 8, 64),
    "gqa8_hd256": (16, 2, 256),
    "gqa8_hd80": (24, 3, 80),
    "gqa12_hd96": (12, 1, 96),  # a group of 12 takes two CTAs (8 + 4 heads)
}
DECODE_CONTEXTS = (1, 2, 127, 128, 129, 1000, 5000)
DECODE_BLOCK_SIZE = 16


def _decode_problem(rng, shape, context_lens, variant):
    """Random q and caches for decode rows over `context_lens`; sequences draw their blocks from
    one shared pool (like prefix-cache hits), so the caches stay small for 64 long rows."""
    num_heads, num_kv_heads, head_dim = shape
    max_blocks = -(-max(context_lens) // DECODE_BLOCK_SIZE)
    num_blocks = max_blocks + 7
    tables = np.stack([rng.permutation(num_blocks)[:max_blocks] for _ in context_lens]).astype(np.int32)
    cache_shape = (num_blocks, DECODE_BLOCK_SIZE, num_kv_heads, head_dim)
    k_cache = rng.standard_normal(cache_shape, dtype=np.float32).astype(np.float16)
    v_cache = rng.standard_normal(cache_shape, dtype=np.float32).astype(np.float16)
    q = rng.standard_normal((len(context_lens), num_heads, head_dim), dtype=np.float32)
    options = {"window": {"sliding_window": 300}, "plain": {}}.get(variant)
    if options is None:
        options = {"softcap": 30.0, "sinks": rng.standard_normal(num_heads, dtype=np.float32) * 2}
    return q, k_cache, v_cache, tables, options


def _decode_batch(context_lens, tables, xp):
    num_rows = len(context_lens)
    query_start = np.arange(num_rows + 1, dtype=np.int32)
    positions = np.asarray(context_lens, np.int32) - 1
    slots = np.asarray([tables[s][p // DECODE_BLOCK_SIZE] * DECODE_BLOCK_SIZE + p % DECODE_BLOCK_SIZE
                        for s, p in enumerate(positions)], dtype=np.int64)
    return AttentionBatch(
        query_start=xp.asarray(query_start), context_lens=xp.asarray(np.asarray(context_lens, np.int32)),
        block_tables=xp.asarray(tables), slot_mapping=xp.asarray(slots), positions=xp.asarray(positions),
        num_seqs=num_rows, max_query_len=1, max_context_len=max(context_lens),
        query_start_host=tuple(int(v) for v in query_start), context_lens_host=tuple(context_lens))


def _run_decode(cuda_ops, q, k_cache, v_cache, context_lens, tables, options):
    import cupy

    dev_options = {k: cupy.asarray(v) if k == "sinks" else v for k, v in options.items()}
    scale = q.shape[-1] ** -0.5 * 3  # sharper than usual: peaked softmaxes
    out = cuda_ops.paged_attention(cupy.asarray(q), cupy.asarray(k_cache), cupy.asarray(v_cache),
                                   _decode_batch(context_lens, tables, cupy), scale, **dev_options)
    return cupy.asnumpy(out), scale


@pytest.mark.parametrize("shape", list(DECODE_SHAPES))
@pytest.mark.parametrize("variant", ["plain", "window", "sinks_softcap"])
@pytest.mark.parametrize("num_rows", [1, 3, 17, 64])
def test_decode_attention_matches_reference(cuda_ops, shape, variant, num_rows):
    """Every context length of DECODE_CONTEXTS at every batch size (the outputs come from
    NaN-poisoned allocations: a row or head the kernel skips fails the comparison)."""
    rng = np.random.default_rng([num_rows, list(DECODE_SHAPES).index(shape), len(variant)])
    if num_rows == 1:
        batches = [[c] for c in DECODE_CONTEXTS]
    else:
        batches = [[DECODE_CONTEXTS[(3 * i + num_rows) % len(DECODE_CONTEXTS)] for i in range(num_rows)]]
    for context_lens in batches:
        q, k_cache, v_cache, tables, options = _decode_problem(rng, DECODE_SHAPES[shape], context_lens, variant)
        actual, scale = _run_decode(cuda_ops, q, k_cache, v_cache, context_lens, tables, options)
        expected = attention.paged_attention(q, k_cache, v_cache, _decode_batch(context_lens, tables, np),
                                             scale, **options)
        assert rel_error(actual, expected) < TOLERANCE, context_lens


@pytest.mark.parametrize("shape", ["smollm2", "llama8b", "gqa12_hd96"])
def test_decode_rows_are_bit_identical_in_their_graph_bucket(cuda_ops, shape):
    """A batch of n rows and the bucket it is padded to (runtime/decode_graphs.py: padding rows
    have a context of one key in block 0) give bit-identical rows; so do two runs of one batch
    (the last split to finish merges the partial states in split order, whichever it is)."""
    rng = np.random.default_rng(list(DECODE_SHAPES).index(shape))
    for num_rows, bucket in ((1, 1), (3, 4), (11, 16), (17, 24), (40, 48)):
        context_lens = [int(c) for c in rng.integers(1, 3000, size=num_rows)]
        q, k_cache, v_cache, tables, options = _decode_problem(rng, DECODE_SHAPES[shape], context_lens,
                                                               "sinks_softcap")
        padded_tables = np.zeros((bucket, tables.shape[1]), dtype=np.int32)
        padded_tables[:num_rows] = tables
        padded_q = np.concatenate([q, rng.standard_normal((bucket - num_rows, *q.shape[1:]), dtype=np.float32)])
        alone, _ = _run_decode(cuda_ops, q, k_cache, v_cache, context_lens, tables, options)
        again, _ = _run_decode(cuda_ops, q, k_cache, v_cache, context_lens, tables, options)
        padded, _ = _run_decode(cuda_ops, padded_q, k_cache, v_cache, context_lens + [1] * (bucket - num_rows),
                                padded_tables, options)
        assert np.all(np.isfinite(padded)), (num_rows, bucket)
        np.testing.assert_array_equal(alone, again)
        np.testing.assert_array_equal(alone, padded[:num_rows])


def test_decode_graph_replays_any_context_length(cuda_ops):
    """The launch is captured once and replayed with other context lengths (up to the block
    tables' width), as runtime/decode_graphs.py does: same result as an eager launch, bit for bit."""
    import cupy

    from cupyserve.kernels.cuda.graphs import GraphPool

    rng = np.random.default_rng(7)
    max_context = 4096
    q, k_cache, v_cache, tables, options = _decode_problem(rng, DECODE_SHAPES["smollm2"], [max_context] * 3,
                                                           "sinks_softcap")
    scale = q.shape[-1] ** -0.5
    dev_q, dev_k, dev_v = cupy.asarray(q), cupy.asarray(k_cache), cupy.asarray(v_cache)
    sinks = cupy.asarray(options["sinks"])
    batch = _decode_batch([1, 1, 1], tables, cupy)
    pool = GraphPool()  # kept alive: the graph's intermediates live in its memory pool
    graph = pool.capture(lambda: cuda_ops.paged_attention(dev_q, dev_k, dev_v, batch, scale, sinks=sinks,
                                                          softcap=options["softcap"]))
    for context_lens in ([1, 5, 3000], [200, 129, 1], [max_context] * 3, [1, 1, 1]):
        batch.context_lens[...] = cupy.asarray(context_lens, dtype=np.int32)
        replayed = cupy.asnumpy(graph.replay())
        eager = cupy.asnumpy(cuda_ops.paged_attention(dev_q, dev_k, dev_v, _decode_batch(context_lens, tables, cupy),
                                                      scale, sinks=sinks, softcap=options["softcap"]))
        expected = attention.paged_attention(q, k_cache, v_cache, _decode_batch(context_lens, tables, np), scale,
                                             **options)
        np.testing.assert_array_equal(replayed, eager)
        assert rel_error(replayed, expected) < TOLERANCE, context_lens
