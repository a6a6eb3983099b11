"""qwen2 family (Qwen2, Qwen2.5): everything it needs is said by configs/families/qwen2.yaml
(the generic decoder adds the Q/K/V biases, rotates NEOX-style and ties the output)."""
from __future__ import annotations

from .decoder import DecoderModel


class Qwen2Model(DecoderModel):
    pass


MODEL_CLASS = Qwen2Model
