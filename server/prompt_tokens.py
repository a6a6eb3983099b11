"""Turning request prompts into token ids: completion prompts as sent, chat via the template."""
from __future__ import annotations

from typing import Any, Sequence

from .chat_request import ChatMessage
from .completion_request import PromptInput
from .errors import invalid_request


def completion_prompt_ids(tokenizer: Any, prompt: PromptInput, param: str = "prompt") -> tuple[int, ...]:
    """Text is encoded with the model's BOS (when it uses one) and with special tokens parsed,
    as llama.cpp and vLLM do; token ids are checked against the vocabulary."""
    if prompt.token_ids is not None:
        ids = prompt.token_ids
        bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise invalid_request(f"'{param}' holds token ids outside the vocabulary "
                                  f"(size {tokenizer.vocab_size}): {bad[:5]}", param=param)
    else:
        ids = tuple(tokenizer.encode(prompt.text, add_special_tokens=True, parse_special=True))
    if not ids:
        raise invalid_request(f"'{param}' must not be empty", param=param)
    return ids


def echo_text(tokenizer: Any, prompt: PromptInput, prompt_ids: Sequence[int]) -> str:
    """What `echo` prepends: the prompt as the client wrote it, or its ids decoded."""
    if prompt.text is not None:
        return prompt.text
    return tokenizer.decode(list(prompt_ids), skip_special_tokens=False)


def _bos_text(tokenizer: Any) -> str:
    text = getattr(tokenizer, "bos_token", None)
    if text is None and tokenizer.bos_id is not None:
        text = tokenizer.token_text(tokenizer.bos_id)
    return text or ""


def _eos_text(tokenizer: Any) -> str:
    text = getattr(tokenizer, "eos_token", None)
    if text is None:
        eos_id = getattr(tokenizer, "eos_id", None)
        if eos_id is None:
            eos_id = min(getattr(tokenizer, "eos_ids", ()) or (), default=None)
        text = tokenizer.token_text(eos_id) if eos_id is not None else ""
    return text or ""


def render_chat_messages(tokenizer: Any, messages: Sequence[ChatMessage],
                         reasoning_effort: str | None = None) -> str:
    """The prompt text for `messages` from the model's chat template (or the default one).
    `reasoning_effort` becomes the template variable of that name when given (harmony templates
    write it into the system message; others ignore it)."""
    # Imported here: the template engine (Jinja) is only needed once a chat request arrives.
    from cupyserve.runtime.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplateError, render_chat

    try:
        return render_chat(tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE,
                           [m.as_template_input() for m in messages], add_generation_prompt=True,
                           bos_token=_bos_text(tokenizer), eos_token=_eos_text(tokenizer),
                           **({"reasoning_effort": reasoning_effort} if reasoning_effort else {}))
    except ChatTemplateError as exc:
        raise invalid_request(f"chat template error: {exc}", param="messages") from None


def chat_prompt_ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    """Encode a rendered chat prompt. Templates that want a BOS usually write it themselves, so
    the tokenizer adds one only when the model uses BOS and the text does not already start with
    it (never two BOS tokens)."""
    bos_text = _bos_text(tokenizer)
    add_bos = bool(tokenizer.add_bos) and not (bos_text and text.startswith(bos_text))
    ids = tuple(tokenizer.encode(text, add_special_tokens=add_bos, parse_special=True))
    if not ids:
        raise invalid_request("the rendered chat prompt is empty", param="messages")
    return ids
