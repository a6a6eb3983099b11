"""The paged KV pool: per layer K and V arrays of fp16 blocks, sized from a memory budget."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .models.config import ModelConfig

DEFAULT_CPU_KV_BYTES = 1 << 30  # 1 GiB, capped at a quarter of available memory
BYTES_PER_ELEMENT = 2  # fp16


def bytes_per_block(config: ModelConfig, block_size: int) -> int:
    """K and V of every layer for `block_size` tokens."""
    return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * BYTES_PER_ELEMENT


def plan_num_blocks(config: ModelConfig, block_size: int, budget_bytes: int) -> int:
    num_blocks = budget_bytes // bytes_per_block(config, block_size)
    if num_blocks < 1:
        raise ValueError(
            f"KV cache budget of {budget_bytes} bytes holds no block "
            f"({bytes_per_block(config, block_size)} bytes per {block_size}-token block)"
        )
    return int(num_blocks)


@dataclass
class KVCache:
    layers: list[tuple[Any, Any]]  # per layer (k, v): [num_blocks, block_size, num_kv_heads, head_dim]
    num_blocks: int
    block_size: int

    @classmethod
    def allocate(cls, config: ModelConfig, ops: Any, num_blocks: int, block_size: int) -> KVCache:
        shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        layers = [(ops.zeros(shape, np.float16), ops.zeros(shape, np.float16))
                  for _ in range(config.num_layers)]
        return cls(layers=layers, num_blocks=num_blocks, block_size=block_size)

    @property
    def num_bytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)
