"""GGUFFile: small GGUFs written with gguf.GGUFWriter, then corrupted byte by byte; and the real
SmolLM2 file cross-checked once against gguf.GGUFReader."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from cupyserve.runtime.gguf_loader import GGUFError, GGUFFile
from cupyserve.runtime.gguf_metadata import metadata_from_reader, read_metadata

Q8_0 = gguf.GGMLQuantizationType.Q8_0


def write_gguf(path: Path, tensors: dict, *, arch: str = "llama", extra=None) -> Path:
    """`tensors` maps name -> array or (raw array, raw ggml type)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_string("general.name", "tiny ünïcode")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "bc", "\u0120x", ""])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25])
    writer.add_array("tokenizer.ggml.token_type", [1, 2, 3])
    writer.add_int64("test.negative", -(2**40))
    for key, value in (extra or {}).items():
        value_type, raw = value
        writer.add_key_value(key, raw, value_type)
    for name, tensor in tensors.items():
        if isinstance(tensor, tuple):
            writer.add_tensor(name, tensor[0], raw_dtype=tensor[1])
        else:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def default_tensors() -> dict:
    rng = np.random.default_rng(0)
    return {
        "token_embd.weight": rng.standard_normal((3, 64)).astype(np.float32),
        "output_norm.weight": rng.standard_normal(64).astype(np.float16),
        "blk.0.attn_q.weight": (rng.integers(0, 256, (4, 2 * 34), dtype=np.uint8), Q8_0),
    }


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf", default_tensors())


def tensor_entry_pos(data: bytes, name: str) -> int:
    """Byte offset of a tensor's n_dims field in the tensor directory."""
    encoded = name.encode()
    index = data.find(struct.pack("<Q", len(encoded)) + encoded)
    assert index > 0
    return index + 8 + len(encoded)


def patch(path: Path, offset: int, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(new)] = new
    path.write_bytes(bytes(data))


def field_offsets(path: Path, name: str) -> tuple[int, int, int]:
    """(position of ne[0], of the type, of the offset) in a tensor's directory entry."""
    data = path.read_bytes()
    pos = tensor_entry_pos(data, name)
    (num_dims,) = struct.unpack_from("<I", data, pos)
    dims_pos = pos + 4
    type_pos = dims_pos + 8 * num_dims
    return dims_pos, type_pos, type_pos + 4


def test_round_trip_metadata_tensors_and_views(tiny: Path) -> None:
    tensors = default_tensors()
    f = GGUFFile.open(tiny)
    assert f.version == 3 and f.alignment == 32 and f.architecture == "llama"
    assert f.file_size == tiny.stat().st_size
    assert list(f.tensors) == list(tensors)
    md = f.metadata
    assert md["llama.block_count"] == 2 and md["general.name"] == "tiny ünïcode"
    assert md["llama.rope.freq_base"] == 10000.5 and md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.ggml.tokens"] == ["<s>", "a", "bc", "\u0120x", ""]
    assert md["tokenizer.ggml.scores"] == [0.0, -1.5, 2.25]
    assert md["test.negative"] == -(2**40)
    assert md == metadata_from_reader(gguf.GGUFReader(tiny)) == read_metadata(tiny)

    emb = f.tensors["token_embd.weight"]
    assert emb.shape == (3, 64) and emb.ggml_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(f.array("token_embd.weight"), tensors["token_embd.weight"])
    assert np.array_equal(f.array("output_norm.weight"), tensors["output_norm.weight"])
    q = f.tensors["blk.0.attn_q.weight"]
    assert q.shape == (4, 64) and q.ggml_type == Q8_0 and q.num_bytes == 4 * 68
    raw = f.raw("blk.0.attn_q.weight")
    assert raw.shape == (4, 68) and raw.dtype == np.uint8
    assert np.array_equal(raw, tensors["blk.0.attn_q.weight"][0])
    # Zero copy: views of the read-only mapping, not owned copies.
    assert not raw.flags.writeable and not raw.flags.owndata
    assert all(info.offset % 32 == 0 for info in f.tensors.values())
    with pytest.raises(GGUFError, match="blk.0.attn_q.weight.*Q8_0"):
        f.array("blk.0.attn_q.weight")


def test_bf16_array_is_uint16_bits(tmp_path: Path) -> None:
    bits = np.random.default_rng(1).integers(0, 2**16, (2, 8), dtype=np.uint16)
    path = write_gguf(
        tmp_path / "bf16.gguf", {"w": (bits, gguf.GGMLQuantizationType.BF16)}
    )
    f = GGUFFile.open(path)
    assert f.tensors["w"].ggml_type == gguf.GGMLQuantizationType.BF16
    assert f.array("w").dtype == np.uint16 and np.array_equal(f.array("w"), bits)


def test_bad_magic(tiny: Path) -> None:
    patch(tiny, 0, b"GGML")
    with pytest.raises(GGUFError, match="not a GGUF file") as err:
        GGUFFile.open(tiny)
    assert str(tiny) in str(err.value)


@pytest.mark.parametrize("version", [1, 4, 0x03000000])
def test_unsupported_version(tiny: Path, version: int) -> None:
    patch(tiny, 4, struct.pack("<I", version))
    with pytest.raises(GGUFError, match=f"unsupported GGUF version {version}") as err:
        GGUFFile.open(tiny)
    assert str(tiny) in str(err.value)


def test_empty_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="empty"):
        GGUFFile.open(tmp_path / "empty.gguf")
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile.open(tmp_path / "absent.gguf")


@pytest.mark.parametrize("keep_bytes", [6, 30, 200, 400])
def test_truncated_header_or_metadata(tiny: Path, keep_bytes: int) -> None:
    data = tiny.read_bytes()
    assert keep_bytes < tensor_entry_pos(data, "token_embd.weight")
    tiny.write_bytes(data[:keep_bytes])
    with pytest.raises(GGUFError, match="truncated") as err:
        GGUFFile.open(tiny)
    assert str(tiny) in str(err.value)


def test_truncated_tensor_data_names_the_tensor(tiny: Path) -> None:
    last = GGUFFile.open(tiny).tensors["blk.0.attn_q.weight"]
    tiny.write_bytes(tiny.read_bytes()[: last.offset + last.num_bytes - 1])
    with pytest.raises(GGUFError, match="'blk.0.attn_q.weight'.*past the end.*truncated") as err:
        GGUFFile.open(tiny)
    assert str(tiny) in str(err.value)


@pytest.mark.parametrize("ggml_type", [gguf.GGMLQuantizationType.Q2_K, gguf.GGMLQuantizationType.IQ2_XXS])
def test_unsupported_quant_type(tmp_path: Path, ggml_type) -> None:
    block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    tensors = default_tensors()
    tensors["blk.0.ffn_down.weight"] = (np.zeros((2, type_size), dtype=np.uint8), ggml_type)
    path = write_gguf(tmp_path / "q.gguf", tensors)
    with pytest.raises(GGUFError, match=f"'blk.0.ffn_down.weight' has unsupported type {ggml_type.name}") as err:
        GGUFFile.open(path)
    assert str(path) in str(err.value)


def test_unknown_type_number(tiny: Path) -> None:
    _, type_pos, _ = field_offsets(tiny, "output_norm.weight")
    patch(tiny, type_pos, struct.pack("<I", 99))
    with pytest.raises(GGUFError, match="'output_norm.weight' has unknown ggml type 99"):
        GGUFFile.open(tiny)


def test_misaligned_offset(tiny: Path) -> None:
    _, _, offset_pos = field_offsets(tiny, "blk.0.attn_q.weight")
    (offset,) = struct.unpack_from("<Q", tiny.read_bytes(), offset_pos)
    patch(tiny, offset_pos, struct.pack("<Q", offset + 4))
    with pytest.raises(GGUFError, match="'blk.0.attn_q.weight'.*not a multiple of the alignment 32") as err:
        GGUFFile.open(tiny)
    assert str(tiny) in str(err.value)


def test_inner_dim_not_multiple_of_block(tiny: Path) -> None:
    dims_pos, _, _ = field_offsets(tiny, "blk.0.attn_q.weight")
    patch(tiny, dims_pos, struct.pack("<Q", 48))
    with pytest.raises(GGUFError, match="'blk.0.attn_q.weight'.*48 is not a multiple of the Q8_0 block size 32"):
        GGUFFile.open(tiny)


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    vector = np.ones(32, dtype=np.float32)
    path = write_gguf(tmp_path / "dup.gguf", {"a.weight": vector, "b.weight": vector})
    data = path.read_bytes()
    patch(path, tensor_entry_pos(data, "b.weight") - len("b.weight"), b"a")
    with pytest.raises(GGUFError, match="duplicate tensor name 'a.weight'"):
        GGUFFile.open(path)


@pytest.mark.parametrize(
    "value, message",
    [
        ((gguf.GGUFValueType.UINT32, 3), "power of two"),
        ((gguf.GGUFValueType.UINT32, 0), "power of two"),
        ((gguf.GGUFValueType.STRING, "32"), "must be a uint32"),
    ],
)
def test_bad_alignment_key(tmp_path: Path, value, message: str) -> None:
    path = write_gguf(tmp_path / "align.gguf", {}, extra={"general.alignment": value})
    with pytest.raises(GGUFError, match=f"general.alignment.*{message}") as err:
        GGUFFile.open(path)
    assert str(path) in str(err.value)


def test_custom_alignment_is_honoured(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "a64.gguf"), "llama")
    writer.add_custom_alignment(64)
    for name in ("x", "y"):
        writer.add_tensor(name, np.arange(24, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    f = GGUFFile.open(tmp_path / "a64.gguf")
    assert f.alignment == 64 and f.data_offset % 64 == 0 and f.tensors["y"].offset % 64 == 0
    assert np.array_equal(f.array("y"), np.arange(24, dtype=np.float32))


def test_validate_tensors(tiny: Path) -> None:
    f = GGUFFile.open(tiny)
    f.validate_tensors(
        {"token_embd.weight": (3, 64), "output_norm.weight": (64,), "output.weight": (3, 64)},
        optional=["output.weight"],
    )
    with pytest.raises(GGUFError, match="architecture 'llama'.*missing tensor 'blk.1.attn_q.weight'") as err:
        f.validate_tensors({"token_embd.weight": (3, 64), "blk.1.attn_q.weight": (4, 64)})
    assert str(tiny) in str(err.value)
    with pytest.raises(GGUFError, match=r"'token_embd.weight' has shape \(3, 64\), expected \(64, 3\)"):
        f.validate_tensors({"token_embd.weight": (64, 3)})
    with pytest.raises(GGUFError, match=r"'output_norm.weight' has shape \(64,\), expected \(32,\)"):
        f.validate_tensors({"output_norm.weight": (32,)}, optional=["output_norm.weight"])


def test_real_smollm2_opens_fast(smollm2_gguf: Path) -> None:
    started = time.perf_counter()
    f = GGUFFile.open(smollm2_gguf)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"open took {elapsed:.2f}s"
    assert f.architecture == "llama" and f.version == 3 and f.file_size == 98_362_432
    assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
    embedding = f.tensors["token_embd.weight"]
    assert embedding.shape == (49152, 576)
    block_size, type_size = gguf.GGML_QUANT_SIZES[embedding.ggml_type]
    assert f.raw("token_embd.weight").shape == (49152, 576 // block_size * type_size)
    assert max(i.offset + i.num_bytes for i in f.tensors.values()) <= f.file_size


@pytest.mark.slow
def test_real_smollm2_matches_gguf_reader(smollm2_gguf: Path) -> None:
    """One-time cross-check of our parser against the reference reader (which takes ~6 s)."""
    f = GGUFFile.open(smollm2_gguf)
    reader = gguf.GGUFReader(smollm2_gguf)
    assert f.metadata == metadata_from_reader(reader)
    assert list(f.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = f.tensors[t.name]
        assert (info.ggml_type, info.offset, info.num_bytes) == (t.tensor_type, t.data_offset, t.n_bytes)
        assert info.shape == tuple(reversed(t.shape.tolist()))
