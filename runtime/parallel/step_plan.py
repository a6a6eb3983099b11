"""The inputs of one forward step as rank 0 sends them to the other ranks: host arrays only, so
the message pickles the same whatever the backend, and each rank uploads it to its own device."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...kernels.batch import AttentionBatch

_DEVICE_FIELDS = ("query_start", "context_lens", "block_tables", "slot_mapping", "positions")


@dataclass(frozen=True)
class StepPlan:
    token_ids: np.ndarray  # [num_tokens] int32
    logits_indices: np.ndarray  # [num_logits] int64
    batch: AttentionBatch  # with host (NumPy) arrays in the device fields
    num_kv_blocks: int  # the KV pool's shape, so every rank allocates the same blocks
    kv_block_size: int

    @classmethod
    def capture(cls, ops: Any, token_ids: Any, batch: AttentionBatch, logits_indices: Any,
                kv_caches: list[tuple[Any, Any]]) -> StepPlan:
        """From rank 0's device inputs (token_ids [num_tokens], logits_indices [num_logits])."""
        host = {name: ops.to_host(getattr(batch, name)) for name in _DEVICE_FIELDS}
        k_cache = kv_caches[0][0]  # [num_blocks, block_size, num_kv_heads, head_dim]
        return cls(token_ids=ops.to_host(token_ids), logits_indices=ops.to_host(logits_indices),
                   batch=dataclasses.replace(batch, **host),
                   num_kv_blocks=int(k_cache.shape[0]), kv_block_size=int(k_cache.shape[1]))

    def upload(self, ops: Any) -> tuple[Any, AttentionBatch, Any]:
        """(token_ids, batch, logits_indices) on this rank's device."""
        device = {name: ops.upload(getattr(self.batch, name)) for name in _DEVICE_FIELDS}
        return (ops.upload(self.token_ids), dataclasses.replace(self.batch, **device),
                ops.upload(self.logits_indices))
