"""The resolved shape of one model: family switches plus hyperparameters, validated."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class ModelConfig:
    family: str
    architecture: str
    num_layers: int
    hidden_size: int
    ffn_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    rope_theta: float
    rope_dim: int
    context_length: int
    vocab_size: int
    norm: str = "rms"
    activation: str = "swiglu"
    rope_style: str = "normal"
    extra: Mapping[str, Any] = field(default_factory=dict)  # family-specific values

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_size", "num_heads", "num_kv_heads",
                     "head_dim", "context_length", "vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{self.architecture}: {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.architecture}: {self.num_heads} heads is not a multiple of "
                             f"{self.num_kv_heads} KV heads")
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise ValueError(f"{self.architecture}: rope_dim {self.rope_dim} must be even and "
                             f"<= head_dim {self.head_dim}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attention_scale(self) -> float:
        return float(self.extra.get("attention_scale", self.head_dim**-0.5))
