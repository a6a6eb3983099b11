"""How each rank builds its communicator: rank 0 makes one picklable spec per rank (pipe
connections on the CPU, the NCCL unique id on GPUs) and passes ranks 1..N-1 theirs at spawn."""
from __future__ import annotations

from typing import Any

from .communicator import Communicator


def make_specs(device: str, world_size: int) -> list[tuple[str, Any]]:
    """One spec per rank, rank 0's first."""
    if device == "cpu":
        from .pipe_communicator import make_pipe_group

        hub, spokes = make_pipe_group(world_size)
        return [("pipe", hub)] + [("pipe", [spoke]) for spoke in spokes]
    if device == "cuda":
        from .nccl_communicator import new_unique_id

        unique_id = new_unique_id()
        return [("nccl", unique_id)] * world_size
    raise ValueError(f"tensor parallel needs device cpu or cuda, got {device!r}")


def build_communicator(spec: tuple[str, Any], rank: int, world_size: int) -> Communicator:
    kind, value = spec
    if kind == "pipe":
        from .pipe_communicator import PipeCommunicator

        return PipeCommunicator(rank, world_size, value)
    from .nccl_communicator import NcclCommunicator

    return NcclCommunicator(rank, world_size, value)


def release_spawned_ends(spec: tuple[str, Any]) -> None:
    """In rank 0, after a worker started: close rank 0's copy of the worker's pipe end, so the
    worker's death reads as EOF on rank 0's side."""
    kind, value = spec
    if kind == "pipe":
        for conn in value:
            conn.close()
