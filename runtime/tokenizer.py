"""Text <-> token ids for a model, built from its GGUF metadata.

`Tokenizer.from_gguf_metadata(md)` reads the vocabulary (`runtime.gguf_vocab`), picks the encoder
for `tokenizer.ggml.model` from `ENCODER_BUILDERS` (byte-level BPE, SentencePiece BPE) and wraps it
with what every model kind shares, done the way llama.cpp does it so ids match it exactly:
- special tokens are cut out of the text first, longest token text first, each fragment then
  encoded on its own; with `parse_special=False` only USER_DEFINED tokens are cut out (control
  tokens are then ordinary text); a token with LSTRIP/RSTRIP also drops the whitespace before /
  after it;
- BOS/EOS are added only where the file (or llama.cpp's default for its vocab kind) says so;
- decoding concatenates each token's raw bytes, so streaming pieces add up to `decode(ids)`.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from .byte_level_bpe import ByteLevelBPEEncoder, token_bytes_table
from .gguf_vocab import SPECIAL_TYPES, STRIPPED_WHITESPACE, GGUFVocab, TokenType, VocabError
from .sentencepiece_bpe import SentencePieceBPEEncoder, spm_token_bytes_table
from .tokenizer_json import TokenizerJsonEncoder, load_tokenizer_json, save_tokenizer_json


class TextEncoder(Protocol):
    """What a model kind provides: ids for plain text (no special tokens, no BOS/EOS)."""

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]: ...


@dataclass(frozen=True)
class KindParts:
    """What a model-kind builder hands back: its encoder, every token's raw bytes, and
    llama.cpp's add_bos for this vocabulary when the file has no `add_bos_token` key."""

    encoder: TextEncoder
    token_bytes: tuple[bytes, ...]
    default_add_bos: bool


def _build_byte_level_bpe(vocab: GGUFVocab) -> KindParts:
    encoder = ByteLevelBPEEncoder.from_vocab(vocab)
    return KindParts(encoder, token_bytes_table(vocab), encoder.spec.default_add_bos)


def _build_sentencepiece_bpe(vocab: GGUFVocab) -> KindParts:
    # llama.cpp adds BOS for every SPM vocabulary whose file does not say otherwise.
    return KindParts(SentencePieceBPEEncoder.from_vocab(vocab), spm_token_bytes_table(vocab), True)


# `tokenizer.ggml.model` -> (our kind name, builder).
ENCODER_BUILDERS: dict[str, tuple[str, Callable[[GGUFVocab], KindParts]]] = {
    "gpt2": ("gguf-bpe", _build_byte_level_bpe),
    "llama": ("gguf-spm", _build_sentencepiece_bpe),
}

# Token types cut out of the text before encoding: with parse_special, and always.
_SPECIAL_WHEN_PARSING = SPECIAL_TYPES
_SPECIAL_ALWAYS = frozenset({int(TokenType.USER_DEFINED)})
# Types whose text `decode(..., skip_special_tokens=True)` drops.
_SKIPPABLE = frozenset({int(TokenType.CONTROL), int(TokenType.UNKNOWN)})


class TokenizerError(ValueError):
    """The model's tokenizer metadata cannot be used (unsupported kind or pre-tokenizer, broken)."""


class Tokenizer:
    """Immutable after construction and safe to share between threads."""

    def __init__(self, vocab: GGUFVocab, kind: str, encoder: TextEncoder,
                 token_bytes: tuple[bytes, ...], add_bos: bool, add_eos: bool) -> None:
        if len(token_bytes) != vocab.num_tokens:
            raise TokenizerError("token byte table does not cover the vocabulary")
        if add_bos and vocab.bos_id is None:
            raise TokenizerError("the model asks for BOS but names no tokenizer.ggml.bos_token_id")
        if add_eos and vocab.eos_id is None:
            raise TokenizerError("the model asks for EOS but names no tokenizer.ggml.eos_token_id")
        self.vocab = vocab
        self.kind = kind
        self.vocab_size = vocab.num_tokens
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.eot_id = vocab.eot_id
        self.eos_ids: frozenset[int] = vocab.eog_ids
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.chat_template = vocab.chat_template
        self.bos_token = vocab.tokens[vocab.bos_id] if vocab.bos_id is not None else None
        self.eos_token = vocab.tokens[vocab.eos_id] if vocab.eos_id is not None else None
        self._encoder = encoder
        self._token_bytes = token_bytes
        self._skippable_ids = frozenset(i for i, t in enumerate(vocab.token_types) if t in _SKIPPABLE)
        self._special_parsed = _longest_first(vocab, _SPECIAL_WHEN_PARSING)
        self._special_always = _longest_first(vocab, _SPECIAL_ALWAYS)
        self._lstrip_ids = vocab.lstrip_ids
        self._rstrip_ids = vocab.rstrip_ids

    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any]) -> "Tokenizer":
        """Build from `runtime.gguf_metadata.read_metadata(path)`. Raises TokenizerError naming
        what is unsupported (model kind, pre-tokenizer) or broken."""
        try:
            vocab = GGUFVocab.from_metadata(md)
        except VocabError as exc:
            raise TokenizerError(str(exc)) from None
        entry = ENCODER_BUILDERS.get(vocab.model)
        if entry is None:
            raise TokenizerError(
                f"unsupported tokenizer.ggml.model {vocab.model!r}; supported: {', '.join(sorted(ENCODER_BUILDERS))}"
            )
        kind, build = entry
        try:
            parts = build(vocab)
        except VocabError as exc:
            raise TokenizerError(str(exc)) from None
        add_bos = vocab.add_bos if vocab.add_bos is not None else parts.default_add_bos
        add_eos = vocab.add_eos if vocab.add_eos is not None else False
        return cls(vocab, kind, parts.encoder, parts.token_bytes, add_bos, add_eos)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, gguf_metadata: Mapping[str, Any] | None = None) -> "Tokenizer":
        """Build from a Hugging Face tokenizer.json (a file, or a folder holding one) and the
        tokenizer_config.json beside it; special ids, add_bos/add_eos and the chat template fall
        back to `gguf_metadata` where those files do not state them. Kind "tokenizer.json".
        Raises TokenizerError for an unsupported or inconsistent file."""
        try:
            parts = load_tokenizer_json(path, gguf_metadata)
        except (VocabError, KeyError, ValueError) as exc:
            raise TokenizerError(f"{path}: {exc}") from None
        return cls(parts.vocab, "tokenizer.json", parts.encoder, parts.token_bytes, parts.add_bos, parts.add_eos)

    def save_tokenizer_json(self, path: str | os.PathLike) -> Path:
        """Write this tokenizer as `path` (tokenizer.json) plus tokenizer_config.json beside it,
        so that `from_tokenizer_json(path)` encodes every text to the same ids. Returns `path`."""
        source = self._encoder.document if isinstance(self._encoder, TokenizerJsonEncoder) else None
        try:
            return save_tokenizer_json(path, self.vocab, self.add_bos, self.add_eos, source)
        except VocabError as exc:
            raise TokenizerError(str(exc)) from None

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True, parse_special: bool = True) -> list[int]:
        """Ids of `text`. `add_special_tokens` adds BOS/EOS where the model asks for them
        (`add_bos`, `add_eos`); `parse_special` makes special-token text (`<|im_start|>`) the
        special token, otherwise it is encoded as ordinary text (user-defined tokens are always
        recognised, as in llama.cpp and HF)."""
        specials = self._special_parsed if parse_special else self._special_always
        fragments = _split_on_specials(text, specials, self._lstrip_ids, self._rstrip_ids)
        texts = [f for f in fragments if isinstance(f, str)]
        encoded = iter(self._encoder.encode_texts(texts)) if texts else iter(())
        ids: list[int] = [self.bos_id] if add_special_tokens and self.add_bos else []  # type: ignore[list-item]
        for fragment in fragments:
            if isinstance(fragment, str):
                ids.extend(next(encoded))
            else:
                ids.append(fragment)
        if add_special_tokens and self.add_eos:
            ids.append(self.eos_id)  # type: ignore[arg-type]
        return ids

    # -- decoding -------------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (control tokens: their text)."""
        return self._token_bytes[self._checked(token_id)]

    def token_text(self, token_id: int) -> str:
        """Display text of one token (logprobs): its bytes as UTF-8, a partial character shown as
        U+FFFD. Use `token_bytes` where the exact bytes matter."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def is_special(self, token_id: int) -> bool:
        """True for control tokens (BOS, `<|im_end|>`, ...), the ones `skip_special_tokens` drops."""
        return self._checked(token_id) in self._skippable_ids

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        """Concatenated raw bytes of `ids` (control tokens dropped with skip_special_tokens)."""
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad!r} is outside the vocabulary of {self.vocab_size}")
        table = self._token_bytes
        if skip_special_tokens:
            skipped = self._skippable_ids
            return b"".join(table[i] for i in ids if i not in skipped)
        return b"".join(table[i] for i in ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`: the concatenated token bytes as UTF-8 (invalid sequences -> U+FFFD).
        No clean-up of spaces is applied, so the text is exactly what the tokens spell."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def _checked(self, token_id: int) -> int:
        if not (isinstance(token_id, int) and 0 <= token_id < self.vocab_size):
            raise ValueError(f"token id {token_id!r} is outside the vocabulary of {self.vocab_size}")
        return token_id

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, pre={self.vocab.pre!r})"


def _longest_first(vocab: GGUFVocab, types: frozenset[int]) -> tuple[tuple[str, int], ...]:
    """(text, id) of the tokens of `types`, longest text (in bytes) first, as llama.cpp orders them."""
    found = [(text, i) for i, (text, t) in enumerate(zip(vocab.tokens, vocab.token_types)) if t in types]
    found.sort(key=lambda pair: (-len(pair[0].encode("utf-8", errors="surrogateescape")), pair[1]))
    return tuple(found)


def _split_on_specials(text: str, specials: tuple[tuple[str, int], ...],
                       lstrip_ids: frozenset[int] = frozenset(),
                       rstrip_ids: frozenset[int] = frozenset()) -> list[str | int]:
    """`text` as a list of non-empty text fragments and special-token ids.

    llama.cpp's partition: for each special token, longest first, every remaining text fragment
    is cut at each non-overlapping occurrence (left to right). A longer token thus wins over a
    shorter one even when the shorter one starts earlier. A token in `lstrip_ids` / `rstrip_ids`
    also removes the ASCII whitespace directly before / after each occurrence.
    """
    if not text:
        return []
    fragments: list[str | int] = [text]
    for token_text, token_id in specials:
        if token_text not in text:  # cheap C-level test skips almost every token
            continue
        cut: list[str | int] = []
        for fragment in fragments:
            if isinstance(fragment, int) or token_text not in fragment:
                cut.append(fragment)
                continue
            pieces = fragment.split(token_text)
            last = len(pieces) - 1
            for n, piece in enumerate(pieces):
                if n:
                    cut.append(token_id)
                    if token_id in rstrip_ids:
                        piece = piece.lstrip(STRIPPED_WHITESPACE)
                if n < last and token_id in lstrip_ids:
                    piece = piece.rstrip(STRIPPED_WHITESPACE)
                if piece:
                    cut.append(piece)
        fragments = cut
    return fragments
