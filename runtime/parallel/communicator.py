"""The collectives tensor-parallel ranks use, behind one interface with two implementations:
`PipeCommunicator` (NumPy arrays between local processes, the CPU backend) and
`NcclCommunicator` (CuPy arrays over `cupy.cuda.nccl`, one GPU per rank).

Every rank must call the same collectives in the same order (each rank runs the same forward
over the same step plan). Results are identical on every rank: `all_reduce_sum` adds the ranks'
arrays in rank order, so all ranks hold bit-equal sums and stay in lockstep.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class CommunicatorError(RuntimeError):
    """A peer rank died, timed out, or broke the protocol: the group is unusable from now on."""


class Communicator(ABC):
    rank: int
    world_size: int

    @abstractmethod
    def all_reduce_sum(self, x: Any) -> Any:
        """Element-wise sum over ranks of same-shaped arrays; every rank gets the sum."""

    @abstractmethod
    def all_gather(self, x: Any, axis: int, sizes: list[int] | None = None) -> Any:
        """Every rank's array concatenated along `axis` in rank order; only that axis may differ.
        `sizes` (every rank's length along `axis`, when the caller knows them) spares the
        exchange of lengths, a host round trip that a CUDA graph cannot hold."""

    @abstractmethod
    def broadcast(self, x: Any, root: int = 0) -> Any:
        """`root`'s array on every rank (other ranks pass an array of the same shape and dtype)."""

    @abstractmethod
    def barrier(self) -> None:
        """Returns once every rank has called it."""

    @abstractmethod
    def close(self) -> None:
        """Release the group's resources; idempotent. Peers see the rank as gone."""
