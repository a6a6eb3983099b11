"""Turns a scheduled ragged batch into model inputs, runs the forward pass, returns logits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence as SequenceOf

import numpy as np

from ..kernels.batch import AttentionBatch
from .kv_cache import KVCache
from .scheduler import ScheduledSequence


@dataclass
class StepLogits:
    """Logits of one step, where the backend computed them (a device array on CUDA: only the
    sampler's small results cross to the host). `rows[i]` are the rows of `logits` for entry i:
    just its last token when it samples, every chunk row when prompt logits were asked for."""

    logits: Any  # [num_logits, vocab_size] float32, an array of `ops.xp`
    rows: list[slice]


class ModelRunner:
    def __init__(self, model: Any, ops: Any, kv_cache: KVCache, decode_graphs: Any = None) -> None:
        self.model = model
        self.ops = ops
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.decode_graphs = decode_graphs  # runtime.decode_graphs.DecodeGraphs, or None (eager)

    def execute(
        self,
        entries: SequenceOf[ScheduledSequence],
        wants_all_logits: SequenceOf[bool],  # per entry: logits for every row of its chunk
    ) -> StepLogits:
        graphs, ops = self.decode_graphs, self.ops
        if (graphs is not None and len(entries) <= graphs.max_batch
                and graphs.is_decode_step(entries, wants_all_logits)):
            # A replay allocates nothing, but fault injection (CUPYSERVE_FAULT_OOM_AT_ALLOC) must
            # still be able to fail a decode step, as it can an eager one: count its one staging.
            ops.check_alloc()
            return StepLogits(logits=graphs.run(entries), rows=[slice(i, i + 1) for i in range(len(entries))])
        ops, block_size = self.ops, self.block_size
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        context_lens: list[int] = []
        logits_indices: list[int] = []
        generated_rows: list[bool] = []
        rows: list[slice] = []
        max_blocks = max(len(e.seq.block_table) for e in entries)
        block_tables = np.zeros((len(entries), max_blocks), dtype=np.int32)
        for index, (entry, wants_all) in enumerate(zip(entries, wants_all_logits)):
            seq = entry.seq
            begin, end = entry.start_position, entry.start_position + entry.num_tokens
            token_ids.extend(seq.all_token_ids[begin:end])
            span = np.arange(begin, end)
            positions.extend(span.tolist())
            generated_rows.extend((span >= seq.num_prompt_tokens).tolist())
            table = np.asarray(seq.block_table, dtype=np.int64)
            slots.extend((table[span // block_size] * block_size + span % block_size).tolist())
            block_tables[index, : len(seq.block_table)] = seq.block_table
            row0 = query_start[-1]
            query_start.append(row0 + entry.num_tokens)
            context_lens.append(end)
            first = len(logits_indices)
            if wants_all:
                logits_indices.extend(range(row0, row0 + entry.num_tokens))
            elif entry.is_sampling:
                logits_indices.append(row0 + entry.num_tokens - 1)
            rows.append(slice(first, len(logits_indices)))
        if not logits_indices:
            # Pure intermediate prefill chunks: K/V must still be written; no logits are read.
            logits_indices = [len(token_ids) - 1]
        generated_mask = np.asarray(generated_rows, dtype=bool)
        batch = AttentionBatch(
            query_start=ops.upload(np.asarray(query_start, dtype=np.int32)),
            context_lens=ops.upload(np.asarray(context_lens, dtype=np.int32)),
            block_tables=ops.upload(block_tables),
            slot_mapping=ops.upload(np.asarray(slots, dtype=np.int64)),
            positions=ops.upload(np.asarray(positions, dtype=np.int32)),
            num_seqs=len(entries),
            max_query_len=max(e.num_tokens for e in entries),
            max_context_len=max(context_lens),
            query_start_host=tuple(query_start),
            context_lens_host=tuple(context_lens),
            generated_rows=generated_mask,
            logits_generated_rows=generated_mask[logits_indices],
        )
        logits = self.model.forward(
            ops.upload(np.asarray(token_ids, dtype=np.int32)),
            batch,
            self.kv_cache.layers,
            ops.upload(np.asarray(logits_indices, dtype=np.int64)),
        )
        return StepLogits(logits=logits, rows=rows)
