"""Mixture-of-experts feed-forward (gpt-oss): the NumPy specification of `ops.moe_ffn`.

Semantics (llama.cpp's `build_moe_ffn` with `LLM_FFN_SWIGLU_OAI_MOE` and softmax-weight gating,
as `llm_build_openai_moe` calls it), per token:

1. routing: the k = `num_experts_used` experts with the largest router logits, in descending
   order of logit (ties: the lower expert index first); their weights are a softmax over those k
   logits only (the other experts' logits do not enter the denominator);
2. for each chosen expert e: g = gate_e . x + gate_bias[e], u = up_e . x + up_bias[e];
   g = min(g, limit); u = clip(u, -limit, limit); h = g / (1 + exp(-alpha g)) * (u + 1);
   y_e = down_e . h + down_bias[e];
3. out = sum over the k choices, in routing order, of weight_e * y_e (float32).

Each expert matmul is `linear.linear` on the tokens routed to that expert, so activations are
rounded exactly as for a dense weight of the same type (q8_32 for MXFP4 and Q8_0, ...), and the
`generated_rows` mask keeps its batch-invariance meaning.

Experts stay in their GGUF block format in memory (`ExpertWeights.raw`); a call dequantizes only
the experts its tokens chose, each once per matrix.

Expert parallelism (runtime/parallel): with `expert_range=(begin, end)` the expert tensors and
biases hold only global experts begin..end-1 (local index = global - begin) while the router
logits still cover all experts, so routing and the softmax weights are the full op's; the output
is the sum over the k slots of only the slots whose expert is in the range. Summed over ranks
whose ranges tile 0..E, that is the full output up to float32 summation order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

from .dequant import SUPPORTED_TYPES, dequantize, row_bytes
from .linear import DenseWeight, activation_rounding, linear


@dataclass(frozen=True)
class ExpertWeights:
    """`[num_experts, out_features, in_features]` kept as GGUF blocks: raw is
    `[num_experts, out_features, row_bytes]` uint8 (a zero-copy view of the file when possible)."""

    raw: np.ndarray
    ggml_type: T
    num_experts: int
    out_features: int
    in_features: int

    def __post_init__(self) -> None:
        if self.ggml_type not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported expert tensor type {T(self.ggml_type).name}")
        if min(self.num_experts, self.out_features, self.in_features) < 1:
            raise ValueError(f"expert tensor shape must be positive, got "
                             f"[{self.num_experts}, {self.out_features}, {self.in_features}]")
        expected = (self.num_experts, self.out_features, row_bytes(self.ggml_type, self.in_features))
        if self.raw.dtype != np.uint8 or self.raw.shape != expected:
            raise ValueError(f"expert bytes must be uint8 {list(expected)}, got "
                             f"{self.raw.dtype} {list(self.raw.shape)}")

    @property
    def rounding(self) -> str:
        return activation_rounding(self.ggml_type)

    @property
    def num_bytes(self) -> int:
        return self.raw.nbytes

    def expert(self, index: int) -> DenseWeight:
        """Expert `index` dequantized to float32 `[out_features, in_features]`."""
        matrix = dequantize(self.raw[index], self.ggml_type, self.in_features)
        return DenseWeight(matrix, self.rounding)


def load_experts(
    raw: np.ndarray,  # the tensor's bytes (any shape, uint8 or a typed F32/F16 array)
    ggml_type: int,
    num_experts: int,
    out_features: int,
    in_features: int,
) -> ExpertWeights:
    ggml_type = T(ggml_type)
    width = row_bytes(ggml_type, in_features)
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if flat.size != num_experts * out_features * width:
        raise ValueError(f"expert tensor holds {flat.size} bytes, expected {num_experts} x "
                         f"{out_features} x {width} ({ggml_type.name}, {in_features} columns)")
    return ExpertWeights(flat.reshape(num_experts, out_features, width), ggml_type,
                         num_experts, out_features, in_features)


def route(
    router_logits: np.ndarray,  # [num_tokens, num_experts] float32
    num_experts_used: int,
) -> tuple[np.ndarray, np.ndarray]:  # expert ids [num_tokens, k] int32, weights [num_tokens, k] float32
    """Top-k by logit (descending, ties to the lower index) and the softmax over those k logits."""
    logits = np.asarray(router_logits, dtype=np.float32)
    # A stable sort of the negated logits keeps equal logits in index order.
    selected = np.argsort(-logits, axis=1, kind="stable")[:, :num_experts_used].astype(np.int32)
    chosen = np.take_along_axis(logits, selected, axis=1)
    exps = np.exp(chosen - chosen[:, :1])  # the first choice holds the row maximum
    weights = (exps / exps.sum(axis=1, keepdims=True, dtype=np.float32)).astype(np.float32)
    return selected, weights


def swiglu_oai(
    gate: np.ndarray,  # [num_tokens, ffn] float32
    up: np.ndarray,  # [num_tokens, ffn] float32
    alpha: float,
    limit: float,
) -> np.ndarray:  # [num_tokens, ffn] float32
    """gpt-oss's clamped SwiGLU: the gate is clamped from above only, the up value both ways."""
    alpha, limit = np.float32(alpha), np.float32(limit)
    g = np.minimum(gate, limit)
    u = np.clip(up, -limit, limit)
    return (g / (np.float32(1.0) + np.exp(-alpha * g)) * (u + np.float32(1.0))).astype(np.float32)


def local_expert_range(
    num_routed_experts: int,  # columns of the router logits: every expert of the model
    num_local_experts: int,  # experts the weight tensors hold
    expert_range: tuple[int, int] | None,
) -> tuple[int, int]:
    """The validated [begin, end) of global experts held locally; None means all of them."""
    if expert_range is None:
        return 0, num_routed_experts
    begin, end = (int(v) for v in expert_range)
    if not 0 <= begin < end <= num_routed_experts:
        raise ValueError(f"expert_range [{begin}, {end}) must be a non-empty part of "
                         f"0..{num_routed_experts}")
    if end - begin != num_local_experts:
        raise ValueError(f"expert_range [{begin}, {end}) holds {end - begin} experts but the "
                         f"expert tensors hold {num_local_experts}")
    return begin, end


def check_shapes(x, router_logits, gate_exps, up_exps, down_exps, biases, num_experts_used,
                 expert_range: tuple[int, int] | None = None) -> None:
    """Raises ValueError unless the arguments of `moe_ffn` fit together (both backends use it)."""
    num_tokens, hidden = x.shape
    num_experts, ffn = gate_exps.num_experts, gate_exps.out_features
    num_routed = num_experts if expert_range is None else router_logits.shape[-1]
    if router_logits.shape != (num_tokens, num_routed):
        raise ValueError(f"router_logits must be [{num_tokens}, {num_routed}], "
                         f"got {list(router_logits.shape)}")
    local_expert_range(num_routed, num_experts, expert_range)
    for name, w, shape in (("gate", gate_exps, (num_experts, ffn, hidden)),
                           ("up", up_exps, (num_experts, ffn, hidden)),
                           ("down", down_exps, (num_experts, hidden, ffn))):
        if (w.num_experts, w.out_features, w.in_features) != shape:
            raise ValueError(f"{name} experts must be {list(shape)}, got "
                             f"[{w.num_experts}, {w.out_features}, {w.in_features}]")
    for name, bias, width in zip(("gate", "up", "down"), biases, (ffn, ffn, hidden)):
        if bias is not None and bias.shape != (num_experts, width):
            raise ValueError(f"{name}_bias must be [{num_experts}, {width}], got {list(bias.shape)}")
    if not 1 <= num_experts_used <= num_routed:
        raise ValueError(f"num_experts_used must be in 1..{num_routed}, got {num_experts_used}")


def moe_ffn(
    x: np.ndarray,  # [num_tokens, hidden] float32
    router_logits: np.ndarray,  # [num_tokens, num_experts] float32, router bias already added
    gate_exps: ExpertWeights,  # [E, ffn, hidden]
    gate_bias: np.ndarray | None,  # [E, ffn] float32
    up_exps: ExpertWeights,  # [E, ffn, hidden]
    up_bias: np.ndarray | None,  # [E, ffn] float32
    down_exps: ExpertWeights,  # [E, hidden, ffn]
    down_bias: np.ndarray | None,  # [E, hidden] float32
    num_experts_used: int,
    swiglu_alpha: float = 1.702,
    swiglu_limit: float = 7.0,
    generated_rows: np.ndarray | None = None,  # [num_tokens] bool, as for `linear`
    expert_range: tuple[int, int] | None = None,  # global experts the tensors hold; None: all
) -> np.ndarray:  # [num_tokens, hidden] float32 (with expert_range: this range's partial sum)
    x = np.asarray(x, dtype=np.float32)
    router_logits = np.asarray(router_logits, dtype=np.float32)
    biases = [None if b is None else np.asarray(b, dtype=np.float32) for b in (gate_bias, up_bias, down_bias)]
    check_shapes(x, router_logits, gate_exps, up_exps, down_exps, biases, num_experts_used,
                 expert_range)
    begin, end = local_expert_range(router_logits.shape[-1], gate_exps.num_experts, expert_range)
    num_tokens, hidden = x.shape
    if generated_rows is None:
        generated_rows = np.zeros(num_tokens, dtype=bool)
    selected, weights = route(router_logits, num_experts_used)
    # Slots routed to another range's experts contribute exact zeros to this partial sum.
    is_whole = (begin, end) == (0, router_logits.shape[-1])
    expert_out = (np.empty if is_whole else np.zeros)((num_tokens, num_experts_used, hidden),
                                                      dtype=np.float32)
    for expert in np.unique(selected):
        if not begin <= expert < end:
            continue
        tokens, slots = np.nonzero(selected == expert)
        rows = generated_rows[tokens]
        local = int(expert) - begin
        bias = [None if b is None else b[local] for b in biases]
        gate = linear(x[tokens], gate_exps.expert(local), bias[0], rows)
        up = linear(x[tokens], up_exps.expert(local), bias[1], rows)
        hidden_act = swiglu_oai(gate, up, swiglu_alpha, swiglu_limit)
        expert_out[tokens, slots] = linear(hidden_act, down_exps.expert(local), bias[2], rows)
    out = expert_out[:, 0] * weights[:, :1]
    for slot in range(1, num_experts_used):
        out += expert_out[:, slot] * weights[:, slot:slot + 1]
    return out
