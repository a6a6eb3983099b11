"""The process of one tensor-parallel rank other than 0: load its shard, then run the forward
of every step plan rank 0 sends (eager steps), or capture and replay decode graphs as rank 0
does (runtime/parallel/graph_sync.py), until told to stop or rank 0 goes away.

Any error makes the worker exit non-zero after telling rank 0 why; rank 0's monitor then fails
the group (a rank that cannot run its part would desynchronize the collectives anyway).
"""
from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

WORKER_ERROR_EXIT = 3


def select_device(device: str, rank: int) -> None:
    """Rank r uses GPU r (CUDA_VISIBLE_DEVICES narrows and orders what the server may use)."""
    if device == "cuda":
        import cupy

        cupy.cuda.Device(rank).use()


def worker_main(rank: int, world_size: int, model_path: str, device: str, control: Connection,
                comm_spec: tuple[str, Any]) -> None:
    if device == "cpu":
        # Before NumPy loads: N ranks each running one BLAS thread per core would oversubscribe
        # the cores N times (busy-waiting BLAS threads make every step many times slower).
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    # Ctrl-C reaches the whole process group: rank 0 decides when workers stop (or dies, and
    # the worker sees EOF), so a worker never dies first on SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ...kernels import get_ops
    from ..gguf_loader import GGUFFile
    from ..decode_graphs import DecodeGraphs
    from ..kv_cache import KVCache
    from ..log import log_event
    from .communicator_specs import build_communicator
    from .rank_model import load_rank_model

    communicator = graphs = None
    try:
        select_device(device, rank)
        ops = get_ops(device)
        communicator = build_communicator(comm_spec, rank, world_size)
        model = load_rank_model(GGUFFile.open(model_path), ops, rank, world_size, communicator)
        control.send(("ready", model.num_weight_bytes))
        kv_cache = None
        while True:
            try:
                kind, message = control.recv()
            except EOFError:  # rank 0 is gone: a graph may still wait on its collectives, so
                os._exit(1)  # no teardown (it could wait forever); the OS releases the device
            if kind == "close":
                return
            if kind == "decode":  # a decode step replayed from this rank's graphs
                graphs.replay_inputs(message)
                continue
            # A StepPlan and a GraphSpec both carry rank 0's KV pool shape.
            shape = (message.num_kv_blocks, message.kv_block_size)
            if kv_cache is None or (kv_cache.num_blocks, kv_cache.block_size) != shape:
                kv_cache = KVCache.allocate(model.layout, ops, *shape)
            if kind == "capture":
                graphs = DecodeGraphs(model, ops, kv_cache, message.max_num_seqs,
                                      message.max_blocks_per_seq)
                control.send(("captured", graphs.num_bytes()))
                continue
            token_ids, batch, logits_indices = message.upload(ops)
            model.forward(token_ids, batch, kv_cache.layers, logits_indices)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0, then the process fails
        log_event("error", kind="tensor_parallel_worker", rank=rank, message=repr(exc))
        try:
            control.send(("error", f"rank {rank}: {exc!r}"))
        except OSError:
            pass
        sys.exit(WORKER_ERROR_EXIT)
    finally:
        if graphs is not None:
            graphs.release()  # before the communicator: see DecodeGraphs.release
        if communicator is not None:
            communicator.close()
