"""gemma3 family data and rules that need no model file: the layer pattern, the attention scale,
the YAML, and the Gemma chat template used when a GGUF carries none."""
from __future__ import annotations

import pytest

from cupyserve.runtime.chat_template import render_chat
from cupyserve.runtime.models.config import ModelConfig
from cupyserve.runtime.models.family import default_chat_template, family_for_architecture
from cupyserve.runtime.models.gemma3 import attention_scale, sliding_layers


def test_five_of_every_six_layers_slide():
    pattern = sliding_layers(18, 6, window=512)
    assert [i for i, slides in enumerate(pattern) if not slides] == [5, 11, 17]


def test_per_layer_pattern_and_no_window():
    assert sliding_layers(3, [True, False, True], window=512) == [True, False, True]
    assert sliding_layers(4, 6, window=0) == [False] * 4
    with pytest.raises(ValueError):
        sliding_layers(4, [True, False], window=512)


def _config(num_layers: int, hidden: int, heads: int, head_dim: int) -> ModelConfig:
    return ModelConfig(family="gemma3", architecture="gemma3", num_layers=num_layers,
                       hidden_size=hidden, ffn_size=4 * hidden, num_heads=heads, num_kv_heads=1,
                       head_dim=head_dim, norm_eps=1e-6, rope_theta=1e6, rope_dim=head_dim,
                       context_length=32768, vocab_size=262144)


def test_attention_scale_is_head_dim_except_27b():
    assert attention_scale(_config(18, 640, 4, 256)) == 1 / 16
    assert attention_scale(_config(62, 5376, 32, 128)) == pytest.approx(168**-0.5)


def test_yaml_switches():
    family = family_for_architecture("gemma3")
    assert family.switches["activation"] == "geglu"
    assert family.switches["rope_style"] == "neox"
    roles = {spec.role for spec in family.layer_tensors}
    assert {"attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"} <= roles


def test_gemma_chat_template_renders_two_turns_exactly():
    template = default_chat_template("gemma3")
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Write a haiku."},
    ]
    expected = ("<bos><start_of_turn>user\nHi there<end_of_turn>\n"
                "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
                "<start_of_turn>user\nWrite a haiku.<end_of_turn>\n")
    assert render_chat(template, messages, add_generation_prompt=False, bos_token="<bos>") == expected
    assert render_chat(template, messages, bos_token="<bos>") == expected + "<start_of_turn>model\n"


def test_gemma_chat_template_folds_system_into_first_user_turn():
    template = default_chat_template("gemma3")
    messages = [{"role": "system", "content": " Be brief. "},
                {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}]
    assert render_chat(template, messages, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nBe brief.\n\n2+2?<end_of_turn>\n<start_of_turn>model\n")


def test_families_without_a_template_get_none():
    assert default_chat_template("llama") is None
    assert default_chat_template("no-such-arch") is None
