"""Continuous-batching scheduler: waiting/running queues, chunked prefill, decode-first packing,
preemption by recomputation.

The engine thread drives it, one step at a time:

    for request_id in cancelled_since_last_step:
        scheduler.abort(request_id)                  # idempotent; frees the blocks
    output = scheduler.schedule()                    # SchedulerOutput; empty when nothing to do
    if not output.is_empty:
        # the model runner feeds, for each entry, tokens
        #   entry.seq.all_token_ids[entry.start_position : entry.start_position + entry.num_tokens]
        # at positions start_position.., KV slots from entry.seq.block_table, and samples one token
        # only for entries with entry.is_sampling
        sampled = {request_id: token_id, ...}        # sampling entries only
        for seq in scheduler.update(output, sampled):   # sequences that got a new token
            if stop_condition(seq):                     # eos, stop string, max_tokens, max_model_len
                scheduler.finish(seq, reason)

`add(seq)` may be called between steps (from the engine thread) and raises `RequestTooLarge` for a
sequence that could never fit the pool or the context alone. If a step fails (e.g. device OOM),
the engine skips `update` and `finish`es the affected sequences with reason "error".

Packing order within `max_num_batched_tokens` and `max_num_seqs`:
1. running sequences with one token to feed (decodes), oldest first;
2. running sequences still prefilling, oldest first, one chunk each (what the budget leaves);
3. waiting sequences in FCFS order (preempted ones are put back at the front), each starting
   after its longest prefix-cache hit; admission stops at the first one that does not fit, so
   a large request is never starved by smaller ones behind it.
When a running sequence's next step needs blocks and none are left, the NEWEST running sequence
is preempted (blocks freed, computed tokens forgotten, outputs kept, back to the front of
waiting) and the allocation retried; the sequence preempts itself if it is the newest. No
admission happens in a step that preempted. Since the oldest running sequence is never preempted
for a newer one and every accepted sequence fits the pool alone, the oldest always progresses.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Mapping

from .block_manager import BlockManager
from .scheduler_config import SchedulerConfig
from .sequence import Sequence, SequenceStatus


class RequestTooLarge(ValueError):
    """A sequence that could never be scheduled, even alone. Maps to HTTP 400."""

    code = "context_length_exceeded"
    param = None


@dataclass(frozen=True)
class ScheduledSequence:
    """One sequence's share of a step: `num_tokens` tokens starting at `start_position`.

    `is_sampling` is True only when this chunk reaches the end of the sequence's known tokens, so
    the step yields logits for a new token; earlier prefill chunks sample nothing.
    """

    seq: Sequence
    start_position: int  # seq.num_computed_tokens when scheduled
    num_tokens: int
    is_sampling: bool

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.start_position < 0:
            raise ValueError(f"bad scheduled chunk: start {self.start_position}, {self.num_tokens} tokens")

    @property
    def request_id(self) -> str:
        return self.seq.request_id

    @property
    def token_ids(self) -> list[int]:
        return self.seq.all_token_ids[self.start_position:self.start_position + self.num_tokens]

    @property
    def is_prefill(self) -> bool:
        """True when this chunk feeds prompt tokens (or recomputes outputs after preemption)."""
        return self.num_tokens > 1 or self.start_position < self.seq.num_prompt_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    """The ragged batch of one step plus the sequences preempted while building it."""

    scheduled: tuple[ScheduledSequence, ...]
    preempted: tuple[Sequence, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def num_batched_tokens(self) -> int:
        return sum(entry.num_tokens for entry in self.scheduled)


class Scheduler:
    """Decides, each step, which sequences run and how many tokens each feeds.

    Not thread-safe: every method is called from the engine thread.
    """

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        if config.block_size != block_manager.block_size:
            raise ValueError(f"scheduler block_size {config.block_size} != block manager "
                             f"block_size {block_manager.block_size}")
        self.config = config
        self.block_manager = block_manager
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # admission order: last = newest = first preempted
        self._seqs_by_request_id: dict[str, Sequence] = {}
        self.num_preemptions = 0  # total since start, for `num_preemptions_total`

    # ----------------------------------------------------------------- queue state

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def has_unfinished(self) -> bool:
        return bool(self._running or self._waiting)

    @property
    def running(self) -> tuple[Sequence, ...]:
        return tuple(self._running)

    @property
    def waiting(self) -> tuple[Sequence, ...]:
        return tuple(self._waiting)

    def get(self, request_id: str) -> Sequence | None:
        """The unfinished sequence with this id, or None."""
        return self._seqs_by_request_id.get(request_id)

    # ----------------------------------------------------------------- lifecycle

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence at the back of waiting.

        Raises RequestTooLarge when prompt + max_tokens exceeds max_model_len or needs more blocks
        than the whole pool, ValueError for a duplicate request id, an empty prompt or a sequence
        that is not fresh.
        """
        if seq.request_id in self._seqs_by_request_id:
            raise ValueError(f"request id {seq.request_id!r} is already scheduled")
        if not seq.prompt_ids:
            raise ValueError(f"{seq.request_id}: the prompt must contain at least one token")
        if seq.status is not SequenceStatus.WAITING or seq.block_table or seq.num_computed_tokens:
            raise ValueError(f"{seq.request_id}: only a fresh waiting sequence can be added")
        num_prompt, max_tokens = seq.num_prompt_tokens, seq.params.max_tokens
        num_max_tokens = num_prompt + max_tokens
        if num_max_tokens > self.config.max_model_len:
            raise RequestTooLarge(
                f"request needs {num_max_tokens} tokens (prompt {num_prompt} + max_tokens {max_tokens}) "
                f"but max_model_len is {self.config.max_model_len}")
        num_max_blocks = self.block_manager.num_blocks_for_tokens(num_max_tokens)
        if num_max_blocks > self.block_manager.num_blocks:
            raise RequestTooLarge(
                f"request needs {num_max_blocks} KV blocks (prompt {num_prompt} + max_tokens {max_tokens} "
                f"tokens) but the pool has {self.block_manager.num_blocks} blocks of "
                f"{self.block_manager.block_size} tokens")
        self._waiting.append(seq)
        self._seqs_by_request_id[seq.request_id] = seq

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark `seq` finished with `reason`, drop it from the queues and free its blocks. Idempotent."""
        if seq.is_finished or self._seqs_by_request_id.get(seq.request_id) is not seq:
            return
        if seq.status is SequenceStatus.RUNNING:
            self._running.remove(seq)
        else:
            self._waiting.remove(seq)
        self.block_manager.free(seq)
        del self._seqs_by_request_id[seq.request_id]
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def abort(self, request_id: str, reason: str = "cancelled") -> Sequence | None:
        """Finish the unfinished sequence `request_id`; returns it, or None if unknown/finished."""
        seq = self._seqs_by_request_id.get(request_id)
        if seq is not None:
            self.finish(seq, reason)
        return seq

    # ----------------------------------------------------------------- one step

    def schedule(self) -> SchedulerOutput:
        """Build the next step's batch (see the module docstring for the packing order)."""
        token_budget = self.config.max_num_batched_tokens
        entries: dict[str, ScheduledSequence] = {}
        preempted: list[Sequence] = []

        for is_decode_pass in (True, False):
            index = 0
            while index < len(self._running) and token_budget > 0:
                seq = self._running[index]
                num_pending = seq.num_pending_tokens
                if seq.request_id in entries or num_pending == 0 or (num_pending == 1) != is_decode_pass:
                    index += 1
                    continue
                num_new_tokens = min(num_pending, token_budget)
                while not self.block_manager.allocate_slots(seq, num_new_tokens):
                    victim = self._running[-1]
                    token_budget += self._preempt(victim, entries)
                    preempted.append(victim)
                    if victim is seq:
                        break
                if seq.status is not SequenceStatus.RUNNING:
                    break  # it was the newest and preempted itself: nothing after it
                entries[seq.request_id] = self._entry(seq, num_new_tokens)
                token_budget -= num_new_tokens
                index += 1

        if not preempted:
            self._admit_waiting(entries, token_budget)
        return SchedulerOutput(scheduled=tuple(entries.values()), preempted=tuple(preempted))

    def update(self, output: SchedulerOutput, sampled_token_ids: Mapping[str, int | None]) -> list[Sequence]:
        """Apply a finished model step: advance computed tokens, append sampled tokens, cache blocks.

        `sampled_token_ids` maps request ids of sampling entries to their new token (None or a
        missing key: no token, e.g. the engine is about to fail that request). Entries whose
        sequence finished since `schedule` are skipped. Returns the sequences that got a token,
        in batch order, for the engine's stop checks.
        """
        for entry in output.scheduled:
            token_id = sampled_token_ids.get(entry.request_id)
            if token_id is not None and not entry.is_sampling:
                raise ValueError(f"{entry.request_id}: a token was sampled for a chunk that samples nothing")
            if entry.seq.status is SequenceStatus.RUNNING and entry.seq.num_computed_tokens != entry.start_position:
                raise RuntimeError(f"{entry.request_id}: stale scheduler output (computed "
                                   f"{entry.seq.num_computed_tokens}, scheduled at {entry.start_position})")
        received: list[Sequence] = []
        for entry in output.scheduled:
            seq = entry.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens += entry.num_tokens
            token_id = sampled_token_ids.get(entry.request_id)
            if token_id is not None:
                seq.output_ids.append(token_id)
                received.append(seq)
            self.block_manager.cache_computed_blocks(seq)
        return received

    # ----------------------------------------------------------------- integrity

    def check_integrity(self) -> None:
        """Assert the queue invariants, then the block manager's."""
        running_ids = [seq.request_id for seq in self._running]
        waiting_ids = [seq.request_id for seq in self._waiting]
        assert len(set(running_ids)) == len(running_ids), "a sequence is twice in running"
        assert len(set(waiting_ids)) == len(waiting_ids), "a sequence is twice in waiting"
        assert not set(running_ids) & set(waiting_ids), "a sequence is both running and waiting"
        assert set(running_ids) | set(waiting_ids) == set(self._seqs_by_request_id), (
            "the request index differs from the queues")
        assert len(self._running) <= self.config.max_num_seqs, "more running sequences than max_num_seqs"
        for seq in self._running:
            assert seq.status is SequenceStatus.RUNNING, f"{seq.request_id} in running with status {seq.status}"
            assert seq.block_table, f"running {seq.request_id} holds no blocks"
            assert seq.num_computed_tokens <= seq.num_tokens, f"{seq.request_id} computed past its tokens"
        for seq in self._waiting:
            assert seq.status is SequenceStatus.WAITING, f"{seq.request_id} in waiting with status {seq.status}"
            assert not seq.block_table, f"waiting {seq.request_id} holds blocks"
            assert seq.num_computed_tokens == 0, f"waiting {seq.request_id} has computed tokens"
        assert set(self.block_manager.held_request_ids) == set(running_ids), (
            "the block manager's live sequences differ from running")
        self.block_manager.check_integrity()

    # ----------------------------------------------------------------- internals

    def _admit_waiting(self, entries: dict[str, ScheduledSequence], token_budget: int) -> None:
        """Admit waiting sequences FCFS into `entries` while budget, seats and blocks last."""
        block_size = self.block_manager.block_size
        while self._waiting and token_budget > 0 and len(self._running) < self.config.max_num_seqs:
            seq = self._waiting[0]
            cached_block_ids = self.block_manager.find_cached_prefix(seq)
            num_cached_tokens = len(cached_block_ids) * block_size
            num_new_tokens = min(seq.num_tokens - num_cached_tokens, token_budget)
            if not self.block_manager.allocate_slots(seq, num_new_tokens, cached_block_ids):
                break  # strict FCFS: nothing behind it may overtake
            self._waiting.popleft()
            seq.num_computed_tokens = num_cached_tokens
            seq.num_cached_tokens = num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self._running.append(seq)
            entries[seq.request_id] = self._entry(seq, num_new_tokens)
            token_budget -= num_new_tokens

    def _preempt(self, victim: Sequence, entries: dict[str, ScheduledSequence]) -> int:
        """Send `victim` back to the front of waiting; returns tokens it had been given this step."""
        self._running.remove(victim)
        entry = entries.pop(victim.request_id, None)
        self.block_manager.free(victim)
        victim.num_computed_tokens = 0
        victim.status = SequenceStatus.WAITING
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self._waiting.appendleft(victim)
        return entry.num_tokens if entry is not None else 0

    @staticmethod
    def _entry(seq: Sequence, num_new_tokens: int) -> ScheduledSequence:
        start = seq.num_computed_tokens
        return ScheduledSequence(seq=seq, start_position=start, num_tokens=num_new_tokens,
                                 is_sampling=start + num_new_tokens == seq.num_tokens)
