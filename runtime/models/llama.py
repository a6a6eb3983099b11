"""llama family (SmolLM2, Llama 2/3): everything it needs is said by configs/families/llama.yaml."""
from __future__ import annotations

from .decoder import DecoderModel


class LlamaModel(DecoderModel):
    pass


MODEL_CLASS = LlamaModel
