"""gpt-oss family (gpt-oss-20b, gpt-oss-120b): what configs/families/gpt-oss.yaml cannot say.

Each rule follows llama.cpp's graph for the `gpt-oss` architecture (llama_model_openai_moe,
src/models/openai-moe*.cpp), the implementation the goldens were recorded with:
- layers slide over `sliding_window` tokens with llama.cpp's `set_swa_pattern` rule: for the
  default period 2, layers 0, 2, 4, ... slide and 1, 3, 5, ... attend to the whole context;
- every layer uses the same rope table: NEOX rotation, base `rope_theta`, YaRN scaling when the
  file's `rope.scaling.type` is `yarn` (kernels/reference/rope.py `YarnScaling`);
- each query head has a learned sink logit (`attn_sinks`) in its softmax denominator; the
  attention scale is 1/sqrt(head_dim); the output projection has a bias;
- the FFN is a mixture of experts: router logits = ffn_gate_inp . x + bias, then `ops.moe_ffn`
  (top `expert_used_count` experts, softmax over their logits, clamped SwiGLU with
  alpha 1.702 / limit 7, expert biases), weights scaled by `expert_weights_scale` when the file
  gives one other than 0 or 1.
As a tensor-parallel rank (runtime/parallel, expert parallel) the router runs whole, the rank's
`moe_ffn` adds only its own experts' terms, and the partial outputs are all-reduced.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...kernels.reference.rope import YarnScaling
from .config import ModelConfig
from .decoder import DecoderModel
from .family import FamilyConfig
from .gemma3 import sliding_layers
from .weights import LayerWeights, ProgressCallback, WeightLoader

_EXPERT_ROLES = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


def yarn_scaling(extra: dict[str, Any]) -> YarnScaling | None:
    """The file's YaRN parameters, or None when its rope is not YaRN-scaled."""
    kind = str(extra.get("rope_scaling_type", "none")).lower()
    if kind in ("none", ""):
        return None
    if kind != "yarn":
        raise ValueError(f"gpt-oss: rope scaling type {kind!r} is not supported (yarn or none)")
    return YarnScaling(factor=float(extra["rope_scaling_factor"]),
                       original_context=int(extra["rope_original_context"]),
                       beta_fast=float(extra["rope_yarn_beta_fast"]),
                       beta_slow=float(extra["rope_yarn_beta_slow"]),
                       attn_factor=float(extra["rope_attn_factor"]),
                       log_multiplier=float(extra["rope_yarn_log_multiplier"]))


class GptOssModel(DecoderModel):
    def __init__(self, config: ModelConfig, family: FamilyConfig, gguf_file: Any, ops: Any,
                 on_progress: ProgressCallback | None = None) -> None:
        extra = config.extra
        self.num_experts = int(extra["num_experts"])
        self.num_experts_used = int(extra["num_experts_used"])
        if not 0 < self.num_experts_used <= self.num_experts:
            raise ValueError(f"gpt-oss: expert_used_count {self.num_experts_used} must be in "
                             f"1..expert_count {self.num_experts}")
        self.sliding_window = int(extra["sliding_window"])
        self.is_sliding = sliding_layers(config.num_layers, extra["sliding_window_pattern"],
                                         self.sliding_window)
        self.yarn = yarn_scaling(dict(extra))
        scale = float(extra.get("expert_weights_scale", 0.0) or 0.0)
        self.expert_weights_scale = None if scale in (0.0, 1.0) else np.float32(scale)
        super().__init__(config, family, gguf_file, ops, on_progress)

    def load_ffn(self, loader: WeightLoader, names: dict[str, str], weights: LayerWeights) -> None:
        weights.tensors["ffn_gate_inp"] = loader.matrix([names["ffn_gate_inp"]])
        for role in _EXPERT_ROLES:
            weights.tensors[role] = loader.experts(names[role])
            bias_name = names.get(f"{role}_bias")
            if bias_name and loader.has(bias_name):  # [num_experts, out_features]
                weights.tensors[f"{role}_bias"] = loader.vector(bias_name)

    def rope_scaling_options(self, index: int) -> dict[str, Any]:
        return {"yarn": self.yarn} if self.yarn is not None else {}

    def attention_options(self, layer: LayerWeights) -> dict[str, Any]:
        return {"sliding_window": self.sliding_window if self.is_sliding[layer.index] else 0,
                "sinks": layer["attn_sinks"]}

    def ffn_input_weight(self, layer: LayerWeights) -> Any:
        return None  # the MoE block reads its input for the router and the experts

    def ffn_block(self, layer: LayerWeights, x: Any, rows: Any = None) -> Any:
        # x: [num_tokens, hidden] float32 (post_attention_norm applied); -> [num_tokens, hidden]
        ops = self.ops
        router_logits = ops.linear(x, layer["ffn_gate_inp"], layer["ffn_gate_inp_bias"],
                                   generated_rows=rows)  # [num_tokens, num_experts]
        out = ops.moe_ffn(x, router_logits,
                          layer["ffn_gate_exps"], layer.get("ffn_gate_exps_bias"),
                          layer["ffn_up_exps"], layer.get("ffn_up_exps_bias"),
                          layer["ffn_down_exps"], layer.get("ffn_down_exps_bias"),
                          self.num_experts_used, generated_rows=rows,
                          expert_range=None if self.shard is None else self.shard.plan.experts)
        out = self.reduce_partial(out)  # [num_tokens, hidden]: only a rank's experts until here
        if self.expert_weights_scale is not None:
            out = out * self.expert_weights_scale
        return out


MODEL_CLASS = GptOssModel
