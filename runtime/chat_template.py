"""Chat messages -> prompt text through the model's Jinja chat template, rendered as HF
transformers' `apply_chat_template` does, inside Jinja's immutable sandbox.

Templates come from model files (`tokenizer.chat_template`), i.e. from whoever published the
model, so they run sandboxed: no attribute starting with "_", no mutation of lists or dicts.
Any failure (syntax, `raise_exception(...)` in the template, a message the template cannot
handle) surfaces as `ChatTemplateError`, a ValueError the server turns into HTTP 400.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# ChatML, for models whose file carries no template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The chat template could not be compiled or rendered for these messages."""


class _RefusingUndefined(jinja2.Undefined):
    """Lenient like HF's default (a missing key renders as ""), except that an undefined standing
    for a refused unsafe attribute (`''.__class__`) raises when used instead of vanishing."""

    __slots__ = ()

    def _refuse_if_unsafe(self) -> None:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()

    def __str__(self) -> str:
        self._refuse_if_unsafe()
        return super().__str__()

    def __iter__(self):  # type: ignore[override]
        self._refuse_if_unsafe()
        return super().__iter__()

    def __bool__(self) -> bool:
        self._refuse_if_unsafe()
        return super().__bool__()

    def __len__(self) -> int:
        self._refuse_if_unsafe()
        return super().__len__()


def _raise_exception(message: str) -> NoReturn:
    """Templates call this to reject a conversation (e.g. roles out of order)."""
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # HF replaces Jinja's HTML-escaping tojson with plain json.dumps; templates rely on that.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(date_format: str) -> str:
    return datetime.now().strftime(date_format)


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
        undefined=_RefusingUndefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    # Models keep one template for their lifetime; compiling is the expensive part.
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template has a syntax error at line {exc.lineno}: {exc.message}") from None


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = "",
    eos_token: str | None = "",
    **extra: Any,
) -> str:
    """Prompt text for `messages` (dicts with at least `role` and `content`).

    `template` None or "" uses DEFAULT_CHAT_TEMPLATE. `extra` variables (tools, documents,
    date strings, ...) are passed to the template as they are. Raises ChatTemplateError.
    """
    compiled = _compile(template or DEFAULT_CHAT_TEMPLATE)
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            **extra,
        )
    except SecurityError as exc:
        raise ChatTemplateError(f"chat template refused: {exc}") from None
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template error: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # A message shape the template does not expect (e.g. content as a list of parts).
        raise ChatTemplateError(f"chat template cannot render these messages: {type(exc).__name__}: {exc}") from None
