"""phi3 family (Phi-3, Phi-3.5 mini/medium): what configs/families/phi3.yaml cannot say.

Following llama.cpp's phi3 graph (src/models/phi3.cpp):
- `attn_qkv` is already one matrix (Q rows, then K, then V): the generic decoder loads it as is;
- `ffn_up` holds gate and up stacked (2 * ffn rows, gate first), which is exactly the fused
  gate_up matrix the generic SwiGLU MLP expects, so it is loaded under that role;
- the 128k models' per-layer rope factors (long/short, switched on context length) are not
  implemented: such a file is rejected rather than run with the wrong rotation.
"""
from __future__ import annotations

from typing import Any

from .config import ModelConfig
from .decoder import DecoderModel
from .family import FamilyConfig
from .weights import LayerWeights, ProgressCallback, WeightLoader

_ROPE_FACTOR_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")


class Phi3Model(DecoderModel):
    def __init__(self, config: ModelConfig, family: FamilyConfig, gguf_file: Any, ops: Any,
                 on_progress: ProgressCallback | None = None) -> None:
        present = [n for n in _ROPE_FACTOR_TENSORS if n in gguf_file.tensors]
        if present:
            raise ValueError(f"{gguf_file.path}: phi3 with {', '.join(present)} (128k context rope "
                             f"scaling) is not supported")
        super().__init__(config, family, gguf_file, ops, on_progress)

    def _load_layer(self, loader: WeightLoader, index: int) -> LayerWeights:
        weights = super()._load_layer(loader, index)
        weights.tensors["ffn_gate_up"] = weights.tensors.pop("ffn_up")  # [2 * ffn, hidden], gate first
        return weights


MODEL_CLASS = Phi3Model
