"""One rank's view of a GGUF file: the same interface the model loader reads (`tensors`,
`raw`, `array`, `metadata`, ...), where every sharded tensor is already cut to the rank's
slice of the memory-mapped data, still quantized. The model code loads it as if it were the
whole file; `shard` carries the collectives its forward needs.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..models.family import FamilyConfig
from .block_slicing import ShardingError, block_shape, slice_columns, slice_rows
from .rank_shard import RankShard

_REPLICATED_SUFFIXES = ("_norm", "rope_freqs")  # per-feature vectors every rank applies whole
# Added once after the all-reduce (DecoderModel.row_parallel_linear), so every rank holds them;
# the MoE router runs whole on every rank so that all ranks route alike.
_REPLICATED_ROLES = ("attn_output_bias", "ffn_down_bias", "ffn_gate_inp", "ffn_gate_inp_bias")
_EXPERT_ROLES = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")  # [E, ...] and their biases


def tensor_roles(family: FamilyConfig, num_layers: int) -> dict[str, str]:
    """GGUF tensor name -> its role in the family's YAML."""
    roles = {spec.name: spec.role for spec in family.global_tensors}
    for index in range(num_layers):
        roles.update({spec.name.format(i=index): spec.role for spec in family.layer_tensors})
    return roles


class ShardedGGUFFile:
    def __init__(self, gguf_file: Any, family: FamilyConfig, config: Any, shard: RankShard) -> None:
        self.gguf = gguf_file
        self.shard = shard
        self.config = config
        self.roles = tensor_roles(family, config.num_layers)
        # name -> ("rows", [ranges]) | ("columns", begin, end) | ("experts", begin, end) | ("whole",)
        self.cuts = {name: self._cut(name, info) for name, info in gguf_file.tensors.items()}
        self.tensors = {name: self._local_info(name, info) for name, info in gguf_file.tensors.items()}

    def __getattr__(self, name: str) -> Any:  # metadata, path, architecture, ...
        return getattr(self.gguf, name)

    # ---- the rules ----------------------------------------------------------------------

    def _cut(self, name: str, info: Any) -> tuple:
        role = self.roles.get(name)
        plan, cfg = self.shard.plan, self.config
        q, kv = plan.q_columns, plan.kv_rows
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        ffn, vocab = plan.ffn, plan.vocab
        if role is None or role.endswith(_REPLICATED_SUFFIXES) or role in _REPLICATED_ROLES:
            return ("whole",)
        if role.removesuffix("_bias") in _EXPERT_ROLES:
            if plan.experts is None:
                raise ShardingError(f"{name}: expert tensor but the plan splits no experts")
            return ("experts", *plan.experts)
        if role == "attn_sinks":  # one logit per query head
            return ("rows", [plan.q_heads])
        if role in ("attn_q", "attn_q_bias"):
            return ("rows", [q])
        if role in ("attn_k", "attn_v", "attn_k_bias", "attn_v_bias"):
            return ("rows", [kv])
        if role in ("attn_qkv", "attn_qkv_bias"):  # fused: Q rows, then K, then V
            return ("rows", [q, (q_size + kv[0], q_size + kv[1]),
                             (q_size + kv_size + kv[0], q_size + kv_size + kv[1])])
        if role == "attn_output":
            return ("columns", *q)
        if role == "ffn_gate":
            return ("rows", [ffn])
        if role == "ffn_up":
            if info.shape[0] == 2 * cfg.ffn_size:  # gate and up fused (phi3), gate first
                return ("rows", [ffn, (cfg.ffn_size + ffn[0], cfg.ffn_size + ffn[1])])
            return ("rows", [ffn])
        if role == "ffn_down":
            return ("columns", *ffn)
        if role in ("token_embd", "output"):
            return ("rows", [vocab])
        raise ShardingError(f"{name}: tensor parallelism has no rule to split role {role!r}")

    def _local_info(self, name: str, info: Any) -> Any:
        cut = self.cuts[name]
        if cut[0] == "whole":
            return info
        block_size, type_size = block_shape(info.ggml_type)
        if cut[0] == "experts":
            shape = (cut[2] - cut[1], *info.shape[1:])
        elif cut[0] == "rows":
            num_rows = sum(end - begin for begin, end in cut[1])
            shape = (num_rows, *info.shape[1:])
        else:
            shape = (info.shape[0], cut[2] - cut[1])
        num_elements = int(np.prod(shape))
        return dataclasses.replace(info, shape=shape,
                                   num_bytes=num_elements // block_size * type_size)

    # ---- data ---------------------------------------------------------------------------

    def raw(self, name: str) -> np.ndarray:
        """This rank's bytes of the tensor: [local rows, local row bytes] uint8."""
        cut, whole = self.cuts[name], self.gguf.raw(name)
        if cut[0] == "whole":
            return whole
        if cut[0] == "rows":
            return slice_rows(whole, cut[1])
        info = self.gguf.tensors[name]
        if cut[0] == "experts":  # [E * rows per expert, row bytes]: one contiguous run of rows
            rows_per_expert = info.num_rows // info.shape[0]
            return slice_rows(whole, [(cut[1] * rows_per_expert, cut[2] * rows_per_expert)])
        return slice_columns(whole, info.ggml_type, info.shape[-1], cut[1], cut[2], name)

    def array(self, name: str) -> np.ndarray:
        """Typed view of a float tensor's slice (vectors: norms and biases)."""
        cut, whole = self.cuts[name], self.gguf.array(name)
        if cut[0] == "whole":
            return whole
        if cut[0] == "experts":  # expert biases [E, width]
            return whole[cut[1]:cut[2]]
        if cut[0] != "rows" or whole.ndim != 1:
            raise ShardingError(f"{name}: only 1-D float tensors are read as typed arrays per rank")
        return np.concatenate([whole[begin:end] for begin, end in cut[1]])
