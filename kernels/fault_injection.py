"""OOM fault injection shared by the op sets: makes the Nth step-scoped allocation raise the
backend's own out-of-memory error, so OOM recovery is testable without exhausting memory.

`CUPYSERVE_FAULT_OOM_AT_ALLOC=N` arms it at construction; `set_fault_injection(N)` re-arms it
(counting restarts at 0; N = 0 disarms).
"""
from __future__ import annotations

import os

FAULT_OOM_ENV = "CUPYSERVE_FAULT_OOM_AT_ALLOC"


class FaultInjection:
    """Mixin: subclasses set `injected_oom_error` to the exception class raised."""

    injected_oom_error: type[BaseException] = MemoryError

    def __init__(self) -> None:
        self._alloc_count = 0
        self._fail_at = int(os.environ.get(FAULT_OOM_ENV, "0") or 0)

    def check_alloc(self) -> None:
        """Count one step-scoped allocation; raise the backend OOM error when armed for it."""
        self._alloc_count += 1
        if self._fail_at and self._alloc_count == self._fail_at:
            raise self.injected_oom_error(f"injected out-of-memory at allocation {self._alloc_count}")

    def set_fault_injection(self, fail_at_alloc: int) -> None:
        self._alloc_count = 0
        self._fail_at = fail_at_alloc
