"""A decoder-only transformer driven by a family's switches, on any backend's op set.

Families that need more than switches (gemma's scaled embeddings, extra norms, gpt2's learned
positions, ...) subclass `DecoderModel` and override the small hooks (`embed`, `input_embeddings`,
`attention_block`, `qk_transform`, `attention_options`, `layer_rope`, `rope_scaling_options`,
`ffn_block`, `load_ffn`); `LayerWeights.index` says which layer a hook runs for. A family whose
`attention_block` / `ffn_block` reads its input other than through one `ops.linear` also
overrides `attention_input_weight` / `ffn_input_weight` to return None: on CUDA decode batches
the norm before the block otherwise returns its output with the 8-bit codes for that linear.

The `norm` switch picks RMSNorm or LayerNorm (with the `*_norm_bias` vectors when the family has
them); rope_style `none` skips the rotation (learned positions); `attn_output_bias`,
`ffn_up_bias` and `ffn_down_bias` are added when present.
"""
from __future__ import annotations

from typing import Any

from ...kernels.batch import AttentionBatch
from .config import ModelConfig
from .family import FamilyConfig
from .weights import LayerWeights, ProgressCallback, WeightLoader


class DecoderModel:
    def __init__(self, config: ModelConfig, family: FamilyConfig, gguf_file: Any, ops: Any,
                 on_progress: ProgressCallback | None = None) -> None:
        self.config = config
        self.family = family
        self.ops = ops
        # As one tensor-parallel rank, `gguf_file` is that rank's view (runtime/parallel): its
        # tensors are already sliced, `layout` is the rank's share of heads, FFN and vocab, and
        # `shard` adds the collectives where partial results meet.
        self.shard = getattr(gguf_file, "shard", None)
        self.layout = config if self.shard is None else self.shard.plan.local_config(config)
        loader = WeightLoader(gguf_file, ops)
        self.layers = []
        for index in range(config.num_layers):
            self.layers.append(self._load_layer(loader, index))
            if on_progress:
                on_progress(index + 1, config.num_layers)
        names = {s.role: s.name for s in family.global_tensors}
        self.token_embd = loader.matrix([names["token_embd"]])
        self.output_norm = loader.vector(names["output_norm"])
        output_norm_bias_name = names.get("output_norm_bias")
        self.output_norm_bias = (loader.vector(output_norm_bias_name)
                                 if output_norm_bias_name and loader.has(output_norm_bias_name) else None)
        output_name = names.get("output")
        self.is_output_tied = not (output_name and loader.has(output_name))
        self.output = self.token_embd if self.is_output_tied else loader.matrix([output_name])
        rope_freqs_name = names.get("rope_freqs")
        self.rope_freq_factors = (
            ops.to_host(loader.vector(rope_freqs_name))
            if rope_freqs_name and loader.has(rope_freqs_name) else None
        )
        self.num_weight_bytes = loader.num_bytes_loaded

    # ---- loading -------------------------------------------------------------------------

    def _load_layer(self, loader: WeightLoader, index: int) -> LayerWeights:
        names = {s.role: s.name.format(i=index) for s in self.family.layer_tensors}
        weights = LayerWeights(index=index)
        for role, name in names.items():
            if loader.has(name) and len(loader.gguf.tensors[name].shape) == 1:  # norms, biases
                weights.tensors[role] = loader.vector(name)
        qkv_roles = ["attn_q", "attn_k", "attn_v"] if "attn_q" in names else []
        if qkv_roles:
            weights.tensors["attn_qkv"] = loader.matrix([names[r] for r in qkv_roles])
            biases = [weights.get(f"{r}_bias") for r in qkv_roles]
            if any(b is not None for b in biases):
                weights.tensors["attn_qkv_bias"] = self.ops.xp.concatenate(biases)
        elif "attn_qkv" in names:
            weights.tensors["attn_qkv"] = loader.matrix([names["attn_qkv"]])
        weights.tensors["attn_output"] = loader.matrix([names["attn_output"]])
        self.load_ffn(loader, names, weights)
        return weights

    def load_ffn(self, loader: WeightLoader, names: dict[str, str], weights: LayerWeights) -> None:
        """The FFN matrices of one layer (`names`: role -> GGUF name); MoE families override it."""
        if "ffn_gate" in names:
            weights.tensors["ffn_gate_up"] = loader.matrix([names["ffn_gate"], names["ffn_up"]])
        else:
            weights.tensors["ffn_up"] = loader.matrix([names["ffn_up"]])
        weights.tensors["ffn_down"] = loader.matrix([names["ffn_down"]])

    # ---- forward -------------------------------------------------------------------------

    def forward(
        self,
        token_ids: Any,  # [num_tokens] int32 on the device
        batch: AttentionBatch,
        kv_caches: list[tuple[Any, Any]],  # per layer (k_cache, v_cache)
        logits_indices: Any,  # [num_logits] int: rows of the batch whose logits are wanted
    ) -> Any:  # [num_logits, vocab_size] float32 on the device
        ops = self.ops
        hidden = self.input_embeddings(token_ids, batch.positions)
        rope_tables = self.rope_tables(batch.positions)
        residual = None
        for index, layer in enumerate(self.layers):
            cos, sin = rope_tables[index]
            if residual is None:
                residual = hidden
                normed = self.norm(hidden, layer["attn_norm"], layer.get("attn_norm_bias"),
                                   quantize_for=self.attention_input_weight(layer))
            else:
                normed, residual = self.add_norm(hidden, residual, layer["attn_norm"],
                                                 layer.get("attn_norm_bias"),
                                                 quantize_for=self.attention_input_weight(layer))
            hidden = self.attention_block(layer, normed, cos, sin, batch, kv_caches[index])
            normed, residual = self.add_norm(hidden, residual, layer["ffn_norm"], layer.get("ffn_norm_bias"),
                                             quantize_for=self.ffn_input_weight(layer))
            hidden = self.ffn_block(layer, normed, batch.generated_rows)
        # The last residual add rides in the output norm's launch (same float32 sum as a separate add).
        normed, _ = self.add_norm(hidden[logits_indices], residual[logits_indices], self.output_norm,
                                  self.output_norm_bias, quantize_for=self.output)
        logits = ops.linear(normed, self.output, generated_rows=batch.logits_generated_rows)
        return logits if self.shard is None else self.shard.gather_vocab(logits)

    def layer_rope(self, index: int) -> tuple[float, float]:
        """(rope base, position scale) of layer `index`; families with per-layer rope override."""
        return float(self.config.rope_theta), 1.0

    def rope_tables(
        self,
        positions: Any,  # [num_tokens] int on the device
    ) -> list[tuple[Any, Any]]:  # per layer (cos, sin), each [num_tokens, rope_dim // 2] float32
        """One cos/sin table per distinct `layer_rope` value, shared by the layers that use it;
        (None, None) per layer when the family has no rope."""
        if self.config.rope_style == "none":
            return [(None, None)] * self.config.num_layers
        by_params: dict[tuple[float, float], tuple[Any, Any]] = {}
        tables = []
        for index in range(self.config.num_layers):
            params = self.layer_rope(index)
            if params not in by_params:
                theta, scale = params
                by_params[params] = self.ops.rope_cos_sin(positions, self.config.rope_dim, theta,
                                                          self.rope_freq_factors, scale,
                                                          **self.rope_scaling_options(index))
            tables.append(by_params[params])
        return tables

    def rope_scaling_options(self, index: int) -> dict[str, Any]:
        """Extra `ops.rope_cos_sin` arguments of layer `index` (gpt-oss: `yarn`); layers that share
        `layer_rope` values must share these too."""
        return {}

    def embed(self, token_ids: Any) -> Any:  # -> [num_tokens, hidden] float32
        if self.shard is not None:
            return self.shard.embed(self.ops, self.token_embd, token_ids)
        return self.ops.embedding(self.token_embd, token_ids)

    def reduce_partial(self, x: Any) -> Any:  # [num_tokens, hidden]: a row-parallel matmul's term
        return x if self.shard is None else self.shard.reduce_partial(x)

    def row_parallel_linear(
        self,
        x: Any,  # [num_tokens, in_features] float32
        weight: Any,  # [hidden, in_features]: a row-parallel shard under tensor parallelism
        bias: Any,  # [hidden] float32 or None
        rows: Any,  # generated_rows, as for ops.linear
    ) -> Any:  # [num_tokens, hidden] float32
        """x @ W.T + bias for o / down projections: a shard's partial sums are reduced first and
        the bias is added once, after the reduction."""
        out = self.reduce_partial(self.ops.linear(x, weight, bias if self.shard is None else None,
                                                  generated_rows=rows))
        return out if bias is None or self.shard is None else out + bias

    def input_embeddings(
        self,
        token_ids: Any,  # [num_tokens] int32 on the device
        positions: Any,  # [num_tokens] int32 on the device
    ) -> Any:  # [num_tokens, hidden] float32: what the first layer reads
        """The token embeddings; families with learned positions add them here."""
        return self.embed(token_ids)

    def norm(
        self,
        x: Any,  # [num_tokens, hidden] float32
        weight: Any,  # [hidden] float32
        bias: Any = None,  # [hidden] float32 (LayerNorm only)
        quantize_for: Any = None,  # the linear weight that alone reads the result, if any
    ) -> Any:  # [num_tokens, hidden] float32
        """With `quantize_for`, the result may come with its 8-bit activation codes for that
        weight's GEMV (CUDA, decode batches): pass it to `ops.linear` only."""
        if self.config.norm == "layer":
            return self.ops.layer_norm(x, weight, bias, self.config.norm_eps)
        return self.ops.rms_norm(x, weight, self.config.norm_eps, quantize_for=quantize_for)

    def add_norm(
        self,
        x: Any,  # [num_tokens, hidden] float32: the new branch output
        residual: Any,  # [num_tokens, hidden] float32
        weight: Any,  # [hidden] float32
        bias: Any = None,  # [hidden] float32 (LayerNorm only)
        quantize_for: Any = None,  # as for `norm` (applies to `normed`)
    ) -> tuple[Any, Any]:  # (normed, x + residual), each [num_tokens, hidden] float32
        if self.config.norm == "layer":
            return self.ops.add_layer_norm(x, residual, weight, bias, self.config.norm_eps)
        return self.ops.add_rms_norm(x, residual, weight, self.config.norm_eps, quantize_for=quantize_for)

    def attention_input_weight(self, layer: LayerWeights) -> Any:
        """The weight that alone reads `attention_block`'s input (its norm may then emit the 8-bit
        codes that weight's GEMV needs, saving a launch); None for a block that reads it otherwise."""
        return layer["attn_qkv"]

    def ffn_input_weight(self, layer: LayerWeights) -> Any:
        """As `attention_input_weight`, for `ffn_block`'s input."""
        return layer["ffn_gate_up" if self.config.activation in ("swiglu", "geglu") else "ffn_up"]

    def attention_block(self, layer: LayerWeights, x: Any, cos: Any, sin: Any,
                        batch: AttentionBatch, kv_cache: tuple[Any, Any]) -> Any:
        cfg, ops = self.layout, self.ops
        rows = batch.generated_rows
        qkv = ops.linear(x, layer["attn_qkv"], layer.get("attn_qkv_bias"), generated_rows=rows)
        num_tokens = qkv.shape[0]
        q = qkv[:, : cfg.q_size].reshape(num_tokens, cfg.num_heads, cfg.head_dim)
        k = qkv[:, cfg.q_size : cfg.q_size + cfg.kv_size].reshape(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, cfg.q_size + cfg.kv_size :].reshape(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        q = self.rotate_and_cache(layer, q, k, v, cos, sin, kv_cache, batch.slot_mapping)
        k_cache, v_cache = kv_cache
        attended = ops.paged_attention(q, k_cache, v_cache, batch, cfg.attention_scale,
                                       **self.attention_options(layer))
        return self.row_parallel_linear(attended.reshape(num_tokens, cfg.q_size), layer["attn_output"],
                                        layer.get("attn_output_bias"), rows)

    def rotate_and_cache(
        self,
        layer: LayerWeights,
        q: Any,  # [num_tokens, num_heads, head_dim] float32
        k: Any,  # [num_tokens, num_kv_heads, head_dim] float32
        v: Any,  # [num_tokens, num_kv_heads, head_dim] float32
        cos: Any,  # [num_tokens, rope_dim // 2] float32
        sin: Any,  # [num_tokens, rope_dim // 2] float32
        kv_cache: tuple[Any, Any],
        slot_mapping: Any,  # [num_tokens] int64
    ) -> Any:  # [num_tokens, num_heads, head_dim] float32: q as attention reads it
        """`qk_transform`, then k and v into the paged cache. Families that keep the plain rope
        get the backend's fused op (one launch instead of three per layer of a decode step)."""
        k_cache, v_cache = kv_cache
        style = self.config.rope_style
        if type(self).qk_transform is DecoderModel.qk_transform and style != "none":
            return self.ops.rope_write_kv(q, k, v, cos, sin, style, k_cache, v_cache, slot_mapping)
        q, k = self.qk_transform(layer, q, k, cos, sin)
        self.ops.write_kv(k_cache, v_cache, k, v, slot_mapping)
        return q

    def qk_transform(self, layer: LayerWeights, q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
        style = self.config.rope_style
        if style == "none":
            return q, k
        return self.ops.apply_rope(q, cos, sin, style), self.ops.apply_rope(k, cos, sin, style)

    def attention_options(self, layer: LayerWeights) -> dict[str, Any]:
        return {}

    def ffn_block(self, layer: LayerWeights, x: Any, rows: Any = None) -> Any:
        ops = self.ops
        if self.config.activation in ("swiglu", "geglu"):
            gate_up = ops.linear(x, layer["ffn_gate_up"], generated_rows=rows)
            gated_activation = ops.swiglu if self.config.activation == "swiglu" else ops.geglu
            # On CUDA decode batches `gated` may be the activation's q8_32 codes, or the [gate | up]
            # rows themselves for the down GEMV to activate (kernels/cuda/gated_input.py). Under
            # tensor parallelism a rank's gate_up rows are the FFN columns of its ffn_down shard.
            gated = gated_activation(gate_up, quantize_for=layer["ffn_down"])
            return self.row_parallel_linear(gated, layer["ffn_down"], layer.get("ffn_down_bias"), rows)
        up = ops.linear(x, layer["ffn_up"], layer.get("ffn_up_bias"), generated_rows=rows)
        return self.row_parallel_linear(ops.gelu(up), layer["ffn_down"], layer.get("ffn_down_bias"), rows)

