"""Which slice of every sharded dimension each tensor-parallel rank owns (Megatron-style).

Rules (docs/tensor_parallel.md):
- Attention is split by whole heads. With at least as many KV heads as ranks, the KV groups
  (a KV head and the query heads that read it) are dealt out contiguously, as evenly as
  possible (SmolLM2-135M, 9 heads / 3 KV heads at TP=2: ranks get 2 and 1 groups = 6 and 3
  query heads). With fewer KV heads than ranks, each KV head is replicated on
  `world_size / num_kv_heads` ranks that split its group's query heads; that needs world_size
  to be a multiple of num_kv_heads. Either way each rank's query-to-KV ratio equals the
  model's, so the attention kernel's GQA mapping is unchanged.
- The FFN width is split in units of the widest quantization block among the `ffn_down`
  tensors, so each rank's column slice of `ffn_down` (and its rows of gate/up) is whole blocks.
- Mixture-of-experts FFNs (gpt-oss: `num_experts` in the config) are split by whole experts:
  rank r holds experts [r*E/N, (r+1)*E/N) at their full width (E must be a multiple of N),
  the router is replicated. The FFN width is then not split.
- The vocabulary (embedding rows, output rows) is split evenly by rows.
A split the rules cannot make raises `ShardingError` naming the constraint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..models.config import ModelConfig
from .block_slicing import ShardingError

Range = tuple[int, int]  # half-open [begin, end)


def even_split(total: int, num_parts: int) -> list[Range]:
    """Contiguous ranges covering 0..total; the first `total % num_parts` are one longer."""
    base, extra = divmod(total, num_parts)
    ranges, begin = [], 0
    for part in range(num_parts):
        end = begin + base + (1 if part < extra else 0)
        ranges.append((begin, end))
        begin = end
    return ranges


@dataclass(frozen=True)
class ShardPlan:
    rank: int
    world_size: int
    head_dim: int
    q_heads: Range  # global query heads this rank computes
    kv_heads: Range  # global KV heads it holds (replicated on other ranks when num_kv < world)
    ffn: Range  # rows of ffn_gate/ffn_up, columns of ffn_down
    vocab: Range  # rows of token_embd and output
    experts: Range | None = None  # global experts it holds (MoE families); None: dense FFN

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of {self.world_size}")
        names = ("q_heads", "kv_heads", "ffn", "vocab") + (("experts",) if self.experts else ())
        for name in names:
            begin, end = getattr(self, name)
            if not 0 <= begin < end:
                raise ValueError(f"rank {self.rank}: empty or negative {name} range {begin, end}")
        num_q, num_kv = self.q_heads[1] - self.q_heads[0], self.kv_heads[1] - self.kv_heads[0]
        if num_q % num_kv:
            raise ValueError(f"rank {self.rank}: {num_q} query heads over {num_kv} KV heads")

    @property
    def q_columns(self) -> Range:
        """Features of the attention output (input columns of attn_output) this rank computes."""
        return self.q_heads[0] * self.head_dim, self.q_heads[1] * self.head_dim

    @property
    def kv_rows(self) -> Range:
        return self.kv_heads[0] * self.head_dim, self.kv_heads[1] * self.head_dim

    def local_config(self, config: ModelConfig) -> ModelConfig:
        """The shape this rank's forward runs with: its heads, its FFN width, its vocab rows."""
        return dataclasses.replace(
            config, num_heads=self.q_heads[1] - self.q_heads[0],
            num_kv_heads=self.kv_heads[1] - self.kv_heads[0], ffn_size=self.ffn[1] - self.ffn[0],
            vocab_size=self.vocab[1] - self.vocab[0])


def _ffn_ranges(ffn_size: int, ffn_down_block: int, world_size: int) -> list[Range]:
    """Dense FFN: contiguous column ranges of ffn_down in whole quantization blocks."""
    if ffn_size % ffn_down_block:
        raise ShardingError(f"ffn width {ffn_size} is not whole {ffn_down_block}-column blocks")
    num_ffn_units = ffn_size // ffn_down_block
    if num_ffn_units < world_size:
        raise ShardingError(
            f"ffn width {ffn_size} holds {num_ffn_units} blocks of {ffn_down_block} columns: "
            f"too few for {world_size} ranks")
    return [(begin * ffn_down_block, end * ffn_down_block)
            for begin, end in even_split(num_ffn_units, world_size)]


def _head_ranges(num_heads: int, num_kv_heads: int, world_size: int) -> list[tuple[Range, Range]]:
    group = num_heads // num_kv_heads
    if num_kv_heads >= world_size:
        out = []
        for begin, end in even_split(num_kv_heads, world_size):
            out.append(((begin * group, end * group), (begin, end)))
        return out
    if world_size % num_kv_heads:
        raise ShardingError(
            f"{num_kv_heads} KV heads cannot be shared evenly by {world_size} ranks: with fewer KV "
            f"heads than ranks, --tensor-parallel-size must be a multiple of {num_kv_heads}")
    ranks_per_kv = world_size // num_kv_heads
    if group < ranks_per_kv:
        raise ShardingError(f"{num_heads} query heads cannot give each of {world_size} ranks one")
    out = []
    for rank in range(world_size):
        kv = rank // ranks_per_kv
        begin, end = even_split(group, ranks_per_kv)[rank % ranks_per_kv]
        out.append(((kv * group + begin, kv * group + end), (kv, kv + 1)))
    return out


def expert_ranges(num_experts: int, world_size: int) -> list[Range]:
    """Expert parallel: equal contiguous ranges of whole experts, one per rank."""
    if num_experts % world_size:
        raise ShardingError(
            f"{num_experts} experts cannot be split evenly over {world_size} ranks: "
            f"--tensor-parallel-size must divide the expert count {num_experts}")
    size = num_experts // world_size
    return [(rank * size, (rank + 1) * size) for rank in range(world_size)]


def plan_shards(
    config: ModelConfig,
    world_size: int,
    num_vocab_rows: int,  # rows of token_embd (and output)
    attn_output_block: int,  # widest block (columns) among the attn_output tensors
    ffn_down_block: int,  # widest block (columns) among the ffn_down tensors
) -> list[ShardPlan]:
    """One plan per rank; raises ShardingError when the model cannot be split `world_size` ways."""
    if world_size < 1:
        raise ShardingError(f"tensor parallel size must be >= 1, got {world_size}")
    if world_size > config.num_heads:
        raise ShardingError(f"{config.num_heads} attention heads cannot be split over {world_size} ranks")
    heads = _head_ranges(config.num_heads, config.num_kv_heads, world_size)
    vocab = even_split(num_vocab_rows, world_size)
    if "num_experts" in config.extra:  # every rank keeps the whole width of its own experts
        experts: list[Range | None] = expert_ranges(int(config.extra["num_experts"]), world_size)
        ffn = [(0, config.ffn_size)] * world_size
    else:
        experts = [None] * world_size
        ffn = _ffn_ranges(config.ffn_size, ffn_down_block, world_size)
    plans = []
    for rank in range(world_size):
        q_heads, kv_heads = heads[rank]
        plan = ShardPlan(rank=rank, world_size=world_size, head_dim=config.head_dim,
                         q_heads=q_heads, kv_heads=kv_heads,
                         ffn=ffn[rank], vocab=vocab[rank], experts=experts[rank])
        begin, end = plan.q_columns
        if begin % attn_output_block or end % attn_output_block:
            raise ShardingError(
                f"attention heads {q_heads} of rank {rank} start or end at column {begin}/{end} of "
                f"attn_output, inside a {attn_output_block}-column quantization block: "
                f"{config.num_heads} heads x {config.head_dim} cannot be split {world_size} ways "
                f"on this file")
        plans.append(plan)
    return plans
