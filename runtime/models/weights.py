"""Loading a family's tensors from a validated GGUF onto the backend, with progress events."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .family import FamilyConfig, TensorSpec, eval_expr


_BF16 = 30  # GGML type id


@dataclass
class LayerWeights:
    tensors: dict[str, Any] = field(default_factory=dict)
    index: int = 0  # the layer's position in the stack: per-layer hooks (window, rope) key on it

    def get(self, role: str) -> Any:
        return self.tensors.get(role)

    def __getitem__(self, role: str) -> Any:
        return self.tensors[role]


def expected_shapes(family: FamilyConfig, hparams: dict[str, Any], num_layers: int,
                    vocab: int) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """GGUF tensor name -> expected numpy shape, and the set of optional names."""
    names = dict(hparams, vocab=vocab)
    shapes: dict[str, tuple[int, ...]] = {}
    optional: set[str] = set()

    def add(spec: TensorSpec, layer: int | None) -> None:
        name = spec.name.format(i=layer) if layer is not None else spec.name
        shapes[name] = tuple(int(eval_expr(s, names)) for s in spec.shape)
        if spec.is_optional:
            optional.add(name)

    for spec in family.global_tensors:
        add(spec, None)
    for layer in range(num_layers):
        for spec in family.layer_tensors:
            add(spec, layer)
    return shapes, optional


class WeightLoader:
    """Uploads tensors through the backend op set, fusing matrices that share an input."""

    def __init__(self, gguf_file: Any, ops: Any) -> None:
        self.gguf = gguf_file
        self.ops = ops
        self.num_bytes_loaded = 0

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def vector(self, name: str) -> Any:
        """A 1-D (or small) F32/F16/BF16 tensor, as float32 on the device."""
        info = self.gguf.tensors[name]
        host = self.gguf.array(name)
        if int(info.ggml_type) == _BF16:  # the view holds the raw bits: the upper half of a float32
            host = (host.astype(np.uint32) << 16).view(np.float32)
        host = host.astype(np.float32).reshape(info.shape)
        self.num_bytes_loaded += info.num_bytes
        return self.ops.asarray(host)

    def matrix(self, names: list[str]) -> Any:
        """One weight for several matrices stacked on their output rows (e.g. q, k, v)."""
        infos = [self.gguf.tensors[n] for n in names]
        in_features = infos[0].shape[-1]
        raws = [self.gguf.raw(n) for n in names]
        self.num_bytes_loaded += sum(i.num_bytes for i in infos)
        return self.ops.load_weight(raws, [int(i.ggml_type) for i in infos], in_features)

    def experts(self, name: str) -> Any:
        """A `[num_experts, out_features, in_features]` tensor, kept in its block format by the
        backend (`ops.load_experts`)."""
        info = self.gguf.tensors[name]
        if len(info.shape) != 3:
            raise ValueError(f"tensor {name!r}: expert weights must be 3-D, got shape {info.shape}")
        num_experts, out_features, in_features = (int(d) for d in info.shape)
        self.num_bytes_loaded += info.num_bytes
        return self.ops.load_experts(self.gguf.raw(name), int(info.ggml_type), num_experts,
                                     out_features, in_features)


ProgressCallback = Callable[[int, int], None]  # (layers done, layers total)
