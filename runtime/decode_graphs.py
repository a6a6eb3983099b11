"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step (every sequence feeds exactly its newest generated token) has the same kernels,
launch shapes and buffers every time for a given batch size, so on a backend with graphs
(`ops.supports_graphs`) the model's forward pass is captured once per bucket at startup and
replayed afterwards: the GPU then runs the step without hundreds of Python kernel launches.

A batch of n sequences runs in the smallest bucket b >= n. The static inputs of a bucket are
one int32 device buffer (token ids, positions, context lengths, block tables) and one int64
buffer (KV slots), refilled from pinned staging memory before each replay (the block tables
only up to the widest table in use). The
b - n padding rows feed token 0 at position 0 with a context of one key (block 0, slot 0: any
finite cache content) and KV slot -1, which the KV write skips; their logits are never read.
Query starts (0..b) and the logits rows (all b) never change and are set once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence as SequenceOf

import numpy as np

from ..kernels.batch import AttentionBatch

# Buckets up to max_num_seqs; dense where padding would waste most.
BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def bucket_sizes(max_num_seqs: int) -> list[int]:
    """The buckets captured for a server running at most `max_num_seqs` sequences per step."""
    sizes = [b for b in BUCKETS if b < max_num_seqs]
    return sizes + [max_num_seqs]


@dataclass(frozen=True)
class DecodeInputs:
    """One decode step's inputs as host arrays, as rank 0 sends them to the other ranks."""

    size: int  # the bucket
    head: np.ndarray  # [3 * size] int32: tokens, positions, context lengths
    tables: np.ndarray  # [size, used columns] int32: block tables
    slots: np.ndarray  # [size] int64: KV slots (-1 on padding rows)


@dataclass
class _Bucket:
    size: int
    host_int32: np.ndarray  # [size * (3 + max_blocks)] pinned: tokens, positions, context lens, tables
    host_slots: np.ndarray  # [size] int64 pinned
    device_int32: Any  # device twin of host_int32
    device_slots: Any  # [size] int64 on the device
    graph: Any = None

    def views(self, array: np.ndarray | Any, max_blocks: int):
        """(tokens, positions, context_lens, block_tables) views into a bucket's int32 buffer."""
        b = self.size
        return (array[:b], array[b:2 * b], array[2 * b:3 * b],
                array[3 * b:].reshape(b, max_blocks))


class DecodeGraphs:
    """Captures the model's decode forward pass per bucket and replays it for decode steps."""

    def __init__(self, model: Any, ops: Any, kv_cache: Any, max_num_seqs: int,
                 max_blocks_per_seq: int,
                 on_replay: Callable[[DecodeInputs], None] | None = None) -> None:
        """`on_replay` (tensor parallel, rank 0) gets each step's inputs before the replay."""
        self.model = model
        self.on_replay = on_replay
        self.ops = ops
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.max_blocks = max_blocks_per_seq
        self.pool = ops.graph_pool()
        self.buckets: dict[int, _Bucket] = {}
        self.num_replays = 0
        # Largest first: the smaller buckets then reuse the pool blocks the largest one cached.
        for size in sorted(bucket_sizes(max_num_seqs), reverse=True):
            self.buckets[size] = self._capture(size)
        self.sizes = sorted(self.buckets)

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def _capture(self, size: int) -> _Bucket:
        ops, xp = self.ops, self.ops.xp
        width = size * (3 + self.max_blocks)
        host_int32, host_slots = ops.pinned_zeros((width,), np.int32), ops.pinned_zeros((size,), np.int64)
        bucket = _Bucket(size=size, host_int32=host_int32, host_slots=host_slots,
                         device_int32=None, device_slots=None)
        self._fill_padding(bucket, 0)  # what warm-up and capture run on: padding rows only
        bucket.device_int32, bucket.device_slots = xp.asarray(host_int32), xp.asarray(host_slots)
        tokens, positions, context_lens, tables = bucket.views(bucket.device_int32, self.max_blocks)
        rows = np.ones(size, dtype=bool)
        batch = AttentionBatch(
            query_start=xp.arange(size + 1, dtype=np.int32), context_lens=context_lens,
            block_tables=tables, slot_mapping=bucket.device_slots, positions=positions,
            num_seqs=size, max_query_len=1, max_context_len=self.max_blocks * self.block_size,
            generated_rows=rows, logits_generated_rows=rows)
        logits_rows = xp.arange(size, dtype=np.int64)
        bucket.graph = self.pool.capture(
            lambda: self.model.forward(tokens, batch, self.kv_cache.layers, logits_rows))
        return bucket

    def _fill_padding(self, bucket: _Bucket, first_row: int) -> None:
        tokens, positions, context_lens, tables = bucket.views(bucket.host_int32, self.max_blocks)
        tokens[first_row:] = 0
        positions[first_row:] = 0
        context_lens[first_row:] = 1
        tables[first_row:, 0] = 0
        bucket.host_slots[first_row:] = -1

    @staticmethod
    def is_decode_step(entries: SequenceOf[Any], wants_all_logits: SequenceOf[bool]) -> bool:
        """Every entry feeds one generated token and samples from it (no prompt logits)."""
        return all(e.num_tokens == 1 and e.is_sampling and e.start_position >= e.seq.num_prompt_tokens
                   and not wants for e, wants in zip(entries, wants_all_logits))

    def run(self, entries: SequenceOf[Any]) -> Any:  # -> [len(entries), vocab] float32 logits
        """Replay the bucket that fits `entries` (all decode entries, at most `max_batch`)."""
        num_seqs = len(entries)
        bucket = self.buckets[next(b for b in self.sizes if b >= num_seqs)]
        tokens, positions, context_lens, tables = bucket.views(bucket.host_int32, self.max_blocks)
        slots, block_size = bucket.host_slots, self.block_size
        num_table_columns = 1
        for row, entry in enumerate(entries):
            seq = entry.seq
            position = entry.start_position
            table = seq.block_table
            tokens[row] = seq.output_ids[position - seq.num_prompt_tokens]
            positions[row] = position
            context_lens[row] = position + 1
            tables[row, :len(table)] = table
            num_table_columns = max(num_table_columns, len(table))
            slots[row] = table[position // block_size] * block_size + position % block_size
        self._fill_padding(bucket, num_seqs)
        if self.on_replay is not None:
            head = 3 * bucket.size
            self.on_replay(DecodeInputs(bucket.size, bucket.host_int32[:head].copy(),
                                        tables[:, :num_table_columns].copy(), slots.copy()))
        return self._replay(bucket, num_table_columns)[:num_seqs]

    def replay_inputs(self, inputs: DecodeInputs) -> None:
        """Replay with another rank's step inputs (tensor parallel: ranks 1..N-1 follow rank 0's
        decode steps; the graphs' collectives meet rank 0's)."""
        bucket = self.buckets[inputs.size]
        # The pinned buffers may still feed the previous replay's copies: let them finish first.
        self.ops.synchronize()
        head = 3 * bucket.size
        num_table_columns = inputs.tables.shape[1]
        bucket.host_int32[:head] = inputs.head
        bucket.views(bucket.host_int32, self.max_blocks)[3][:, :num_table_columns] = inputs.tables
        bucket.host_slots[:] = inputs.slots
        self._replay(bucket, num_table_columns)

    def _replay(self, bucket: _Bucket, num_table_columns: int) -> Any:  # -> [size, vocab] logits
        # Only the table columns some row uses cross (one pitched copy); entries past a row's own
        # blocks keep stale values on the device, which no kernel reads (context lengths bound reads).
        head = 3 * bucket.size
        tables = bucket.views(bucket.host_int32, self.max_blocks)[3]
        device_tables = bucket.views(bucket.device_int32, self.max_blocks)[3]
        logits = bucket.graph.replay([
            (bucket.device_int32[:head], bucket.host_int32[:head]),
            (device_tables[:, :num_table_columns], tables[:, :num_table_columns]),
            (bucket.device_slots, bucket.host_slots)])
        self.num_replays += 1
        return logits

    def release(self) -> None:
        """Destroy the captured graphs (after the device finished them). NCCL counts graphs that
        captured its collectives, and tearing its communicator down waits, forever, until those
        graphs are gone: tensor-parallel ranks release their graphs first."""
        self.ops.synchronize()
        for bucket in self.buckets.values():
            bucket.graph = None  # the captured closure refers back to us: break the cycle here
        self.buckets.clear()
        self.sizes = []

    def num_bytes(self) -> int:
        return self.pool.num_bytes()
