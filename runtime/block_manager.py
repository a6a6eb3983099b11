"""Paged KV-cache block allocation with reference counts and automatic prefix caching.

The KV pool is `num_blocks` blocks of `block_size` token slots. A sequence's `block_table` lists
its block ids in order; token `i` of the sequence lives in block `block_table[i // block_size]`
at offset `i % block_size`.

Every block is in exactly one of three states:

- free: refcount 0, no hash; handed out first.
- evictable: refcount 0 but still registered in the prefix cache under its hash; handed out
  (evicted, least recently freed first) only when no free block is left, and revived by a cache
  hit.
- used: refcount >= 1, in the block table of that many live sequences.

Prefix caching: once every token of a FULL block has been computed, the block is registered under
`hash(previous block's hash, its token ids)`, so the hash names the whole prefix up to and
including that block. A new sequence reuses the longest chain of registered blocks that matches
its tokens, but never all of them: the last known token is always recomputed so the step that
finishes the prefill has logits to sample from.

Prefix-cache counters count TOKENS (like vLLM's `prefix_cache_queries_total` /
`prefix_cache_hits_total`): a query is every known token of a sequence at admission, a hit is
every token served from the cache.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from typing import Sequence as SequenceOf

from .sequence import Sequence

# Hash of the (empty) prefix before the first block; the chain of block hashes starts from it.
_ROOT_HASH = b"cupyserve-prefix-root"


def hash_block_tokens(parent_hash: bytes, token_ids: SequenceOf[int]) -> bytes:
    """Hash naming a full block together with everything before it.

    A cryptographic digest (not Python's `hash`) so that two different prefixes sharing one
    registered block is not a practical concern: a collision would silently feed one request
    another request's KV.
    """
    digest = hashlib.blake2b(parent_hash, digest_size=16)
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class BlockManager:
    """Owns the KV block pool; the scheduler is its only caller.

    Contract: a sequence's block table always covers every token it has computed or is scheduled
    to compute in the current step. Block ids are ints in [0, num_blocks).
    """

    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an integer >= 1, got {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching

        self._refcounts = [0] * num_blocks
        self._block_hashes: list[bytes | None] = [None] * num_blocks
        self._free_block_ids: deque[int] = deque(range(num_blocks))
        # refcount-0 registered blocks in the order they were freed: first = least recently used
        self._evictable_block_ids: OrderedDict[int, None] = OrderedDict()
        self._block_id_by_hash: dict[bytes, int] = {}

        self._live_seqs: dict[str, Sequence] = {}  # request_id -> sequence holding blocks
        # per request: hashes of its leading full blocks (tokens never change once known)
        self._seq_block_hashes: dict[str, list[bytes]] = {}
        # per request: how many leading blocks of its table were offered to the prefix cache
        self._num_registered_blocks: dict[str, int] = {}

        self.num_prefix_cache_queried_tokens = 0
        self.num_prefix_cache_hit_tokens = 0
        self.num_evictions = 0

    # ----------------------------------------------------------------- pool state

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation may take: free plus evictable (cached but unreferenced)."""
        return len(self._free_block_ids) + len(self._evictable_block_ids)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently registered in the prefix cache (used or evictable)."""
        return len(self._block_id_by_hash)

    @property
    def usage(self) -> float:
        """Fraction of the pool held by live sequences (0.0 .. 1.0), as `kv_cache_usage_perc`."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def held_request_ids(self) -> tuple[str, ...]:
        """Request ids of the sequences currently holding blocks."""
        return tuple(self._live_seqs)

    def refcount(self, block_id: int) -> int:
        return self._refcounts[block_id]

    def is_evictable(self, block_id: int) -> bool:
        return block_id in self._evictable_block_ids

    def num_blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ----------------------------------------------------------------- prefix lookup

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest registered chain matching `seq`'s leading full blocks.

        Pure query (no refcount or counter changes). Empty when prefix caching is off, when the
        sequence asks for prompt logprobs (cached tokens would produce no logits), or when the
        sequence already holds blocks. At most `(num_tokens - 1) // block_size` blocks, so the
        last known token is always left to compute.
        """
        if not self._may_use_prefix_cache(seq) or seq.block_table:
            return []
        max_num_hit_blocks = (seq.num_tokens - 1) // self.block_size
        hit_block_ids: list[int] = []
        for block_hash in self._full_block_hashes(seq, max_num_hit_blocks):
            block_id = self._block_id_by_hash.get(block_hash)
            if block_id is None:
                break
            hit_block_ids.append(block_id)
        return hit_block_ids

    # ----------------------------------------------------------------- allocation

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int, cached_block_ids: SequenceOf[int] = ()) -> int:
        """Blocks the pool must give up so `seq` can compute `num_new_tokens` more tokens.

        Counts fresh blocks and cache hits that are currently evictable (reviving them takes them
        out of the allocatable pool).
        """
        num_cached_tokens = len(cached_block_ids) * self.block_size
        num_slots = seq.num_computed_tokens + num_cached_tokens + num_new_tokens
        num_fresh = max(0, self.num_blocks_for_tokens(num_slots) - len(seq.block_table) - len(cached_block_ids))
        num_revived = sum(1 for block_id in cached_block_ids if block_id in self._evictable_block_ids)
        return num_fresh + num_revived

    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached_block_ids: SequenceOf[int] = ()) -> bool:
        return self.num_blocks_needed(seq, num_new_tokens, cached_block_ids) <= self.num_free_blocks

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, cached_block_ids: SequenceOf[int] = ()) -> bool:
        """Extend `seq.block_table` to hold its computed tokens plus `num_new_tokens` more.

        `cached_block_ids` (only for a sequence with an empty table, as returned by
        `find_cached_prefix`) are put first in the table with their refcounts raised; the caller
        then marks their tokens computed (`num_computed_tokens = len(cached) * block_size`).
        Returns False, changing nothing, when the pool lacks blocks.
        """
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        is_admission = not seq.block_table
        if cached_block_ids and (not is_admission or seq.num_computed_tokens):
            raise ValueError(f"{seq.request_id}: cached blocks can only start an empty block table")
        if self.num_blocks_needed(seq, num_new_tokens, cached_block_ids) > self.num_free_blocks:
            return False

        if is_admission and self._may_use_prefix_cache(seq):
            self.num_prefix_cache_queried_tokens += seq.num_tokens
            self.num_prefix_cache_hit_tokens += len(cached_block_ids) * self.block_size
        for block_id in cached_block_ids:
            self._acquire_cached(block_id)
            seq.block_table.append(block_id)
        if is_admission:
            self._num_registered_blocks[seq.request_id] = len(cached_block_ids)

        num_slots = seq.num_computed_tokens + len(cached_block_ids) * self.block_size + num_new_tokens
        while len(seq.block_table) < self.num_blocks_for_tokens(num_slots):
            seq.block_table.append(self._take_block())
        self._live_seqs[seq.request_id] = seq
        return True

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register every full block of `seq` whose tokens are all computed (call after a step).

        A block whose prefix is already registered under another block (two sequences prefilled
        the same prefix in the same step) stays private and is simply freed later.
        """
        if not self.enable_prefix_caching or seq.request_id not in self._live_seqs:
            return
        # Only prompt blocks: generated tokens are computed by another kernel path (see
        # kernels/reference/linear.py), so their K/V would not be bit-identical to what a later
        # request computing them as prompt gets alone, and cache hits would change its output.
        num_computed_prompt = min(seq.num_computed_tokens, seq.num_prompt_tokens)
        num_full_blocks = min(num_computed_prompt // self.block_size, len(seq.block_table))
        first = self._num_registered_blocks.get(seq.request_id, 0)
        if first >= num_full_blocks:
            return
        block_hashes = self._full_block_hashes(seq, num_full_blocks)
        for index in range(first, num_full_blocks):
            block_id = seq.block_table[index]
            block_hash = block_hashes[index]
            if self._block_hashes[block_id] is None and block_hash not in self._block_id_by_hash:
                self._block_hashes[block_id] = block_hash
                self._block_id_by_hash[block_hash] = block_id
        self._num_registered_blocks[seq.request_id] = num_full_blocks

    def free(self, seq: Sequence) -> None:
        """Release every block of `seq` and clear its table. Idempotent.

        Blocks are released tail first so that, among one sequence's cached blocks, the tail ones
        are evicted first: a later request sharing only part of the prefix still finds the head.
        """
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table.clear()
        self._live_seqs.pop(seq.request_id, None)
        self._seq_block_hashes.pop(seq.request_id, None)
        self._num_registered_blocks.pop(seq.request_id, None)

    # ----------------------------------------------------------------- integrity

    def check_integrity(self) -> None:
        """Assert every invariant of the pool; raises AssertionError naming the first broken one."""
        free = set(self._free_block_ids)
        evictable = set(self._evictable_block_ids)
        used = {b for b in range(self.num_blocks) if self._refcounts[b] > 0}
        assert len(free) == len(self._free_block_ids), "a block is twice in the free list"
        assert not (free & evictable), f"blocks both free and evictable: {sorted(free & evictable)}"
        assert not (free & used), f"blocks both free and used: {sorted(free & used)}"
        assert not (evictable & used), f"blocks both evictable and used: {sorted(evictable & used)}"
        assert len(free) + len(evictable) + len(used) == self.num_blocks, (
            f"free {len(free)} + evictable {len(evictable)} + used {len(used)} != {self.num_blocks} blocks")
        assert all(r >= 0 for r in self._refcounts), "negative refcount"

        expected_refcounts = [0] * self.num_blocks
        for request_id, seq in self._live_seqs.items():
            assert seq.request_id == request_id, f"live sequence registered under {request_id!r}"
            table = seq.block_table
            assert len(set(table)) == len(table), f"{request_id}: a block appears twice in its table"
            assert len(table) * self.block_size >= seq.num_computed_tokens, (
                f"{request_id}: table of {len(table)} blocks cannot hold {seq.num_computed_tokens} computed tokens")
            for block_id in table:
                expected_refcounts[block_id] += 1
        assert expected_refcounts == self._refcounts, "refcounts differ from the number of tables holding each block"

        for block_id in free:
            assert self._block_hashes[block_id] is None, f"free block {block_id} still has a hash"
        for block_id in evictable:
            assert self._block_hashes[block_id] is not None, f"evictable block {block_id} has no hash"
        for block_hash, block_id in self._block_id_by_hash.items():
            assert self._block_hashes[block_id] == block_hash, f"hash map points at block {block_id} with another hash"
        num_hashed = sum(1 for h in self._block_hashes if h is not None)
        assert num_hashed == len(self._block_id_by_hash), "a hashed block is missing from the hash map"

    # ----------------------------------------------------------------- internals

    def _may_use_prefix_cache(self, seq: Sequence) -> bool:
        return self.enable_prefix_caching and seq.params.prompt_logprobs is None

    def _full_block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Chain hashes of `seq`'s first `num_blocks` blocks (all full), memoized per request."""
        hashes = self._seq_block_hashes.setdefault(seq.request_id, [])
        if len(hashes) < num_blocks:
            token_ids = seq.all_token_ids
            assert num_blocks * self.block_size <= len(token_ids), "hashing a block that is not full"
            parent = hashes[-1] if hashes else _ROOT_HASH
            for index in range(len(hashes), num_blocks):
                start = index * self.block_size
                parent = hash_block_tokens(parent, token_ids[start:start + self.block_size])
                hashes.append(parent)
        return hashes[:num_blocks]

    def _take_block(self) -> int:
        """A block for new tokens: a free one, else evict the least recently used cached one."""
        if self._free_block_ids:
            block_id = self._free_block_ids.popleft()
        else:
            block_id, _ = self._evictable_block_ids.popitem(last=False)
            del self._block_id_by_hash[self._block_hashes[block_id]]
            self._block_hashes[block_id] = None
            self.num_evictions += 1
        self._refcounts[block_id] = 1
        return block_id

    def _acquire_cached(self, block_id: int) -> None:
        if self._refcounts[block_id] == 0:
            del self._evictable_block_ids[block_id]
        self._refcounts[block_id] += 1

    def _release(self, block_id: int) -> None:
        assert self._refcounts[block_id] > 0, f"releasing block {block_id} that no one holds"
        self._refcounts[block_id] -= 1
        if self._refcounts[block_id] == 0:
            if self._block_hashes[block_id] is not None:
                self._evictable_block_ids[block_id] = None
            else:
                self._free_block_ids.append(block_id)
