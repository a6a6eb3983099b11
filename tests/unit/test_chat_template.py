"""Chat templates: SmolLM2's real template from its GGUF, the ChatML default, the sandbox."""
from __future__ import annotations

import pytest

from cupyserve.runtime.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplateError, render_chat
from cupyserve.runtime.gguf_metadata import read_metadata

SMOLLM_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def smollm2_template(smollm2_gguf) -> str:
    return read_metadata(str(smollm2_gguf))["tokenizer.chat_template"]


def test_smollm2_template_adds_its_default_system_prompt(smollm2_template):
    text = render_chat(smollm2_template, [{"role": "user", "content": "Hi there"}], bos_token="<|im_start|>",
                       eos_token="<|im_end|>")
    assert text == SMOLLM_SYSTEM + "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_template_keeps_a_given_system_prompt(smollm2_template):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Und 3+3? 🤔"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nUnd 3+3? 🤔<|im_end|>\n"
    )
    assert render_chat(smollm2_template, messages, add_generation_prompt=False) == expected
    assert render_chat(smollm2_template, messages) == expected + "<|im_start|>assistant\n"


def test_default_template_is_chatml():
    messages = [{"role": "user", "content": "Hello"}]
    expected = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(None, messages) == expected == render_chat(DEFAULT_CHAT_TEMPLATE, messages)


def test_hf_helpers_and_whitespace_control():
    template = (
        "{% for m in messages %}\n"
        "  {{ m | tojson }}\n"
        "{% endfor %}"
        "{{ bos_token }}{{ strftime_now('%Y') | length }}"
    )
    text = render_chat(template, [{"role": "user", "content": "é<b>"}], bos_token="<s>")
    # trim_blocks/lstrip_blocks remove the block lines; tojson keeps non-ASCII and "<" as they are.
    assert text == '  {"role": "user", "content": "é<b>"}\n<s>4'


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ messages.append({'role': 'x'}) }}",
])
def test_sandbox_refuses_python_internals(template):
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_template_errors_are_value_errors_with_a_message():
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        render_chat("{{ raise_exception('Conversation roles must alternate') }}", [])
    with pytest.raises(ChatTemplateError, match="syntax error at line 2"):
        render_chat("ok\n{% if %}", [])
    with pytest.raises(ChatTemplateError, match="cannot render"):
        render_chat(DEFAULT_CHAT_TEMPLATE, [{"role": "user", "content": ["a", "list"]}])
    assert issubclass(ChatTemplateError, ValueError)
