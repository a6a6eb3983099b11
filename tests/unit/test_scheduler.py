"""Scheduler: FCFS admission, budgets, chunked prefill, prefix hits, preemption, aborts, stress.

A fake model writes every fed token into a fake KV pool (one slot per token, addressed through
the block table) and, when an entry samples, reads the whole context back through the block
table: a wrong table, a clobbered shared block or a bad prefix hit shows up as a mismatch. The
sampled token is a function of the context only, so a preempted and recomputed stream must
produce exactly the tokens an uninterrupted run produces.
"""
from __future__ import annotations

import random

import pytest

from cupyserve.runtime.block_manager import BlockManager
from cupyserve.runtime.sampling_params import SamplingParams
from cupyserve.runtime.scheduler import RequestTooLarge, Scheduler, SchedulerOutput
from cupyserve.runtime.scheduler_config import SchedulerConfig
from cupyserve.runtime.sequence import Sequence, SequenceStatus


def make_seq(request_id: str, prompt_ids, max_tokens: int = 4) -> Sequence:
    return Sequence(request_id=request_id, prompt_ids=list(prompt_ids),
                    params=SamplingParams(max_tokens=max_tokens))


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64,
                   max_model_len=1024, enable_prefix_caching=True) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=max_model_len, block_size=block_size)
    return Scheduler(config, BlockManager(num_blocks, block_size, enable_prefix_caching))


class FakeModel:
    """Stores fed tokens in a fake KV pool and samples a token determined by the context."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.kv_slots: list[int | None] = [None] * (num_blocks * block_size)

    def _slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def run(self, output: SchedulerOutput) -> dict[str, int]:
        sampled = {}
        for entry in output.scheduled:
            for offset, token_id in enumerate(entry.token_ids):
                self.kv_slots[self._slot(entry.seq, entry.start_position + offset)] = token_id
        for entry in output.scheduled:
            if entry.is_sampling:
                end = entry.start_position + entry.num_tokens
                context = [self.kv_slots[self._slot(entry.seq, p)] for p in range(end)]
                assert context == entry.seq.all_token_ids[:end], f"{entry.request_id}: KV cache holds wrong tokens"
                sampled[entry.request_id] = (sum(context) * 31 + end) % 1000
        return sampled


def step(scheduler: Scheduler, model: FakeModel) -> SchedulerOutput:
    """One engine step with the checks every test wants after it."""
    output = scheduler.schedule()
    config = scheduler.config
    assert output.num_batched_tokens <= config.max_num_batched_tokens
    assert scheduler.num_running <= config.max_num_seqs
    scheduled_ids = {entry.request_id for entry in output.scheduled}
    assert len(scheduled_ids) == len(output.scheduled)
    for seq in scheduler.running:  # a decode never waits: every one-token stream is in the batch
        if seq.num_pending_tokens == 1:
            assert seq.request_id in scheduled_ids, f"{seq.request_id} skipped a decode step"
    scheduler.check_integrity()
    for seq in scheduler.update(output, model.run(output)):
        if len(seq.output_ids) >= seq.params.max_tokens:
            scheduler.finish(seq, "length")
    scheduler.check_integrity()
    return output


def run_to_completion(scheduler: Scheduler, model: FakeModel, max_steps: int = 10_000) -> int:
    for num_steps in range(1, max_steps + 1):
        step(scheduler, model)
        if not scheduler.has_unfinished:
            return num_steps
    raise AssertionError("scheduler did not drain")


def reference_outputs(prompt_ids, max_tokens: int) -> list[int]:
    """What the fake model produces for a stream that is never interrupted."""
    tokens, outputs = list(prompt_ids), []
    for _ in range(max_tokens):
        token = (sum(tokens) * 31 + len(tokens)) % 1000
        tokens.append(token)
        outputs.append(token)
    return outputs


def test_config_rejects_bad_limits():
    with pytest.raises(ValueError, match="block_size"):
        SchedulerConfig(block_size=12)
    with pytest.raises(ValueError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match="must be >= max_num_seqs"):
        SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=32)
    with pytest.raises(ValueError, match="block_size"):
        Scheduler(SchedulerConfig(block_size=16), BlockManager(8, 8))


def test_admission_is_first_come_first_served():
    scheduler = make_scheduler(max_num_seqs=2, max_num_batched_tokens=64)
    model = FakeModel(64, 4)
    seqs = [make_seq(f"r{i}", range(10 * i, 10 * i + 5), max_tokens=2 + i) for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    first = step(scheduler, model)
    assert [e.request_id for e in first.scheduled] == ["r0", "r1"]
    assert scheduler.num_waiting == 2
    admitted_order = ["r0", "r1"]
    while scheduler.has_unfinished:
        for entry in step(scheduler, model).scheduled:
            if entry.request_id not in admitted_order:
                admitted_order.append(entry.request_id)
    assert admitted_order == ["r0", "r1", "r2", "r3"]
    for seq in seqs:
        assert seq.output_ids == reference_outputs(seq.prompt_ids, seq.params.max_tokens)
        assert seq.finish_reason == "length"


def test_a_blocked_head_of_queue_is_not_overtaken():
    scheduler = make_scheduler(num_blocks=8, block_size=4, max_num_batched_tokens=64)
    model = FakeModel(8, 4)
    scheduler.add(make_seq("big-running", range(16), max_tokens=4))
    step(scheduler, model)  # 4 blocks
    scheduler.add(make_seq("big-waiting", range(100, 116), max_tokens=4))  # needs 4 blocks
    scheduler.add(make_seq("small", range(3), max_tokens=1))  # would fit
    output = step(scheduler, model)  # the decode takes a 5th block: 3 left
    assert [e.request_id for e in output.scheduled] == ["big-running"]
    assert [s.request_id for s in scheduler.waiting] == ["big-waiting", "small"]
    run_to_completion(scheduler, model)


def test_token_budget_and_max_num_seqs_are_respected():
    scheduler = make_scheduler(max_num_seqs=3, max_num_batched_tokens=16)
    model = FakeModel(64, 4)
    for i in range(6):
        scheduler.add(make_seq(f"r{i}", range(i, i + 7), max_tokens=3))
    output = step(scheduler, model)
    # 7 + 7 + 2 (the third prompt's first chunk) = 16 tokens
    assert [(e.request_id, e.num_tokens, e.is_sampling) for e in output.scheduled] == [
        ("r0", 7, True), ("r1", 7, True), ("r2", 2, False)]
    assert scheduler.num_running == 3 and scheduler.num_waiting == 3
    run_to_completion(scheduler, model)  # `step` checks both limits every step


def test_long_prompt_is_chunked_between_decodes():
    scheduler = make_scheduler(num_blocks=128, max_num_batched_tokens=32)
    model = FakeModel(128, 4)
    short = [make_seq(f"s{i}", range(i, i + 3), max_tokens=30) for i in range(2)]
    for seq in short:
        scheduler.add(seq)
    step(scheduler, model)
    long_prompt = make_seq("long", range(500, 600), max_tokens=2)
    scheduler.add(long_prompt)
    chunks = []
    while long_prompt.num_computed_tokens < long_prompt.num_prompt_tokens:
        output = step(scheduler, model)
        by_id = {e.request_id: e for e in output.scheduled}
        assert by_id["s0"].num_tokens == 1 and by_id["s1"].num_tokens == 1  # decodes every step
        assert [e.request_id for e in output.scheduled][:2] == ["s0", "s1"]  # and first
        chunks.append((by_id["long"].num_tokens, by_id["long"].is_sampling))
    assert chunks == [(30, False), (30, False), (30, False), (10, True)]
    assert len(long_prompt.output_ids) == 1
    run_to_completion(scheduler, model)
    assert long_prompt.output_ids == reference_outputs(range(500, 600), 2)


def test_second_sequence_hits_a_three_block_prefix():
    scheduler = make_scheduler(num_blocks=32, block_size=4)
    model = FakeModel(32, 4)
    shared_prefix = list(range(100, 112))  # three full blocks
    first = make_seq("first", shared_prefix + [1, 2], max_tokens=8)
    scheduler.add(first)
    step(scheduler, model)
    second = make_seq("second", shared_prefix + [5, 6, 7], max_tokens=3)
    scheduler.add(second)
    output = step(scheduler, model)
    entry = {e.request_id: e for e in output.scheduled}["second"]
    assert (entry.start_position, entry.num_tokens, entry.is_sampling) == (12, 3, True)
    assert second.num_cached_tokens == 12
    manager = scheduler.block_manager
    assert second.block_table[:3] == first.block_table[:3]
    assert [manager.refcount(b) for b in second.block_table[:3]] == [2, 2, 2]
    assert manager.num_prefix_cache_hit_tokens == 12
    assert manager.num_prefix_cache_queried_tokens == 14 + 15
    run_to_completion(scheduler, model)
    assert second.output_ids == reference_outputs(shared_prefix + [5, 6, 7], 3)
    assert manager.num_free_blocks == 32


def test_newest_running_sequence_is_preempted_and_recomputed():
    # 6 blocks of 4; each stream grows to 8 + 12 - 1 = 19 tokens (5 blocks): both cannot finish together
    scheduler = make_scheduler(num_blocks=6, block_size=4, enable_prefix_caching=False)
    model = FakeModel(6, 4)
    older, newer = make_seq("older", range(8), max_tokens=12), make_seq("newer", range(50, 58), max_tokens=12)
    scheduler.add(older)
    scheduler.add(newer)
    preemptions = []
    readmission = None
    while scheduler.has_unfinished:
        was_waiting = newer.status is SequenceStatus.WAITING and newer.num_preemptions > 0
        output = step(scheduler, model)
        preemptions.extend(seq.request_id for seq in output.preempted)
        if was_waiting and readmission is None:
            entry = {e.request_id: e for e in output.scheduled}.get("newer")
            if entry is not None:
                readmission = (entry.start_position, entry.num_tokens, len(newer.output_ids) - 1)
    assert preemptions and set(preemptions) == {"newer"}
    assert older.num_preemptions == 0 and newer.num_preemptions == len(preemptions)
    assert scheduler.num_preemptions == len(preemptions)
    # recomputed from scratch: prompt plus every output kept across the preemption
    start, num_tokens, num_outputs_before = readmission
    assert start == 0 and num_tokens == 8 + num_outputs_before
    assert older.output_ids == reference_outputs(range(8), 12)
    assert newer.output_ids == reference_outputs(range(50, 58), 12)
    assert scheduler.block_manager.num_free_blocks == 6


def test_older_sequence_needing_a_block_preempts_the_newest_one():
    scheduler = make_scheduler(num_blocks=4, block_size=4, enable_prefix_caching=False)
    model = FakeModel(4, 4)
    older, newer = make_seq("older", range(8), max_tokens=8), make_seq("newer", [7], max_tokens=5)
    scheduler.add(older)
    step(scheduler, model)  # older: 8 prompt tokens in 2 blocks, 1 output
    scheduler.add(newer)
    step(scheduler, model)  # older decodes into a third block (slot 8); newer takes the last one
    assert scheduler.block_manager.num_free_blocks == 0
    while older.num_computed_tokens < 12:  # older fills its third block
        step(scheduler, model)
    output = step(scheduler, model)  # older needs a fourth block: the newest goes
    assert [s.request_id for s in output.preempted] == ["newer"]
    assert newer.status is SequenceStatus.WAITING and newer.block_table == []
    assert newer.num_computed_tokens == 0 and newer.output_ids  # outputs are kept
    assert scheduler.waiting[0] is newer
    run_to_completion(scheduler, model)
    assert newer.output_ids == reference_outputs([7], 5)


def test_request_that_can_never_fit_is_rejected_with_the_limit():
    scheduler = make_scheduler(num_blocks=64, block_size=16, max_model_len=4096)
    with pytest.raises(RequestTooLarge, match=r"^request needs 70 KV blocks \(prompt 1000 \+ max_tokens 120 "
                                              r"tokens\) but the pool has 64 blocks of 16 tokens$"):
        scheduler.add(make_seq("huge", range(1000), max_tokens=120))
    with pytest.raises(RequestTooLarge, match="max_model_len is 4096"):
        scheduler.add(make_seq("long", range(4000), max_tokens=100))
    scheduler.add(make_seq("fits", range(1000), max_tokens=24))  # exactly 64 blocks
    assert scheduler.num_waiting == 1
    with pytest.raises(ValueError, match="already scheduled"):
        scheduler.add(make_seq("fits", range(3)))
    with pytest.raises(ValueError, match="at least one token"):
        scheduler.add(make_seq("empty", []))


def test_abort_frees_blocks_and_is_idempotent():
    scheduler = make_scheduler(num_blocks=16, block_size=4)
    model = FakeModel(16, 4)
    running, waiting = make_seq("running", range(10), max_tokens=5), make_seq("waiting", range(3))
    scheduler.add(running)
    step(scheduler, model)
    assert scheduler.block_manager.num_free_blocks < 16
    scheduler.add(waiting)
    assert scheduler.abort("running") is running
    assert scheduler.abort("running") is None
    scheduler.finish(running, "stop")  # finishing again changes nothing
    assert running.finish_reason == "cancelled" and running.block_table == []
    assert scheduler.abort("waiting") is waiting
    assert scheduler.abort("never-added") is None
    assert not scheduler.has_unfinished and scheduler.block_manager.num_free_blocks == 16
    scheduler.check_integrity()
    assert scheduler.schedule().is_empty


def test_update_rejects_a_token_for_a_chunk_that_samples_nothing():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add(make_seq("a", range(20)))
    output = scheduler.schedule()
    assert not output.scheduled[0].is_sampling
    with pytest.raises(ValueError, match="samples nothing"):
        scheduler.update(output, {"a": 1})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_stress_drains_with_every_block_free(seed):
    rng = random.Random(seed)
    num_blocks, block_size = 48, 4
    scheduler = make_scheduler(num_blocks=num_blocks, block_size=block_size, max_num_seqs=6,
                               max_num_batched_tokens=24, max_model_len=160)
    model = FakeModel(num_blocks, block_size)
    prefixes = [[rng.randrange(1000) for _ in range(rng.randrange(4, 20))] for _ in range(5)]
    expected: dict[str, list[int]] = {}
    all_seqs: list[Sequence] = []
    for request_index in range(300):
        prompt = (rng.choice(prefixes) if rng.random() < 0.6 else []) + [
            rng.randrange(1000) for _ in range(rng.randrange(1, 40))]
        max_tokens = rng.randrange(1, 60)
        seq = make_seq(f"r{request_index}", prompt, max_tokens=max_tokens)
        try:
            scheduler.add(seq)
        except RequestTooLarge:
            assert len(prompt) + max_tokens > 160 or -(-(len(prompt) + max_tokens) // block_size) > num_blocks
            continue
        all_seqs.append(seq)
        expected[seq.request_id] = reference_outputs(prompt, max_tokens)
        for _ in range(rng.randrange(0, 3)):
            step(scheduler, model)
        if rng.random() < 0.1 and all_seqs:
            scheduler.abort(rng.choice(all_seqs).request_id)
            scheduler.check_integrity()
    run_to_completion(scheduler, model)
    assert scheduler.block_manager.num_free_blocks == num_blocks
    assert scheduler.block_manager.held_request_ids == ()
    assert scheduler.num_preemptions > 0  # the pool is small enough that preemption happens
    assert scheduler.block_manager.num_prefix_cache_hit_tokens > 0
    for seq in all_seqs:
        assert seq.is_finished
        if seq.finish_reason == "length":
            assert seq.output_ids == expected[seq.request_id]
        else:
            assert seq.finish_reason == "cancelled"
            assert seq.output_ids == expected[seq.request_id][:len(seq.output_ids)]
