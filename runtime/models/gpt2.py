"""gpt2 family (GPT-2 small ... XL): what configs/families/gpt2.yaml cannot say.

Following llama.cpp's gpt2 graph (src/models/gpt2.cpp): the first layer reads the token
embedding plus the learned `position_embd` row of each token's position (float32 add, like
ggml_add of the two get_rows). Everything else is switches and optional biases of the generic
decoder: LayerNorm with bias, fused QKV with bias, no rope, biased tanh-GELU MLP, tied output.
"""
from __future__ import annotations

from typing import Any

from .config import ModelConfig
from .decoder import DecoderModel
from .family import FamilyConfig
from .weights import ProgressCallback, WeightLoader


class Gpt2Model(DecoderModel):
    def __init__(self, config: ModelConfig, family: FamilyConfig, gguf_file: Any, ops: Any,
                 on_progress: ProgressCallback | None = None) -> None:
        super().__init__(config, family, gguf_file, ops, on_progress)
        names = {s.role: s.name for s in family.global_tensors}
        loader = WeightLoader(gguf_file, ops)
        self.position_embd = loader.matrix([names["position_embd"]])  # [context_length, hidden]
        self.num_weight_bytes += loader.num_bytes_loaded

    def input_embeddings(
        self,
        token_ids: Any,  # [num_tokens] int32 on the device
        positions: Any,  # [num_tokens] int32 on the device, each < context_length
    ) -> Any:  # [num_tokens, hidden] float32
        return self.embed(token_ids) + self.ops.embedding(self.position_embd, positions)


MODEL_CLASS = Gpt2Model
