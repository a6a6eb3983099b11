"""What a rank's forward does differently from a single-device forward: the three points where
the ranks' partial results meet. The decoder calls these hooks when it runs as one rank."""
from __future__ import annotations

from typing import Any

from .communicator import Communicator
from .shard_plan import ShardPlan


class RankShard:
    def __init__(self, plan: ShardPlan, communicator: Communicator,
                 vocab_sizes: list[int] | None = None) -> None:
        self.plan = plan
        self.communicator = communicator
        self.vocab_sizes = vocab_sizes  # every rank's vocab rows, in rank order (known at load)

    def reduce_partial(
        self,
        x: Any,  # [num_tokens, hidden] float32: this rank's term of a row-parallel matmul
    ) -> Any:  # [num_tokens, hidden] float32: the sum over ranks (attn_output, ffn_down)
        return self.communicator.all_reduce_sum(x)

    def embed(
        self,
        ops: Any,
        weight: Any,  # this rank's embedding rows: [vocab slice, hidden]
        token_ids: Any,  # [num_tokens] int
    ) -> Any:  # [num_tokens, hidden] float32
        """Vocab-parallel lookup: each token's row is on one rank; the others add zeros, so the
        sum is exactly the row."""
        xp = ops.xp
        begin, end = self.plan.vocab
        local = token_ids - begin
        is_mine = (local >= 0) & (local < end - begin)
        rows = ops.embedding(weight, xp.where(is_mine, local, 0))
        rows = xp.where(is_mine[:, None], rows, xp.float32(0.0))
        return self.communicator.all_reduce_sum(rows.astype(xp.float32, copy=False))

    def gather_vocab(
        self,
        logits: Any,  # [num_logits, vocab slice] float32
    ) -> Any:  # [num_logits, vocab_size] float32, identical on every rank
        return self.communicator.all_gather(logits, axis=1, sizes=self.vocab_sizes)
