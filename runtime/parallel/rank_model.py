"""Build one rank's model: the family's own model class over the rank's view of the GGUF."""
from __future__ import annotations

import importlib
from typing import Any

from .. import models
from ..models import resolve_model_config
from ..models.weights import ProgressCallback
from .block_slicing import block_shape
from .communicator import Communicator
from .rank_shard import RankShard
from .shard_plan import ShardPlan, plan_shards
from .sharded_gguf import ShardedGGUFFile, tensor_roles


def plan_for_file(gguf_file: Any, world_size: int) -> tuple[Any, Any, list[ShardPlan]]:
    """(model config, family, one ShardPlan per rank) for a validated GGUF."""
    config, family, _ = resolve_model_config(gguf_file)
    widest: dict[str, int] = {"attn_output": 1, "ffn_down": 1}
    roles = tensor_roles(family, config.num_layers)
    for name, role in roles.items():
        if role in widest and name in gguf_file.tensors:
            widest[role] = max(widest[role], block_shape(gguf_file.tensors[name].ggml_type)[0])
    embd_name = next(s.name for s in family.global_tensors if s.role == "token_embd")
    plans = plan_shards(config, world_size, gguf_file.tensors[embd_name].shape[0],
                        widest["attn_output"], widest["ffn_down"])
    return config, family, plans


def load_rank_model(gguf_file: Any, ops: Any, rank: int, world_size: int,
                    communicator: Communicator, on_progress: ProgressCallback | None = None) -> Any:
    """Rank `rank`'s model: only its slices of the file are read and loaded."""
    config, family, plans = plan_for_file(gguf_file, world_size)
    vocab_sizes = [end - begin for begin, end in (p.vocab for p in plans)]
    view = ShardedGGUFFile(gguf_file, family, config, RankShard(plans[rank], communicator, vocab_sizes))
    module = importlib.import_module(f"{models.__name__}.{family.module}")
    return module.MODEL_CLASS(config, family, view, ops, on_progress)
