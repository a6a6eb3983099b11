"""CUDA graph capture and replay for a fixed-shape piece of device work (the decode step).

A graph records kernel launches with their argument values, pointers included, so everything a
captured function reads or writes must keep its address between replays:

- inputs live in buffers the caller allocates once and refills before each replay (constant
  inputs too: the captured function's closure is kept alive with the graph for them);
- intermediates come from a memory pool private to this object. A warm-up run fills the pool
  with blocks of the sizes the capture asks for, so the captured run allocates nothing new, and
  no allocation outside the graphs can ever be handed a block a graph still writes to;
- the captured function's result array (also in the private pool) is rewritten by every replay.

Capture and replay happen on a dedicated stream; a replay is fenced with events against the
caller's stream on both sides. Graphs of one `GraphPool` must never run concurrently (they
share the pool's blocks); they are replayed one at a time on its stream.
"""
from __future__ import annotations

from typing import Any, Callable

import cupy


class CapturedGraph:
    """One captured function: `replay()` reruns its kernels and returns the same result array."""

    def __init__(self, graph: Any, result: Any, stream: cupy.cuda.Stream, function: Callable) -> None:
        self._graph = graph
        self.result = result
        self._stream = stream
        # The graph holds raw pointers into every array the function reads: keeping the function
        # (and so its closure) alive keeps those arrays from being freed and their memory reused.
        self._function = function

    def replay(self, inputs: list[tuple[Any, Any]] = ()) -> Any:
        """Copy each (device view, pinned host view) pair, then rerun the graph.

        A pair is two 1-D or 2-D views of the same shape whose rows are contiguous (a column range
        of a row-major buffer: one pitched copy). Copies and graph are ordered after the work
        already queued on the caller's stream, and the caller's later work after them (explicit
        events, whatever kind of stream the caller uses)."""
        caller = cupy.cuda.get_current_stream()
        self._stream.wait_event(caller.record())
        for device_view, host_view in inputs:
            _copy_to_device(device_view, host_view, self._stream)
        self._graph.launch(stream=self._stream)
        caller.wait_event(self._stream.record())
        return self.result


def _copy_to_device(device_view: Any, host_view: Any, stream: cupy.cuda.Stream) -> None:
    if device_view.shape != host_view.shape or device_view.dtype != host_view.dtype:
        raise ValueError(f"graph input {host_view.shape} {host_view.dtype} does not fit "
                         f"{device_view.shape} {device_view.dtype}")
    if device_view.size == 0:
        return
    rows = device_view.shape[0] if device_view.ndim == 2 else 1
    width = device_view.shape[-1] * device_view.itemsize
    if device_view.strides[-1] != device_view.itemsize or host_view.strides[-1] != host_view.itemsize:
        raise ValueError("graph inputs need contiguous rows")
    device_pitch = device_view.strides[0] if device_view.ndim == 2 else width
    host_pitch = host_view.strides[0] if host_view.ndim == 2 else width
    cupy.cuda.runtime.memcpy2DAsync(device_view.data.ptr, device_pitch, host_view.ctypes.data, host_pitch,
                                    width, rows, cupy.cuda.runtime.memcpyHostToDevice, stream.ptr)


class GraphPool:
    """Captures functions into CUDA graphs that share one private memory pool and one stream."""

    def __init__(self) -> None:
        self.memory_pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)  # ordered by events, see replay()

    def capture(self, function: Callable[[], Any]) -> CapturedGraph:
        """Run `function` once (warm-up: kernels compiled, pool blocks cached), then capture a
        second run. `function` must only launch device work: no host sync, no host copies."""
        self.stream.wait_event(cupy.cuda.get_current_stream().record())
        with cupy.cuda.using_allocator(self.memory_pool.malloc), self.stream:
            function()  # its arrays die here and their blocks stay cached in the private pool
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                result = function()
            except BaseException:
                _end_failed_capture(self.stream)
                raise
            graph = self.stream.end_capture()
        self.stream.synchronize()
        return CapturedGraph(graph, result, self.stream, function)

    def num_bytes(self) -> int:
        """Device bytes held by the graphs' private pool (their intermediates and results)."""
        return self.memory_pool.total_bytes()


def _end_failed_capture(stream: cupy.cuda.Stream) -> None:
    """Leave capture mode after the captured function raised, so the stream stays usable; the
    function's own error is the one that matters and is re-raised by the caller."""
    try:
        stream.end_capture()
    except Exception:  # noqa: BLE001 - the capture is already invalid; its error adds nothing
        pass
