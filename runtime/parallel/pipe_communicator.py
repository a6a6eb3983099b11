"""Collectives over pipes between local processes, for the NumPy backend (and CI).

A star around rank 0: for every collective each other rank sends its array to rank 0, which
combines them in rank order and sends the result back. Arrays are small on the CPU path (a
hidden state per token, one vocab slice of logits), so pickling through a pipe is not the
bottleneck; what matters is that the result is deterministic and that a dead peer is seen at
once (its pipe end closes: EOF) or after `timeout_s` without an answer, never as a hang.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .communicator import Communicator, CommunicatorError

DEFAULT_TIMEOUT_S = 300.0  # a CPU step of a big prefill can take long; a dead rank shows as EOF first


def make_pipe_group(world_size: int) -> tuple[list[Connection], list[Connection]]:
    """(rank 0's connections to ranks 1..N-1, the connection each of ranks 1..N-1 keeps)."""
    context = multiprocessing.get_context("spawn")
    pairs = [context.Pipe(duplex=True) for _ in range(world_size - 1)]
    return [a for a, _ in pairs], [b for _, b in pairs]


class PipeCommunicator(Communicator):
    detects_peer_exit = True  # a dead peer closes its pipe end: the blocked recv sees EOF

    def __init__(self, rank: int, world_size: int, connections: list[Connection],
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Rank 0 passes its N-1 connections (to ranks 1..N-1); other ranks pass [their one]."""
        expected = world_size - 1 if rank == 0 else 1
        if len(connections) != expected:
            raise ValueError(f"rank {rank} of {world_size} needs {expected} connections")
        self.rank, self.world_size = rank, world_size
        self.connections = connections
        self.timeout_s = timeout_s
        self.is_closed = False

    # ---- point to point with failure detection --------------------------------------------

    def _peer(self, index: int) -> int:
        return index + 1 if self.rank == 0 else 0

    def _send(self, index: int, message: Any) -> None:
        try:
            self.connections[index].send(message)
        except (OSError, ValueError) as exc:  # BrokenPipeError, or a closed handle
            raise CommunicatorError(f"rank {self._peer(index)} is gone: {exc!r}") from None

    def _recv(self, index: int, op: str) -> Any:
        if self.is_closed:
            raise CommunicatorError("the communicator is closed")
        conn = self.connections[index]
        try:
            if not conn.poll(self.timeout_s):
                raise CommunicatorError(f"rank {self._peer(index)} did not answer {op} within "
                                        f"{self.timeout_s:g} s")
            tag, payload = conn.recv()
        except (EOFError, OSError, ValueError) as exc:
            raise CommunicatorError(f"rank {self._peer(index)} is gone (its pipe closed during "
                                    f"{op}): {exc!r}") from None
        if tag != op:
            raise CommunicatorError(f"rank {self._peer(index)} called {tag} while this rank called {op}")
        return payload

    def _combine(self, op: str, x: Any, combine) -> Any:
        """Star collective: gather to rank 0 in rank order, combine there, send back."""
        if self.rank == 0:
            parts = [x] + [self._recv(i, op) for i in range(len(self.connections))]
            result = combine(parts)
            for i in range(len(self.connections)):
                self._send(i, (op, result))
            return result
        self._send(0, (op, x))
        return self._recv(0, op)

    # ---- collectives ------------------------------------------------------------------------

    def all_reduce_sum(self, x: np.ndarray) -> np.ndarray:
        def add_in_rank_order(parts: list[np.ndarray]) -> np.ndarray:
            total = np.array(parts[0], copy=True)
            for part in parts[1:]:
                total += part
            return total

        return self._combine("all_reduce_sum", np.asarray(x), add_in_rank_order)

    def all_gather(self, x: np.ndarray, axis: int, sizes: list[int] | None = None) -> np.ndarray:
        return self._combine(f"all_gather{axis}", np.asarray(x),
                             lambda parts: np.concatenate(parts, axis=axis))

    def broadcast(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        if root != 0:
            raise ValueError("PipeCommunicator broadcasts from rank 0 only (the star's hub)")
        return self._combine("broadcast", np.asarray(x), lambda parts: parts[0])

    def barrier(self) -> None:
        self._combine("barrier", None, lambda parts: None)

    def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        for conn in self.connections:
            conn.close()
