"""configs/chat_templates/harmony.jinja renders the harmony format: system message with the
effort, request system/developer text as developer instructions, earlier assistant turns on the
final channel, tool results as commentary, `<|start|>assistant` as the generation prompt."""
from __future__ import annotations

import datetime

import pytest

from cupyserve.runtime.chat_template import ChatTemplateError, render_chat
from cupyserve.runtime.paths import configs_dir

TEMPLATE = (configs_dir() / "chat_templates" / "harmony.jinja").read_text(encoding="utf-8")


def system_message(effort: str) -> str:
    today = datetime.datetime.now().strftime("%Y-%m-%d")
    return ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
            f"Knowledge cutoff: 2024-06\nCurrent date: {today}\n\nReasoning: {effort}\n\n"
            "# Valid channels: analysis, commentary, final. Channel must be included for every "
            "message.<|end|>")


def test_full_conversation():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Je regarde."},
        {"role": "tool", "name": "get_weather", "content": "{\"sunny\": true}"},
        {"role": "user", "content": "Alors?"},
    ]
    assert render_chat(TEMPLATE, messages, reasoning_effort="low") == (
        system_message("low")
        + "<|start|>developer<|message|># Instructions\n\nBe brief.\n\nAnswer in French.<|end|>"
        + "<|start|>user<|message|>Weather in Paris?<|end|>"
        + "<|start|>assistant<|channel|>final<|message|>Je regarde.<|end|>"
        + "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"sunny\": true}<|end|>"
        + "<|start|>user<|message|>Alors?<|end|>"
        + "<|start|>assistant")


def test_defaults_medium_and_no_developer_message_without_instructions():
    rendered = render_chat(TEMPLATE, [{"role": "user", "content": "Hi"}])
    assert rendered == system_message("medium") + "<|start|>user<|message|>Hi<|end|><|start|>assistant"
    no_prompt = render_chat(TEMPLATE, [{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert no_prompt.endswith("<|start|>user<|message|>Hi<|end|>")


def test_unknown_effort_is_refused_by_the_template():
    with pytest.raises(ChatTemplateError, match="reasoning_effort"):
        render_chat(TEMPLATE, [{"role": "user", "content": "Hi"}], reasoning_effort="max")
