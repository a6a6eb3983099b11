"""Everything needed to build an engine, validated when built (the CLI maps its flags onto this)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class EngineArgs:
    model: str = "smollm2-135m-instruct"  # catalog name or path to a .gguf file
    served_model_name: str | None = None  # id reported by /v1/models; default: the model's name
    device: str = "auto"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    block_size: int = 16
    max_model_len: int | None = None  # default: the model's context length
    kv_cache_memory: int | None = None  # bytes for the KV pool; default: a fraction of free memory
    gpu_memory_utilization: float = 0.90
    gpu_memory_limit: int | None = None  # bytes: caps everything the server allocates on the GPU
    enforce_eager: bool = False  # True: no CUDA graphs (every step launches its kernels from Python)
    enable_prefix_caching: bool = True
    seed: int = 0  # seeds requests that give no seed, so a server run is reproducible
    pull_if_missing: bool = True
    tensor_parallel_size: int = 1  # ranks (processes; GPUs on cuda) the model is split over
    # A tensor-parallel step (its collectives, until its results reach the host) that takes
    # longer fails the server: a rank or a collective is hung (NCCL would wait forever).
    tensor_parallel_timeout_s: float = 300.0
    # A Hugging Face tokenizer.json (or a folder holding one) used instead of the GGUF's vocabulary.
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError("max_num_batched_tokens must be >= block_size")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("max_model_len must be >= 1")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError("kv_cache_memory must be a positive number of bytes")
        if self.gpu_memory_limit is not None and self.gpu_memory_limit <= 0:
            raise ValueError("gpu_memory_limit must be a positive number of bytes")
        if isinstance(self.tensor_parallel_size, bool) or not isinstance(self.tensor_parallel_size, int) \
                or self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1, got {self.tensor_parallel_size!r}")
        if not self.tensor_parallel_timeout_s > 0:
            raise ValueError(f"tensor_parallel_timeout_s must be > 0, got {self.tensor_parallel_timeout_s!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.tokenizer is not None:
            _check_tokenizer_file(self.tokenizer)

    @property
    def tokenizer_file(self) -> Path | None:
        """The tokenizer.json to load (a folder argument resolved to the file in it), or None."""
        if self.tokenizer is None:
            return None
        path = Path(self.tokenizer).expanduser()
        return path / "tokenizer.json" if path.is_dir() else path


def _check_tokenizer_file(value: str) -> None:
    """Existence and readability only; whether the content is a usable tokenizer is decided when
    the engine loads it (a broken file is a startup error naming the file)."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise ValueError(f"tokenizer folder {value} holds no tokenizer.json")
        path = path / "tokenizer.json"
    elif not path.exists():
        raise ValueError(f"tokenizer file {value} does not exist")
    elif not path.is_file():
        raise ValueError(f"tokenizer path {value} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"tokenizer file {path} is not readable")
