"""Model families: a YAML description each (configs/families) plus a small module for the rest."""
from __future__ import annotations

import importlib
from typing import Any

from .config import ModelConfig
from .family import FamilyConfig, family_for_architecture, load_families, resolve_hparams
from .weights import ProgressCallback, expected_shapes

_CONFIG_FIELDS = ("num_layers", "hidden_size", "ffn_size", "num_heads", "num_kv_heads", "head_dim",
                  "norm_eps", "rope_theta", "rope_dim", "context_length")


def supported_architectures() -> list[str]:
    return sorted(load_families())


def vocab_size_of(gguf_file: Any) -> int:
    tokens = gguf_file.metadata.get("tokenizer.ggml.tokens")
    if tokens:
        return len(tokens)
    return int(gguf_file.tensors["token_embd.weight"].shape[0])


def resolve_model_config(gguf_file: Any) -> tuple[ModelConfig, FamilyConfig, dict[str, Any]]:
    """Family, hyperparameters and expected tensors of a GGUF; raises on anything missing."""
    architecture = gguf_file.architecture
    family = family_for_architecture(architecture)
    source = str(gguf_file.path)
    hparams = resolve_hparams(family, architecture, gguf_file.metadata, source)
    vocab = vocab_size_of(gguf_file)
    hparams["vocab_size"] = vocab
    switches = dict(family.switches)
    config = ModelConfig(
        family=family.family,
        architecture=architecture,
        vocab_size=vocab,
        norm=switches.pop("norm", "rms"),
        activation=switches.pop("activation", "swiglu"),
        rope_style=switches.pop("rope_style", "normal"),
        extra={**switches, **{k: v for k, v in hparams.items() if k not in _CONFIG_FIELDS}},
        **{k: hparams[k] for k in _CONFIG_FIELDS},
    )
    shapes, optional = expected_shapes(family, hparams, config.num_layers, vocab)
    gguf_file.validate_tensors(shapes, optional)
    return config, family, hparams


def load_model(gguf_file: Any, ops: Any, on_progress: ProgressCallback | None = None):
    """Build the family's model class over a validated GGUF on the given op set."""
    config, family, _ = resolve_model_config(gguf_file)
    module = importlib.import_module(f"{__name__}.{family.module}")
    return module.MODEL_CLASS(config, family, gguf_file, ops, on_progress)
