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
    # Decode batches run the context-split kernels (paged_attention_decode.cu).
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
    for num_heads in (4, 9, 14, 32, 64):
        for n in range(1, 513):
            bucket = next(b for b in sizes if b >= n)
            assert decode_splits(n, num_heads) == decode_splits(bucket, num_heads), (n, bucket)
