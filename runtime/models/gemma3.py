"""gemma3 family (Gemma 3 270M ... 27B, text): what configs/families/gemma3.yaml cannot say.

Each rule below follows llama.cpp's gemma3 graph (src/models/gemma3.cpp), the implementation the
goldens were recorded with:
- token embeddings are multiplied by sqrt(hidden) computed in float32 (`sqrtf(n_embd)`);
- Q and K get a per-head RMSNorm before RoPE;
- attention and FFN outputs are RMSNormed again (post_attention_norm, post_ffw_norm) before
  they join the residual stream;
- layers slide over `sliding_window` tokens except every `sliding_window_pattern`-th one;
  sliding layers use rope base `rope_theta_local` (10000) without scaling, global layers
  `rope_theta` with the file's linear rope scaling;
- the attention scale is 1/sqrt(head_dim), except 27B (62 layers): 1/sqrt(hidden / heads);
- logits are soft-capped when the file gives `final_logit_softcapping`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from ...kernels.batch import AttentionBatch
from .config import ModelConfig
from .decoder import DecoderModel
from .family import FamilyConfig
from .weights import LayerWeights, ProgressCallback

_GEMMA3_27B_NUM_LAYERS = 62  # llama.cpp keys the 27B attention scale on the layer count


def sliding_layers(num_layers: int, pattern: int | Sequence[bool], window: int) -> list[bool]:
    """Which layers use the sliding window. An int pattern N makes layers N-1, 2N-1, ... global
    (llama.cpp's `set_swa_pattern`); a per-layer bool list is taken as given; no window, none."""
    if not window:
        return [False] * num_layers
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != num_layers:
            raise ValueError(f"sliding_window_pattern has {len(pattern)} entries for {num_layers} layers")
        return [bool(p) for p in pattern]
    pattern = int(pattern)
    return [pattern == 0 or index % pattern < pattern - 1 for index in range(num_layers)]


def attention_scale(config: ModelConfig) -> float:
    if config.num_layers == _GEMMA3_27B_NUM_LAYERS:
        return (config.hidden_size // config.num_heads) ** -0.5  # query_pre_attn_scalar
    return config.head_dim**-0.5


class Gemma3Model(DecoderModel):
    def __init__(self, config: ModelConfig, family: FamilyConfig, gguf_file: Any, ops: Any,
                 on_progress: ProgressCallback | None = None) -> None:
        config = dataclasses.replace(
            config, extra={**config.extra, "attention_scale": attention_scale(config)})
        super().__init__(config, family, gguf_file, ops, on_progress)
        extra = config.extra
        # float32 like llama.cpp's sqrtf; the float64 value would round the product differently.
        self.embedding_scale = np.float32(math.sqrt(np.float32(config.hidden_size)))
        self.sliding_window = int(extra.get("sliding_window", 0))
        self.is_sliding = sliding_layers(config.num_layers, extra.get("sliding_window_pattern", 6),
                                         self.sliding_window)
        self.rope_theta_local = float(extra.get("rope_theta_local", 10000.0))
        factor = float(extra.get("rope_scaling_factor", 0.0) or 0.0)
        self.global_position_scale = 1.0 / factor if factor else 1.0
        self.logit_softcap = float(extra.get("final_logit_softcapping", 0.0) or 0.0)

    def embed(self, token_ids: Any) -> Any:  # -> [num_tokens, hidden] float32
        return super().embed(token_ids) * self.embedding_scale

    def layer_rope(self, index: int) -> tuple[float, float]:
        if self.is_sliding[index]:
            return self.rope_theta_local, 1.0
        return float(self.config.rope_theta), self.global_position_scale

    def attention_options(self, layer: LayerWeights) -> dict[str, Any]:
        return {"sliding_window": self.sliding_window if self.is_sliding[layer.index] else 0}

    def qk_transform(self, layer: LayerWeights, q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
        eps = self.config.norm_eps
        q = self.ops.head_rms_norm(q, layer["attn_q_norm"], eps)
        k = self.ops.head_rms_norm(k, layer["attn_k_norm"], eps)
        return super().qk_transform(layer, q, k, cos, sin)

    def attention_block(self, layer: LayerWeights, x: Any, cos: Any, sin: Any,
                        batch: AttentionBatch, kv_cache: tuple[Any, Any]) -> Any:
        attended = super().attention_block(layer, x, cos, sin, batch, kv_cache)
        return self.norm(attended, layer["post_attention_norm"])

    def ffn_block(self, layer: LayerWeights, x: Any, rows: Any = None) -> Any:
        return self.norm(super().ffn_block(layer, x, rows), layer["post_ffw_norm"])

    def forward(self, token_ids: Any, batch: AttentionBatch, kv_caches: list[tuple[Any, Any]],
                logits_indices: Any) -> Any:  # [num_logits, vocab_size] float32
        logits = super().forward(token_ids, batch, kv_caches, logits_indices)
        if self.logit_softcap:
            cap = np.float32(self.logit_softcap)
            logits = self.ops.xp.tanh(logits / cap) * cap
        return logits


MODEL_CLASS = Gemma3Model
