"""Rank 0 of a tensor-parallel model, as the engine sees it: the same `forward`, `config` and
`layout` as a single-device model. The scheduler, the model runner and the sampler stay on
rank 0; each forward first sends the step plan to the other ranks, then runs rank 0's shard,
whose collectives meet theirs. The gathered logits are whole on rank 0.
"""
from __future__ import annotations

import atexit
from typing import Any

from ...kernels.batch import AttentionBatch
from ..log import log_event
from ..models.weights import ProgressCallback
from .communicator import CommunicatorError
from .communicator_specs import build_communicator, make_specs
from .graph_sync import GraphSpec
from .rank_model import load_rank_model, plan_for_file
from .step_plan import StepPlan
from .worker_group import DEFAULT_STEP_TIMEOUT_S, TensorParallelFailure, WorkerGroup


class TensorParallelModel:
    def __init__(self, gguf_file: Any, ops: Any, device: str, world_size: int,
                 on_progress: ProgressCallback | None = None,
                 step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S) -> None:
        # An unsplittable file fails here, before any spawn, on every device: MoE experts split
        # over ranks (expert parallelism) run on both backends (`moe_ffn`'s expert_range).
        plan_for_file(gguf_file, world_size)
        if device == "cuda":
            import cupy

            num_gpus = cupy.cuda.runtime.getDeviceCount()
            if num_gpus < world_size:
                raise ValueError(f"--tensor-parallel-size {world_size} needs {world_size} GPUs; "
                                 f"{num_gpus} visible")
        self.ops = ops
        self.world_size = world_size
        self.graphs = None  # rank 0's DecodeGraphs, once captured
        specs = make_specs(device, world_size)
        self.group = WorkerGroup(gguf_file.path, device, world_size, specs[1:], step_timeout_s)
        try:
            self.communicator = build_communicator(specs[0], 0, world_size)
            self.model = load_rank_model(gguf_file, ops, 0, world_size, self.communicator, on_progress)
            worker_bytes = self.group.wait_ready()
        except BaseException:
            self.group.close()
            raise
        self.group.on_failure = self._abort_collectives
        # Runs before multiprocessing's own exit hook (registered earlier, so called later),
        # which would terminate the workers and make the monitor report a failure at exit.
        atexit.register(self.close)
        self.config = self.model.config  # the whole model's shape: vocab, context, ...
        self.layout = self.model.layout  # rank 0's share: its KV cache holds these KV heads
        self.num_weight_bytes = self.model.num_weight_bytes
        self.num_weight_bytes_per_rank = [self.model.num_weight_bytes, *worker_bytes]
        log_event("tensor_parallel_ready", world_size=world_size, worker_pids=self.group.pids,
                  weight_bytes_per_rank=self.num_weight_bytes_per_rank,
                  heads_per_rank=self.model.shard.plan.q_heads)

    @property
    def failure(self) -> str | None:
        """Why the group can no longer run steps, or None while it can."""
        return self.group.failure

    def _abort_collectives(self, message: str) -> None:
        # Pipes report a dead peer as EOF by themselves; NCCL would wait forever.
        if not getattr(self.communicator, "detects_peer_exit", True):
            self.communicator.abort()

    def forward(
        self,
        token_ids: Any,  # [num_tokens] int32 on the device
        batch: AttentionBatch,
        kv_caches: list[tuple[Any, Any]],  # rank 0's per layer (k_cache, v_cache)
        logits_indices: Any,  # [num_logits] int
    ) -> Any:  # [num_logits, vocab_size] float32 on the device
        if self.failure is not None:
            raise TensorParallelFailure(self.failure)
        try:
            self.group.begin_step()
            self.group.send_step(StepPlan.capture(self.ops, token_ids, batch, logits_indices, kv_caches))
            return self.model.forward(token_ids, batch, kv_caches, logits_indices)
        except CommunicatorError as exc:
            raise TensorParallelFailure(self.group.mark_failed(f"tensor-parallel collective failed: {exc}")) from None
        except BaseException as exc:
            # Rank 0 stopped mid-forward (an OOM, say): the other ranks wait in a collective it
            # will never join, so the group cannot run another step. This step fails as usual.
            self.group.mark_failed(f"rank 0 failed during a tensor-parallel step ({exc!r}); the "
                                   f"ranks are out of step and the server must be restarted")
            raise

    def capture_decode_graphs(self, kv_cache: Any, max_num_seqs: int, max_blocks_per_seq: int) -> Any:
        """Every rank captures decode graphs of its shard (graph_sync.py); returns rank 0's
        `DecodeGraphs`, whose replays first send their inputs to the other ranks."""
        from ..decode_graphs import DecodeGraphs

        self.group.send("capture", GraphSpec(kv_cache.num_blocks, kv_cache.block_size, max_num_seqs,
                                             max_blocks_per_seq))
        try:
            graphs = DecodeGraphs(self.model, self.ops, kv_cache, max_num_seqs, max_blocks_per_seq,
                                  on_replay=self._send_decode)
            self.graphs = graphs
            worker_bytes = self.group.collect("captured", "capturing graphs")  # waits for every rank
            log_event("tensor_parallel_graphs_ready", graph_bytes_per_rank=[graphs.num_bytes(), *worker_bytes])
        except CommunicatorError as exc:
            raise TensorParallelFailure(self.group.mark_failed(f"tensor-parallel collective failed: {exc}")) from None
        return graphs

    def _send_decode(self, inputs: Any) -> None:
        if self.failure is not None:
            raise TensorParallelFailure(self.failure)
        self.group.begin_step()
        self.group.send("decode", inputs)

    def check_step(self) -> None:
        """Raise if the group failed during the step just run (its results may be garbage: an
        aborted collective returns without the peers' terms). Call after the step's host sync."""
        if self.failure is not None:
            raise TensorParallelFailure(self.failure)
        self.group.end_step()

    def close(self) -> None:
        """Stop the workers and release the communicator; idempotent."""
        atexit.unregister(self.close)
        self.group.close()
        if self.graphs is not None:
            self.graphs.release()  # before the communicator: see DecodeGraphs.release
            self.graphs = None
        self.communicator.close()
