"""Collectives over NCCL (`cupy.cuda.nccl`) between GPU ranks, one GPU per process.

Written to the `Communicator` interface (docs/tensor_parallel.md). Operations are enqueued on
the current CuPy stream, like the kernels around them, and can be captured in a CUDA graph
(decode steps: runtime/parallel/graph_sync.py) when no host value is read back. A dead peer makes NCCL wait forever, so
the rank-0 monitor calls `abort()` (ncclCommAbort, which may be called from another thread)
when it sees a worker process exit; the blocked collective then fails.
"""
from __future__ import annotations

from typing import Any

from .communicator import Communicator, CommunicatorError


def new_unique_id() -> tuple:
    """Rank 0 creates the id and hands it to every rank (it pickles as a tuple of ints)."""
    from cupy.cuda import nccl

    return nccl.get_unique_id()


class NcclCommunicator(Communicator):
    detects_peer_exit = False  # NCCL blocks on a dead peer: the monitor must abort

    def __init__(self, rank: int, world_size: int, unique_id: tuple) -> None:
        import cupy
        from cupy.cuda import nccl

        self.cp, self.nccl = cupy, nccl
        self.rank, self.world_size = rank, world_size
        self.comm = nccl.NcclCommunicator(world_size, unique_id, rank)  # collective: all ranks join
        self.is_closed = False
        self._dtypes = {
            cupy.dtype("float32"): nccl.NCCL_FLOAT32, cupy.dtype("float16"): nccl.NCCL_FLOAT16,
            cupy.dtype("float64"): nccl.NCCL_FLOAT64, cupy.dtype("int32"): nccl.NCCL_INT32,
            cupy.dtype("int64"): nccl.NCCL_INT64,
        }

    def _nccl_type(self, x: Any) -> int:
        if self.is_closed:
            raise CommunicatorError("the NCCL communicator is closed or aborted")
        try:
            return self._dtypes[x.dtype]
        except KeyError:
            raise TypeError(f"NCCL collectives here take {sorted(map(str, self._dtypes))}, "
                            f"not {x.dtype}") from None

    def _stream(self) -> int:
        return self.cp.cuda.get_current_stream().ptr

    def all_reduce_sum(self, x: Any) -> Any:
        x = self.cp.ascontiguousarray(x)
        out = self.cp.empty_like(x)
        self.comm.allReduce(x.data.ptr, out.data.ptr, x.size, self._nccl_type(x), self.nccl.NCCL_SUM,
                            self._stream())
        return out

    def _gather_equal(self, x: Any) -> Any:  # [world_size, *x.shape]
        x = self.cp.ascontiguousarray(x)
        out = self.cp.empty((self.world_size, *x.shape), dtype=x.dtype)
        self.comm.allGather(x.data.ptr, out.data.ptr, x.size, self._nccl_type(x), self._stream())
        return out

    def all_gather(self, x: Any, axis: int, sizes: list[int] | None = None) -> Any:
        cp = self.cp
        if sizes is None:
            sizes = self._gather_equal(cp.asarray([x.shape[axis]], dtype=cp.int64)).get().ravel().tolist()
        elif len(sizes) != self.world_size or sizes[self.rank] != x.shape[axis]:
            raise ValueError(f"all_gather: sizes {sizes} do not fit rank {self.rank}'s {x.shape[axis]}")
        front = cp.moveaxis(x, axis, 0)  # NCCL concatenates flat buffers: gather on axis 0
        padded = cp.zeros((int(max(sizes)), *front.shape[1:]), dtype=x.dtype)
        padded[: front.shape[0]] = front
        gathered = self._gather_equal(padded)
        parts = [gathered[r, : int(sizes[r])] for r in range(self.world_size)]
        return cp.ascontiguousarray(cp.moveaxis(cp.concatenate(parts, axis=0), 0, axis))

    def broadcast(self, x: Any, root: int = 0) -> Any:
        x = self.cp.ascontiguousarray(x)
        out = self.cp.empty_like(x)
        self.comm.broadcast(x.data.ptr, out.data.ptr, x.size, self._nccl_type(x), root, self._stream())
        return out

    def barrier(self) -> None:
        self.all_reduce_sum(self.cp.zeros(1, dtype=self.cp.float32))
        self.cp.cuda.get_current_stream().synchronize()

    def abort(self) -> None:
        """Make blocked and future collectives fail (another thread may call this)."""
        if not self.is_closed:
            self.is_closed = True
            self.comm.abort()

    def close(self) -> None:
        # ncclCommAbort, not ncclCommDestroy: destroy waits for every peer to destroy too, and at
        # shutdown rank 0 may have terminated a worker already (it then hung forever, found on
        # the 2-GPU machine); abort releases this rank's resources without the peers.
        self.abort()
