"""The synchronous engine core: load a model, admit requests, run steps, emit deltas.

`LLMEngine` is single-threaded (the async wrapper in `runtime.async_engine` runs it on its own
thread). One `step()` = schedule a ragged batch -> model forward -> sample -> stop checks.

Environment switches (for tests and debugging):
- `CUPYSERVE_CHECK_INTEGRITY=1`: after every step, check the scheduler's and block manager's
  invariants; a violation is logged as an `error` event and makes `health()` report unhealthy.
- `CUPYSERVE_FAULT_OOM_AT_ALLOC=N`: the backend raises its OOM error at the Nth step-scoped
  allocation, counted from the end of startup (see `kernels.cpu_ops`).
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..kernels import cuda_available, get_ops
from ..kernels.fault_injection import FAULT_OOM_ENV
from .block_manager import BlockManager
from .catalog import resolve_model
from .detokenizer import IncrementalDetokenizer, StopStringMatcher
from .device_memory import EngineMemory
from .engine_args import EngineArgs
from .gguf_loader import GGUFFile
from .kv_cache import KVCache
from .log import ProgressBar, log_event
from .metrics import engine_metrics
from .model_runner import ModelRunner
from .model_tokenizer import load_model_tokenizer
from .models import load_model, resolve_model_config
from .outputs import EngineError, StepOutput, TokenLogprob
from .request_state import RequestState
from .sampler import Sampler, make_generator
from .sampling_params import SamplingParams
from .scheduler import RequestTooLarge, Scheduler
from .scheduler_config import SchedulerConfig
from .sequence import Sequence


CHECK_INTEGRITY_ENV = "CUPYSERVE_CHECK_INTEGRITY"


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    return requested


class LLMEngine:
    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        self.device = pick_device(args.device)
        path = resolve_model(args.model, pull_if_missing=args.pull_if_missing)
        self.model_path = path
        log_event("model_load_start", model=str(path), device=self.device)
        load_start = time.monotonic()
        self.gguf = GGUFFile.open(path)
        self._quant_kind = self._describe_quant_kind()
        model_tokenizer = load_model_tokenizer(self.gguf, args.tokenizer_file)
        self.tokenizer, self.tokenizer_source = model_tokenizer.tokenizer, model_tokenizer.source
        self.ops = get_ops(self.device)
        self._pause_fault_injection()
        self.memory = EngineMemory(self.ops, self.device, args, resolve_model_config(self.gguf)[0],
                                   sum(info.num_bytes for info in self.gguf.tensors.values()))
        self.model = self._load_model()
        self.config = self.model.config
        self.kv_config = getattr(self.model, "layout", self.config)  # this rank's KV heads
        self.model_name = args.served_model_name or path.name.removesuffix(".gguf")
        self.max_model_len = min(args.max_model_len or self.config.context_length,
                                 self.config.context_length)
        self.kv_cache = KVCache.allocate(self.kv_config, self.ops,
                                         self.memory.kv_blocks(self.kv_config, self.max_model_len), args.block_size)
        self.block_manager = BlockManager(self.kv_cache.num_blocks, args.block_size,
                                          args.enable_prefix_caching)
        max_num_batched_tokens = max(args.max_num_batched_tokens, args.max_num_seqs)
        self.scheduler = Scheduler(
            SchedulerConfig(max_num_seqs=args.max_num_seqs,
                            max_num_batched_tokens=max_num_batched_tokens,
                            max_model_len=self.max_model_len, block_size=args.block_size),
            self.block_manager,
        )
        self.decode_graphs = self._capture_decode_graphs()
        self.memory.hold_graphs(self.decode_graphs)
        self.memory.watch_residency(lambda: [self.model, self.kv_cache.layers])
        self.runner = ModelRunner(self.model, self.ops, self.kv_cache, self.decode_graphs)
        self.check_step = getattr(self.model, "check_step", None)
        self.sampler = Sampler(self.config.vocab_size, self.ops.sampling)
        self.metrics = engine_metrics()
        self.metrics.model_info.labels(model=self.model_name, family=self.config.family,
                                       quant_kind=self.quant_kind, device=self.device).set(1)
        self.requests: dict[str, RequestState] = {}
        self.num_requests_seen = 0
        self.is_checking_integrity = os.environ.get(CHECK_INTEGRITY_ENV, "") == "1"
        self.integrity_error: str | None = None  # the first violation found; sticky
        self._restart_fault_injection()
        log_event("model_load_complete", model=self.model_name, family=self.config.family,
                  device=self.device, seconds=round(time.monotonic() - load_start, 3),
                  weight_bytes=self.model.num_weight_bytes, kv_blocks=self.kv_cache.num_blocks,
                  kv_bytes=self.kv_cache.num_bytes)

    # ------------------------------------------------------------------ setup helpers

    def _progress_reporter(self):
        bar = ProgressBar("loading model", 100)
        next_percent = [0]

        def report(done: int, total: int) -> None:
            percent = 100 * done // total
            bar.update(percent)
            while next_percent[0] <= percent and next_percent[0] <= 100:
                log_event("model_load_progress", percent=next_percent[0])
                next_percent[0] += 25

        return report

    def _capture_decode_graphs(self):
        """CUDA graphs of the decode step per batch bucket (None on CPU or with enforce_eager)."""
        if self.args.enforce_eager or not getattr(self.ops, "supports_graphs", False):
            return None
        from .decode_graphs import DecodeGraphs

        start = time.monotonic()
        max_blocks_per_seq = -(-self.max_model_len // self.args.block_size)
        if self.args.tensor_parallel_size > 1:  # every rank captures (runtime/parallel/graph_sync.py)
            graphs = self.model.capture_decode_graphs(self.kv_cache, self.args.max_num_seqs, max_blocks_per_seq)
        else:
            graphs = DecodeGraphs(self.model, self.ops, self.kv_cache, self.args.max_num_seqs,
                                  max_blocks_per_seq)
        log_event("cuda_graphs_ready", seconds=round(time.monotonic() - start, 3),
                  buckets=graphs.sizes, graph_bytes=graphs.num_bytes())
        return graphs

    def _load_model(self):
        if self.args.tensor_parallel_size == 1:
            return load_model(self.gguf, self.ops, self._progress_reporter())
        from .parallel.tensor_parallel_model import TensorParallelModel

        return TensorParallelModel(self.gguf, self.ops, self.device, self.args.tensor_parallel_size,
                                   self._progress_reporter(), self.args.tensor_parallel_timeout_s)

    def close(self) -> None:
        """Stop what the engine started outside this process (tensor-parallel ranks)."""
        getattr(self.model, "close", lambda: None)()

    # Injected OOMs target steps: startup's own allocations (the KV pool) neither fail nor count,
    # so N=1 fails the first step whatever the model's layer count.
    def _pause_fault_injection(self) -> None:
        if os.environ.get(FAULT_OOM_ENV) and hasattr(self.ops, "set_fault_injection"):
            self.ops.set_fault_injection(0)

    def _restart_fault_injection(self) -> None:
        fail_at = int(os.environ.get(FAULT_OOM_ENV, "0") or 0)
        if fail_at and hasattr(self.ops, "set_fault_injection"):
            self.ops.set_fault_injection(fail_at)

    @property
    def quant_kind(self) -> str:
        return self._quant_kind

    def _describe_quant_kind(self) -> str:
        """GGML types by bytes, largest first; computed once since /health must stay cheap."""
        counts: dict[str, int] = {}
        for info in self.gguf.tensors.values():
            name = getattr(info.ggml_type, "name", str(info.ggml_type))
            counts[name] = counts.get(name, 0) + info.num_bytes
        return "+".join(sorted(counts, key=lambda n: -counts[n]))

    # ------------------------------------------------------------------ requests

    def check_admissible(self, num_prompt_tokens: int, params: SamplingParams) -> None:
        """Raise RequestTooLarge when the request could never run (thread-safe: pure arithmetic)."""
        if num_prompt_tokens == 0:
            raise RequestTooLarge("the prompt is empty")
        total = num_prompt_tokens + params.max_tokens
        if total > self.max_model_len:
            raise RequestTooLarge(
                f"this model's maximum context length is {self.max_model_len} tokens; the request "
                f"has {num_prompt_tokens} prompt tokens and asks for {params.max_tokens} more")
        blocks = -(-total // self.args.block_size)
        if blocks > self.kv_cache.num_blocks:
            raise RequestTooLarge(
                f"request needs {blocks} KV blocks ({total} tokens) but the cache holds "
                f"{self.kv_cache.num_blocks} blocks of {self.args.block_size} tokens")

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    correlation_id: str | None = None) -> None:
        self.check_admissible(len(prompt_ids), params)
        seq = Sequence(request_id=request_id, prompt_ids=list(prompt_ids), params=params)
        rng = None
        if not params.is_greedy:
            rng = make_generator(params.seed, server_seed=self.args.seed,
                                 request_index=self.num_requests_seen,
                                 choice_index=int(params.extra.get("choice_index", 0)))
        self.num_requests_seen += 1
        state = RequestState(
            seq=seq,
            detokenizer=IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens),
            stop_matcher=StopStringMatcher(params.stop),
            eos_ids=frozenset(self.tokenizer.eos_ids),
            rng=rng,
            max_model_len=self.max_model_len,
            correlation_id=correlation_id,
        )
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = [None]
        self.scheduler.add(seq)
        self.requests[request_id] = state

    def abort_request(self, request_id: str) -> StepOutput | None:
        """Cancel a request; returns its final output, or None when it is unknown or finished."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        self.scheduler.abort(request_id)
        out = state.finish("cancelled")
        self._record_finish(state, "cancelled")
        return state.take_output() or out

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ------------------------------------------------------------------ the step

    def step(self) -> list[StepOutput]:
        """Run one batch; returns the deltas produced (finished requests included).

        In integrity mode the invariants are checked after the step, whatever it did."""
        try:
            return self._step()
        finally:
            if self.is_checking_integrity:
                self.verify_integrity()

    def verify_integrity(self) -> bool:
        """Check the scheduler's and block manager's invariants and that every request the engine
        tracks is one the scheduler holds. A violation is logged as an `error` event and kept in
        `integrity_error` (health turns unhealthy); returns whether everything held."""
        try:
            self.scheduler.check_integrity()
            held = {s.request_id for s in self.scheduler.running + self.scheduler.waiting}
            assert held == set(self.requests), (
                f"engine requests {sorted(set(self.requests) - held)} unknown to the scheduler, "
                f"scheduler sequences {sorted(held - set(self.requests))} unknown to the engine")
        except AssertionError as exc:
            message = str(exc) or "assertion failed"
            log_event("error", kind="integrity", message=message)
            if self.integrity_error is None:
                self.integrity_error = message
            return False
        return True

    def _step(self) -> list[StepOutput]:
        output = self.scheduler.schedule()
        for seq in output.preempted:
            self.metrics.num_preemptions.inc()
        if output.is_empty:
            self._update_gauges()
            return []
        entries = output.scheduled
        states = [self.requests[e.request_id] for e in entries]
        now = time.monotonic()
        for entry, state in zip(entries, states):
            if state.first_scheduled_time is None:
                state.first_scheduled_time = now
                self.metrics.request_queue_time.observe(now - state.arrival_time)
                self.metrics.prefix_cache_queries.inc(entry.seq.num_prompt_tokens)
                self.metrics.prefix_cache_hits.inc(entry.seq.num_cached_tokens)
        wants_all = [s.prompt_logprobs is not None and e.start_position < e.seq.num_prompt_tokens
                     for e, s in zip(entries, states)]
        try:
            step_logits = self.runner.execute(entries, wants_all)
        except self.ops.OutOfMemoryError as exc:
            return self._fail_step(states, exc)
        num_prompt_tokens = sum(e.num_tokens for e in entries if e.is_prefill)
        if num_prompt_tokens:
            self.metrics.prompt_tokens.inc(num_prompt_tokens)
        sampling = [(i, e) for i, e in enumerate(entries) if e.is_sampling]
        for i, entry in enumerate(entries):
            if wants_all[i]:  # rare: this chunk's rows cross to the host
                self._collect_prompt_logprobs(
                    states[i], entry, self.ops.to_host(step_logits.logits[step_logits.rows[i]]))
        sampled: dict[str, int | None] = {}
        if sampling:
            try:
                rows = self._sampling_rows(step_logits, [i for i, _ in sampling])
                results = self.sampler.sample(rows, [states[i] for i, _ in sampling])
            except self.ops.OutOfMemoryError as exc:
                if self.check_step is not None:
                    self.check_step()  # the forward's collectives all completed: the ranks agree
                return self._fail_step(states, exc)
            for (i, entry), result in zip(sampling, results):
                sampled[entry.request_id] = result.token_id
        if self.check_step is not None:
            self.check_step()  # tensor parallel: a rank that died during the step voids it
        logprob_by_id = {}
        if sampling:
            logprob_by_id = {entry.request_id: r.logprob for (_, entry), r in zip(sampling, results)}
        outputs: list[StepOutput] = []
        received = self.scheduler.update(output, sampled)
        if received:
            self.metrics.generation_tokens.inc(len(received))
        for seq in received:
            state = self.requests[seq.request_id]
            token_id = seq.output_ids[-1]
            if state.last_token_time is not None:
                self.metrics.inter_token_latency.observe(time.monotonic() - state.last_token_time)
            elif state.arrival_time is not None:
                self.metrics.time_to_first_token.observe(time.monotonic() - state.arrival_time)
            reason = state.on_token(token_id, logprob_by_id.get(seq.request_id))
            if reason is not None:
                self.scheduler.finish(seq, reason)
                state.finish(reason)
                self._record_finish(state, reason)
                del self.requests[seq.request_id]
            out = state.take_output()
            if out is not None:
                outputs.append(out)
        self._update_gauges()
        return outputs

    def _sampling_rows(self, step_logits, entry_indices: list[int]):
        """The last logits row of each sampling entry, gathered with one index where the logits
        live (no per-row copies; none at all when those rows are already all of them, in order)."""
        logits = step_logits.logits
        row_ids = [step_logits.rows[i].stop - 1 for i in entry_indices]
        if row_ids == list(range(logits.shape[0])):
            return logits
        return logits[self.ops.sampling.xp.asarray(np.asarray(row_ids, dtype=np.int64))]

    def _collect_prompt_logprobs(self, state: RequestState, entry, logits: np.ndarray) -> None:
        """Row j of the chunk predicts the token at position start + j + 1."""
        prompt = entry.seq.prompt_ids
        top_n = state.seq.params.prompt_logprobs or 0
        targets = np.arange(entry.start_position + 1, entry.start_position + 1 + logits.shape[0])
        keep = (targets < len(prompt)) & (targets >= len(state.prompt_logprobs))
        if not keep.any():
            return
        rows = logits[keep].astype(np.float64)
        rows -= rows.max(axis=1, keepdims=True)
        logprobs = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
        for row, target in zip(logprobs, targets[keep]):
            token_id = prompt[target]
            top = ()
            if top_n:
                top_ids = np.argpartition(-row, top_n)[:top_n]
                top_ids = top_ids[np.lexsort((top_ids, -row[top_ids]))]
                top = tuple((int(t), float(row[t])) for t in top_ids)
            state.prompt_logprobs.append(TokenLogprob(token_id=token_id,
                                                      logprob=float(row[token_id]), top=top))

    def _fail_step(self, states: list[RequestState], exc: BaseException) -> list[StepOutput]:
        """A device OOM inside the step: fail only this step's requests, free their memory."""
        log_event("error", kind="vram_oom", message=str(exc),
                  request_ids=[s.request_id for s in states])
        self.metrics.oom_recoveries.inc()
        error = EngineError(message=f"out of device memory while running this request: {exc}",
                            code="vram_oom", status=500)
        outputs = []
        for state in states:
            self.scheduler.finish(state.seq, "error")
            state.finish("error", error)
            self._record_finish(state, "error")
            self.requests.pop(state.request_id, None)
            outputs.append(state.take_output())
        self.ops.release_cached_memory()
        self._update_gauges()
        return outputs

    def _record_finish(self, state: RequestState, reason: str) -> None:
        now = time.monotonic()
        self.metrics.request_success.labels(finished_reason=reason).inc()
        self.metrics.e2e_request_latency.observe(now - state.arrival_time)
        ttft = None if state.first_token_time is None else state.first_token_time - state.arrival_time
        log_event("request_end", request_id=state.request_id, correlation_id=state.correlation_id,
                  prompt_tokens=state.seq.num_prompt_tokens, output_tokens=len(state.seq.output_ids),
                  cached_tokens=state.seq.num_cached_tokens,
                  ttft=None if ttft is None else round(ttft, 6),
                  duration=round(now - state.arrival_time, 6), finish_reason=reason)

    def _update_gauges(self) -> None:
        values = (self.scheduler.num_running, self.scheduler.num_waiting, self.block_manager.usage)
        if values == self.metrics.gauge_values:  # most decode steps: nothing moved, skip three locked sets
            return
        self.metrics.gauge_values = values
        self.metrics.num_requests_running.set(values[0])
        self.metrics.num_requests_waiting.set(values[1])
        self.metrics.kv_cache_usage_perc.set(values[2])

    # ------------------------------------------------------------------ introspection

    def vram_bytes_used(self) -> int:
        """Device bytes this server holds: arrays in CuPy's pool plus the decode graphs' pool."""
        return self.memory.bytes_used(self.decode_graphs)

    def health(self) -> dict[str, Any]:
        free_blocks = self.block_manager.num_free_blocks
        fatal_error = getattr(self.model, "failure", None)  # e.g. a tensor-parallel rank died
        return {
            "healthy": self.integrity_error is None and fatal_error is None,
            "fatal_error": fatal_error,
            "tensor_parallel_size": self.args.tensor_parallel_size,
            "integrity_checking": self.is_checking_integrity,
            "integrity_error": self.integrity_error,
            "family": self.config.family,
            "architecture": self.config.architecture,
            "quant_kind": self.quant_kind,
            "device": self.device,
            "resident": self.memory.is_resident(),
            "vram_bytes_used": self.vram_bytes_used(),
            "kv_blocks_total": self.kv_cache.num_blocks,
            "kv_blocks_free": free_blocks,
            "kv_block_size": self.args.block_size,
            "tokenizer_kind": self.tokenizer.kind,
            "tokenizer_source": self.tokenizer_source,
            "vocab_size": self.config.vocab_size,
            "context_length": self.max_model_len,
            "num_requests_running": self.scheduler.num_running,
            "num_requests_waiting": self.scheduler.num_waiting,
        }


def build_engine(args: EngineArgs):
    """Load the model and wrap it in the threaded async engine (the server calls `.start()`)."""
    from .async_engine import AsyncEngine

    return AsyncEngine(LLMEngine(args))
