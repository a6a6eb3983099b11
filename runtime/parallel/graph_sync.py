"""CUDA graphs of the decode step under tensor parallelism.

Every rank captures its own decode graphs (its shard's forward, NCCL collectives included: NCCL
operations can be captured like kernels) for the same batch-size buckets in the same order, so
the warm-up runs' collectives meet and every replay's collectives meet their peers'. Rank 0 keeps
scheduling and sampling; before each replay it sends the step's inputs (`DecodeInputs`: tokens,
positions, context lengths, block tables, KV slots, a few KB) to the other ranks, which copy them
into their own graph's input buffers and replay the same bucket.

A rank that dies mid-replay leaves the others' captured collectives waiting: rank 0's monitor
records the failure and then aborts the communicator (runtime/parallel/worker_group.py), which
ends the waiting kernels; `TensorParallelModel.check_step` then fails that step, because its
logits are not to be trusted.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraphSpec:
    """What the other ranks need to capture graphs that match rank 0's."""

    num_kv_blocks: int  # rank 0's KV pool shape: every rank allocates the same blocks
    kv_block_size: int
    max_num_seqs: int  # -> the buckets (runtime/decode_graphs.bucket_sizes)
    max_blocks_per_seq: int

    def __post_init__(self) -> None:
        if min(self.num_kv_blocks, self.kv_block_size, self.max_num_seqs, self.max_blocks_per_seq) < 1:
            raise ValueError(f"GraphSpec needs positive sizes, got {self}")
