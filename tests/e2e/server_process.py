"""Starting and stopping the real server as a subprocess (used by conftest and shutdown tests).

Started with `python -m cupyserve.server serve --device cpu` on a free port with the real
SmolLM2 file; torn down with SIGTERM, which must end it with exit code 0 (graceful shutdown).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from testdata import backend_under_test

STARTUP_TIMEOUT_S = 180.0  # model load on a busy 2-core CPU
SHUTDOWN_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class RunningServer:
    url: str
    model: str  # the id /v1/models reports
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} during startup:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n"
                       f"{log_path.read_text(errors='replace')[-4000:]}")


def start_server(model: Path, workdir: Path, extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> RunningServer:
    """Start `cupyserve serve` on a free port and wait until /health answers 200."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CUPYSERVE_API_KEY", None)
    env.update(extra_env or {})
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cupyserve.server", "serve", "--model", str(model),
             "--port", str(port), "--device", backend_under_test(), "--max-model-len", "2048",
             "--kv-cache-memory", "64MiB", "--shutdown-grace-seconds", "5", *extra_args],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_healthy(url, process, log_path)
        headers = {"Authorization": f"Bearer {env['CUPYSERVE_API_KEY']}"} if "CUPYSERVE_API_KEY" in env else {}
        model_id = httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["id"]
    except BaseException:
        process.kill()
        process.wait()
        raise
    return RunningServer(url, model_id, process, log_path)


def stop_server(running: RunningServer) -> int:
    """SIGTERM, wait, and return the exit code (killing it, and failing, if it hangs)."""
    process = running.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"server ignored SIGTERM for {SHUTDOWN_TIMEOUT_S} s")
    return process.returncode
