"""Layout of one ragged batch as the attention kernels see it (backend-neutral arrays)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AttentionBatch:
    """Sequences packed back to back: sequence s owns query rows
    `query_start[s] : query_start[s + 1]`, which are its last `query_len` tokens; its context
    (cached + new) is `context_lens[s]` tokens long, laid out in KV blocks `block_tables[s]`.

    Arrays live on the backend's device (NumPy or CuPy). `max_query_len` / `max_context_len` are
    host ints so kernels can size launches without a device sync.
    """

    query_start: Any  # [num_seqs + 1] int32
    context_lens: Any  # [num_seqs] int32
    block_tables: Any  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    slot_mapping: Any  # [num_tokens] int64: KV slot of each new token
    positions: Any  # [num_tokens] int32
    num_seqs: int
    max_query_len: int
    max_context_len: int
    query_start_host: tuple[int, ...] = ()  # host copy, for the reference kernels' Python loop
    context_lens_host: tuple[int, ...] = ()
    # Host bool per row: True for a generated token (position past its sequence's prompt). A
    # row's role, unlike the batch it lands in, is a property of the request alone, so linear
    # kernels may pick their algorithm by it and stay batch invariant (see reference/linear.py).
    generated_rows: Any = None  # [num_tokens] bool
    logits_generated_rows: Any = None  # [num_logits] bool: the same for the rows whose logits are wanted
