"""The vocabulary a GGUF file states in its `tokenizer.*` metadata, validated and completed the way
llama.cpp reads it (`llama_vocab::impl::load`), independent of how text is then split into ids.

What llama.cpp adds beyond the raw keys, mirrored here because the reference ids depend on it:
- empty token strings are renamed `[EMPTY_<id>]` (they could never be matched otherwise);
- tokens whose text marks an end of generation (`<|im_end|>`, `<|eot_id|>`, ...) are treated as
  CONTROL even when the file says otherwise, and join the set of ids that stop generation;
- `eot` is found by text when the file has no `tokenizer.ggml.eot_token_id`;
- `<|return|>` + `<|call|>` (gpt-oss's harmony format) make `<|end|>` an ordinary user-defined
  token, and the harmony framing tokens are always rendered;
- some special tokens swallow the whitespace next to them (LSTRIP/RSTRIP). The file does not say
  which: llama.cpp decides by `general.name` (every special token of a phi-3 model strips the
  whitespace after it) or by pre-tokenizer / architecture (a jina / nomic-bert `<mask>`, a
  modern-bert `[MASK]` strips the whitespace before it), and so does `strip_attributes` here.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Mapping

from .models.family import default_chat_template


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Texts llama.cpp treats as "end of generation" whatever the file's token types say.
END_OF_GENERATION_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
})
# Searched (in this order) for the eot id when the file does not name one.
END_OF_TURN_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)
END_OF_MESSAGE_TEXT = "<|eom_id|>"
HARMONY_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")
# Types llama.cpp keeps in its special-token cache (cut out of text before encoding).
SPECIAL_TYPES = frozenset({int(TokenType.CONTROL), int(TokenType.USER_DEFINED), int(TokenType.UNKNOWN)})
# Whitespace llama.cpp's LSTRIP/RSTRIP removes: C isspace() on single bytes.
STRIPPED_WHITESPACE = " \t\n\v\f\r"

KEY_PREFIX = "tokenizer.ggml."


class VocabError(ValueError):
    """The GGUF tokenizer metadata is missing, inconsistent or of an unsupported kind."""


@dataclass(frozen=True)
class GGUFVocab:
    """Tokens, their (effective) types and the special ids of one GGUF vocabulary.

    `token_types[i]` is already corrected as described in the module docstring; `eog_ids` holds
    every id that ends generation (eos, eot, eom and the end-of-generation texts).
    `add_bos`/`add_eos`/`add_space_prefix` are None where the file has no such key (the model
    kind decides then). `scores` is empty where the file has none (byte-level BPE files often
    omit them). `lstrip_ids`/`rstrip_ids`: special tokens that remove the whitespace before /
    after them when cut out of a text.
    """

    model: str
    pre: str | None
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    eog_ids: frozenset[int]
    add_bos: bool | None
    add_eos: bool | None
    chat_template: str | None
    scores: tuple[float, ...] = ()
    add_space_prefix: bool | None = None
    lstrip_ids: frozenset[int] = frozenset()
    rstrip_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        num_tokens = len(self.tokens)
        if num_tokens == 0:
            raise VocabError("tokenizer.ggml.tokens is empty")
        if len(self.token_types) != num_tokens:
            raise VocabError(
                f"tokenizer.ggml.token_type has {len(self.token_types)} entries for {num_tokens} tokens"
            )
        for name in ("bos_id", "eos_id", "eot_id", "eom_id", "unk_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < num_tokens:
                raise VocabError(f"{name} {value} is outside the vocabulary of {num_tokens} tokens")
        if any(not 0 <= i < num_tokens for i in self.eog_ids):
            raise VocabError("an end-of-generation id is outside the vocabulary")
        if self.scores and len(self.scores) != num_tokens:
            raise VocabError(f"tokenizer.ggml.scores has {len(self.scores)} entries for {num_tokens} tokens")

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> "GGUFVocab":
        """Read `tokenizer.*` keys of `read_metadata(path)`'s dict. Raises VocabError."""
        model = md.get(KEY_PREFIX + "model")
        if not isinstance(model, str) or not model:
            raise VocabError("GGUF metadata has no tokenizer.ggml.model: the file carries no tokenizer")
        raw_tokens = md.get(KEY_PREFIX + "tokens")
        if not isinstance(raw_tokens, (list, tuple)):
            raise VocabError("GGUF metadata has no tokenizer.ggml.tokens list")
        tokens = tuple(t if t else f"[EMPTY_{i}]" for i, t in enumerate(raw_tokens))
        if len(set(tokens)) != len(tokens):
            raise VocabError("tokenizer.ggml.tokens holds the same token text twice")

        raw_types = md.get(KEY_PREFIX + "token_type")
        types = list(raw_types) if raw_types is not None else [int(TokenType.NORMAL)] * len(tokens)
        eot_id = _optional_id(md, "eot_token_id")
        eom_id = _optional_id(md, "eom_token_id")
        ids_by_text = _ids_of_texts(tokens, END_OF_GENERATION_TEXTS | set(END_OF_TURN_TEXTS))
        if eot_id is None:
            eot_id = next((ids_by_text[t] for t in END_OF_TURN_TEXTS if t in ids_by_text), None)
        if eom_id is None:
            eom_id = ids_by_text.get(END_OF_MESSAGE_TEXT)
        for text in (t for t in (*END_OF_TURN_TEXTS, END_OF_MESSAGE_TEXT) if t in ids_by_text):
            if ids_by_text[text] in (eot_id, eom_id):
                types[ids_by_text[text]] = int(TokenType.CONTROL)

        eos_id = _optional_id(md, "eos_token_id")
        eog = {ids_by_text[t] for t in END_OF_GENERATION_TEXTS if t in ids_by_text}
        for token_id in eog:
            types[token_id] = int(TokenType.CONTROL)
        eog.update(i for i in (eos_id, eot_id, eom_id) if i is not None)
        _apply_harmony_rules(tokens, types, eog)

        merges = md.get(KEY_PREFIX + "merges")
        template = md.get("tokenizer.chat_template") or default_chat_template(md.get("general.architecture"))
        raw_scores = md.get(KEY_PREFIX + "scores")
        lstrip_ids, rstrip_ids = strip_attributes(md, tokens, types)
        return cls(
            model=model,
            pre=md.get(KEY_PREFIX + "pre"),
            tokens=tokens,
            token_types=tuple(int(t) for t in types),
            merges=tuple(merges) if merges else (),
            bos_id=_optional_id(md, "bos_token_id"),
            eos_id=eos_id,
            eot_id=eot_id,
            eom_id=eom_id,
            unk_id=_optional_id(md, "unknown_token_id"),
            pad_id=_optional_id(md, "padding_token_id"),
            eog_ids=frozenset(eog),
            add_bos=_optional_bool(md, "add_bos_token"),
            add_eos=_optional_bool(md, "add_eos_token"),
            chat_template=template if isinstance(template, str) and template else None,
            scores=tuple(float(x) for x in raw_scores) if raw_scores is not None else (),
            add_space_prefix=_optional_bool(md, "add_space_prefix"),
            lstrip_ids=lstrip_ids,
            rstrip_ids=rstrip_ids,
        )


def _optional_id(md: Mapping[str, Any], key: str) -> int | None:
    value = md.get(KEY_PREFIX + key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise VocabError(f"{KEY_PREFIX}{key} should be an integer id, got {value!r}")
    return value


def _optional_bool(md: Mapping[str, Any], key: str) -> bool | None:
    value = md.get(KEY_PREFIX + key)
    return None if value is None else bool(value)


def _ids_of_texts(tokens: tuple[str, ...], texts: set[str] | frozenset[str]) -> dict[str, int]:
    # Special texts live near the ends of a vocabulary but not reliably; one pass over all tokens
    # with a set lookup is cheap (~10 ms for 150k tokens).
    return {t: i for i, t in enumerate(tokens) if t in texts}


def _apply_harmony_rules(tokens: tuple[str, ...], types: list[int], eog: set[int]) -> None:
    """gpt-oss: framing tokens are always rendered; `<|end|>` ends a message, not generation."""
    ids_by_text = _ids_of_texts(tokens, {*HARMONY_ALWAYS_RENDERED, "<|return|>", "<|call|>", "<|end|>"})
    for text in HARMONY_ALWAYS_RENDERED:
        if text in ids_by_text:
            types[ids_by_text[text]] = int(TokenType.USER_DEFINED)
    eog_texts = {tokens[i] for i in eog}
    if {"<|return|>", "<|call|>", "<|end|>"} <= eog_texts:
        end_id = ids_by_text["<|end|>"]
        eog.discard(end_id)
        types[end_id] = int(TokenType.USER_DEFINED)


def strip_attributes(md: Mapping[str, Any], tokens: tuple[str, ...], types: list[int]) -> tuple[frozenset[int], frozenset[int]]:
    """(lstrip ids, rstrip ids) as llama.cpp sets them by name, after the type corrections above
    (`types` is final). Tokens a rule names but the vocabulary lacks are skipped."""
    name = str(md.get("general.name") or "").lower()
    pre = str(md.get(KEY_PREFIX + "pre") or "")
    arch = str(md.get("general.architecture") or "")
    ids_by_text = _ids_of_texts(tokens, {"<mask>", "[MASK]", "</s>", "<unk>", "<s>", "<|endoftext|>"})
    if any(p in pre for p in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
        a in arch for a in ("nomic-bert-moe", "jina-bert-v3")
    ):
        return frozenset(i for t, i in ids_by_text.items() if t == "<mask>"), frozenset()
    if "phi-3" in name or "phi3" in name:
        rstrip = {i for i, t in enumerate(types) if t in SPECIAL_TYPES}
        rstrip.update(i for t, i in ids_by_text.items() if t == "</s>")
        rstrip.difference_update(i for t, i in ids_by_text.items() if t in ("<unk>", "<s>", "<|endoftext|>"))
        return frozenset(), frozenset(rstrip)
    if "modern-bert" in name:
        return frozenset(i for t, i in ids_by_text.items() if t == "[MASK]"), frozenset()
    return frozenset(), frozenset()
