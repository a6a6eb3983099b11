"""BlockManager: allocation, refcounts, prefix caching, LRU eviction, integrity checks."""
from __future__ import annotations

import pytest

from cupyserve.runtime.block_manager import BlockManager
from cupyserve.runtime.sampling_params import SamplingParams
from cupyserve.runtime.sequence import Sequence

BLOCK_SIZE = 4


def make_seq(request_id: str, prompt_ids: list[int], **params) -> Sequence:
    return Sequence(request_id=request_id, prompt_ids=list(prompt_ids), params=SamplingParams(**params))


def compute_all(manager: BlockManager, seq: Sequence) -> None:
    """Allocate and 'compute' every known token of `seq`, then register its full blocks."""
    cached = manager.find_cached_prefix(seq)
    num_cached_tokens = len(cached) * manager.block_size
    assert manager.allocate_slots(seq, seq.num_tokens - num_cached_tokens, cached)
    seq.num_computed_tokens = seq.num_tokens
    manager.cache_computed_blocks(seq)
    manager.check_integrity()


def test_allocation_extends_the_table_block_by_block():
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    seq = make_seq("a", range(6))
    assert manager.num_blocks_needed(seq, 6) == 2
    assert manager.allocate_slots(seq, 6)
    assert len(seq.block_table) == 2 and manager.num_free_blocks == 6
    seq.num_computed_tokens = 6
    seq.output_ids.append(99)
    assert manager.allocate_slots(seq, 1)  # slot 6 is still in block 1
    assert len(seq.block_table) == 2
    seq.num_computed_tokens = 7
    seq.output_ids.append(98)
    assert manager.allocate_slots(seq, 1)
    seq.num_computed_tokens = 8
    seq.output_ids.append(97)
    assert manager.allocate_slots(seq, 1)  # slot 8 needs a third block
    assert len(seq.block_table) == 3
    assert manager.usage == pytest.approx(3 / 8)
    manager.check_integrity()


def test_allocation_fails_without_side_effects_when_the_pool_is_short():
    manager = BlockManager(num_blocks=2, block_size=BLOCK_SIZE)
    seq = make_seq("a", range(9))
    assert not manager.can_allocate(seq, 9)
    assert not manager.allocate_slots(seq, 9)
    assert seq.block_table == [] and manager.num_free_blocks == 2
    assert manager.held_request_ids == ()
    manager.check_integrity()


def test_free_is_idempotent_and_returns_uncached_blocks_to_the_free_list():
    manager = BlockManager(num_blocks=4, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    seq = make_seq("a", range(10))
    compute_all(manager, seq)
    assert manager.num_free_blocks == 1 and manager.num_cached_blocks == 0
    manager.free(seq)
    manager.free(seq)
    assert seq.block_table == [] and manager.num_free_blocks == 4 and manager.usage == 0.0
    manager.check_integrity()


def test_second_sequence_reuses_a_three_block_prefix():
    manager = BlockManager(num_blocks=16, block_size=BLOCK_SIZE)
    shared = list(range(100, 112))  # 3 full blocks
    first = make_seq("a", shared + [1, 2])
    compute_all(manager, first)
    assert manager.num_cached_blocks == 3  # the partial 4th block is not registered
    assert manager.num_prefix_cache_queried_tokens == 14 and manager.num_prefix_cache_hit_tokens == 0

    second = make_seq("b", shared + [7, 8, 9])
    cached = manager.find_cached_prefix(second)
    assert cached == first.block_table[:3]
    assert manager.allocate_slots(second, second.num_tokens - 12, cached)
    second.num_computed_tokens = 12
    assert second.block_table[:3] == first.block_table[:3]
    assert second.block_table[3] not in first.block_table
    assert [manager.refcount(b) for b in cached] == [2, 2, 2]
    assert manager.refcount(first.block_table[3]) == 1
    assert manager.num_prefix_cache_queried_tokens == 14 + 15
    assert manager.num_prefix_cache_hit_tokens == 12
    manager.check_integrity()

    manager.free(first)
    assert [manager.refcount(b) for b in cached] == [1, 1, 1]
    manager.check_integrity()


def test_the_last_known_token_is_never_served_from_the_cache():
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    prompt = list(range(8))  # exactly two full blocks
    compute_all(manager, make_seq("a", prompt))
    twin = make_seq("b", prompt)
    assert len(manager.find_cached_prefix(twin)) == 1  # block 2 holds the token to sample from


def test_a_different_earlier_block_breaks_the_chain():
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    compute_all(manager, make_seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    # same second block, different first block: the hash covers the whole prefix
    assert manager.find_cached_prefix(make_seq("b", [0, 2, 3, 4, 5, 6, 7, 8, 9])) == []
    assert len(manager.find_cached_prefix(make_seq("c", [1, 2, 3, 4, 0, 0, 0, 0, 9]))) == 1


def test_prompt_logprobs_and_disabled_caching_skip_the_cache():
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    prompt = list(range(9))
    compute_all(manager, make_seq("a", prompt))
    assert manager.find_cached_prefix(make_seq("b", prompt, prompt_logprobs=1)) == []
    off = BlockManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    compute_all(off, make_seq("a", prompt))
    assert off.num_cached_blocks == 0 and off.find_cached_prefix(make_seq("b", prompt)) == []
    assert off.num_prefix_cache_queried_tokens == 0


def test_freed_cached_blocks_stay_evictable_and_can_be_revived():
    manager = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    first = make_seq("a", list(range(9)))
    compute_all(manager, first)
    cached_ids = first.block_table[:2]
    manager.free(first)
    assert all(manager.is_evictable(b) for b in cached_ids)
    assert manager.num_free_blocks == 4 and manager.num_cached_blocks == 2

    again = make_seq("b", list(range(9)))
    cached = manager.find_cached_prefix(again)
    assert cached == cached_ids
    # reviving the two evictable blocks takes them out of the allocatable pool
    assert manager.num_blocks_needed(again, 1, cached) == 3
    assert manager.allocate_slots(again, 1, cached)
    assert [manager.refcount(b) for b in cached] == [1, 1]
    assert not any(manager.is_evictable(b) for b in cached)
    assert manager.num_free_blocks == 1
    manager.check_integrity()


def test_eviction_takes_free_blocks_first_then_least_recently_freed():
    manager = BlockManager(num_blocks=6, block_size=BLOCK_SIZE)
    older = make_seq("old", list(range(100, 109)))  # blocks: 2 full + 1 partial
    newer = make_seq("new", list(range(200, 209)))
    compute_all(manager, older)
    compute_all(manager, newer)
    older_full, newer_full = older.block_table[:2], newer.block_table[:2]
    manager.free(older)
    manager.free(newer)
    assert manager.num_cached_blocks == 4

    taker = make_seq("taker", list(range(300, 308)))
    assert manager.allocate_slots(taker, 8)
    # the two uncached partial blocks go first: nothing is evicted yet
    assert manager.num_evictions == 0 and manager.num_cached_blocks == 4
    taker.num_computed_tokens = 8  # as the scheduler would after the step
    assert manager.allocate_slots(taker, 4)
    # then the older sequence's blocks, tail first
    assert taker.block_table[2] == older_full[1] and manager.num_evictions == 1
    assert len(manager.find_cached_prefix(make_seq("q", list(range(100, 109))))) == 1
    taker.num_computed_tokens = 12
    assert manager.allocate_slots(taker, 8)
    assert taker.block_table[3:] == [older_full[0], newer_full[1]]
    assert manager.find_cached_prefix(make_seq("q2", list(range(100, 109)))) == []
    assert len(manager.find_cached_prefix(make_seq("q3", list(range(200, 209))))) == 1
    manager.check_integrity()


def test_duplicate_prefill_in_one_step_registers_only_one_copy():
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    a, b = make_seq("a", list(range(9))), make_seq("b", list(range(9)))
    for seq in (a, b):  # both admitted before either was computed: no hit for b
        assert manager.find_cached_prefix(seq) == []
        assert manager.allocate_slots(seq, 9)
    for seq in (a, b):
        seq.num_computed_tokens = 9
        manager.cache_computed_blocks(seq)
    assert manager.num_cached_blocks == 2
    manager.check_integrity()
    manager.free(b)  # b's private copies go back to the free list, not the cache
    assert manager.num_cached_blocks == 2 and manager.num_free_blocks == 5
    manager.check_integrity()


def test_check_integrity_detects_a_corrupted_refcount():
    manager = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    seq = make_seq("a", list(range(5)))
    compute_all(manager, seq)
    manager._refcounts[seq.block_table[0]] += 1
    with pytest.raises(AssertionError, match="refcounts"):
        manager.check_integrity()


def test_check_integrity_detects_a_block_in_two_states():
    manager = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    seq = make_seq("a", list(range(5)))
    compute_all(manager, seq)
    manager._free_block_ids.append(seq.block_table[0])
    with pytest.raises(AssertionError, match="free and used"):
        manager.check_integrity()


@pytest.mark.parametrize("num_blocks, block_size", [(0, 16), (4, 0)])
def test_constructor_rejects_bad_sizes(num_blocks, block_size):
    with pytest.raises(ValueError):
        BlockManager(num_blocks=num_blocks, block_size=block_size)
