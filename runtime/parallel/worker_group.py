"""Rank 0's handle on ranks 1..N-1: spawns one process per rank, sends each step plan, watches
the processes, and stops them.

Control messages (`WorkerGroup.send`) go over one pipe per worker; the
collectives use the communicator, which is separate so that the NCCL path can keep its data on
the GPUs while the step plan (small, host-side) still travels by pipe.
"""
from __future__ import annotations

import multiprocessing
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from ..log import log_event
from .communicator_specs import release_spawned_ends
from .worker import worker_main

READY_TIMEOUT_S = 1800.0  # loading a large shard from a cold disk can take minutes
STOP_TIMEOUT_S = 10.0
DEFAULT_STEP_TIMEOUT_S = 300.0
WATCH_INTERVAL_S = 0.5


class TensorParallelFailure(RuntimeError):
    """A rank died or a collective failed: the server cannot run steps any more."""


class WorkerGroup:
    def __init__(self, model_path: str, device: str, world_size: int,
                 comm_specs: list[tuple[str, Any]], step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S) -> None:
        """Spawn ranks 1..world_size-1; `comm_specs[i]` is rank i+1's communicator spec. A step
        (`begin_step` .. `end_step`) running longer than `step_timeout_s` fails the group."""
        context = multiprocessing.get_context("spawn")
        self.world_size = world_size
        self.controls: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        self._is_closing = False
        self._lock = threading.Lock()
        self.step_timeout_s = step_timeout_s
        self._step_started: float | None = None  # monotonic time of the running step's start
        for rank in range(1, world_size):
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main, name=f"cupyserve-tp-rank{rank}", daemon=True,
                args=(rank, world_size, str(model_path), device, theirs, comm_specs[rank - 1]))
            process.start()
            theirs.close()  # our copy: the worker's exit must read as EOF here
            release_spawned_ends(comm_specs[rank - 1])
            self.controls.append(ours)
            self.processes.append(process)
        log_event("tensor_parallel_spawned", world_size=world_size,
                  worker_pids=[p.pid for p in self.processes])
        self._monitor = threading.Thread(target=self._watch, name="cupyserve-tp-monitor", daemon=True)
        self._monitor.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> list[int]:
        """Block until every worker loaded its shard; returns their weight bytes. Raises
        TensorParallelFailure with the worker's own error when one fails to load."""
        return [int(v) for v in self.collect("ready", "loading the shard", timeout_s)]

    def collect(self, kind: str, doing: str, timeout_s: float = READY_TIMEOUT_S) -> list[Any]:
        """Each worker's next reply, which must be `(kind, value)`; returns the values in rank order."""
        values = []
        for rank, conn in enumerate(self.controls, start=1):
            try:
                if not conn.poll(timeout_s):
                    raise TensorParallelFailure(f"rank {rank} did not finish {doing} in {timeout_s:g} s")
                got, value = conn.recv()
            except (EOFError, OSError):
                code = self.processes[rank - 1].exitcode
                raise TensorParallelFailure(f"rank {rank} exited while {doing} (exit code {code})") from None
            if got != kind:
                raise TensorParallelFailure(f"{doing} failed on {value}")
            values.append(value)
        return values

    def send_step(self, plan: Any) -> None:
        self.send("step", plan)

    def send(self, kind: str, value: Any) -> None:
        """One control message to every worker: ("step", StepPlan), ("capture", GraphSpec),
        ("decode", DecodeInputs) or ("close", None)."""
        for rank, conn in enumerate(self.controls, start=1):
            try:
                conn.send((kind, value))
            except (OSError, ValueError) as exc:
                raise TensorParallelFailure(self.mark_failed(f"rank {rank} is gone: {exc!r}")) from None

    def mark_failed(self, message: str) -> str:
        """Record the first failure (later ones are consequences); returns the recorded one."""
        with self._lock:
            is_first = self.failure is None and not self._is_closing
            if is_first:
                self.failure = message
        if is_first:
            log_event("error", kind="tensor_parallel_failure", message=message)
            if self.on_failure is not None:
                self.on_failure(message)
        return self.failure or message

    def begin_step(self) -> None:
        """A step's collectives start now (rank 0 sent it to the workers)."""
        if self._step_started is None:
            self._step_started = time.monotonic()

    def end_step(self) -> None:
        """The step's results reached rank 0's host: its collectives all completed."""
        self._step_started = None

    def _watch(self) -> None:
        """Until closing: a worker process that ends, or a step past the timeout, fails the group.
        A hung step's workers are killed, so what waits on them (pipe reads, NCCL collectives,
        through the abort the failure triggers) returns."""
        sentinels = {p.sentinel: (rank, p) for rank, p in enumerate(self.processes, start=1)}
        while True:
            ready = wait(list(sentinels), timeout=WATCH_INTERVAL_S)
            if self._is_closing:
                return
            if ready:
                rank, process = sentinels[ready[0]]
                process.join(timeout=1.0)
                self.mark_failed(f"tensor-parallel rank {rank} (pid {process.pid}) exited with code "
                                 f"{process.exitcode}; the server must be restarted")
                return
            started = self._step_started
            if started is not None and time.monotonic() - started > self.step_timeout_s:
                self.mark_failed(f"a tensor-parallel step did not finish in {self.step_timeout_s:g} s "
                                 f"(a rank or a collective hung); the server must be restarted")
                for process in self.processes:
                    process.kill()
                return

    def close(self) -> None:
        """Stop the workers: ask, wait, then terminate any that remain. Idempotent."""
        if self._is_closing:
            return
        self._is_closing = True
        for conn in self.controls:
            try:
                conn.send(("close", None))
            except (OSError, ValueError):
                pass
        for process in self.processes:
            process.join(timeout=STOP_TIMEOUT_S)
            if process.is_alive():
                process.terminate()
                process.join(timeout=STOP_TIMEOUT_S)
        for conn in self.controls:
            conn.close()
