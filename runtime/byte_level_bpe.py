"""Byte-level BPE (GGUF `tokenizer.ggml.model == "gpt2"`) on the HF `tokenizers` library.

Byte-level vocabularies spell every byte as one printable character (GPT-2's byte<->unicode
map), so tokens are strings like "Ġhello" for b" hello". Text is split by the pre-tokenizer
patterns of `tokenizer.ggml.pre`, each piece is turned into those characters and merged by rank.
Special tokens are not handled here: the caller cuts them out of the text first, as llama.cpp does.
"""
from __future__ import annotations

from typing import Sequence

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import ByteLevel, Sequence as PreTokenizerSequence, Split

from .gguf_vocab import GGUFVocab, TokenType, VocabError
from .pretokenizer_regex import PreTokenizerSpec, pre_tokenizer_spec


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte value to the character that spells it in the vocabulary:
    printable Latin-1 bytes stand for themselves, the other 68 take code points 256, 257, ...
    in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    next_code_point = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code_point)
            next_code_point += 1
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
# str.translate table turning each byte-level character into the Latin-1 character of its byte,
# so that `.encode("latin-1")` yields the raw bytes in one C-speed pass.
_CHAR_TO_LATIN1 = {ord(c): chr(b) for b, c in BYTE_TO_CHAR.items()}


def byte_level_token_bytes(text: str) -> bytes:
    """The bytes a byte-level token string stands for. A character outside the map (a broken
    vocabulary) stands for its own UTF-8 bytes rather than failing."""
    latin1 = text.translate(_CHAR_TO_LATIN1)
    try:
        return latin1.encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(c.encode("latin-1") if ord(c) < 256 else c.encode("utf-8") for c in latin1)


def token_bytes_table(vocab: GGUFVocab) -> tuple[bytes, ...]:
    """Raw bytes of every token: NORMAL tokens through the byte map, all other types (control,
    user-defined, ...) as the UTF-8 of their text, which is how the converter stored them."""
    normal = int(TokenType.NORMAL)
    return tuple(
        byte_level_token_bytes(text) if kind == normal else text.encode("utf-8", errors="surrogateescape")
        for text, kind in zip(vocab.tokens, vocab.token_types)
    )


def split_merge(merge: str) -> tuple[str, str]:
    """"a b" -> ("a", "b"). The separator is the first space after position 0, as in llama.cpp;
    byte-level tokens never contain a literal space (it is spelled "Ġ")."""
    position = merge.find(" ", 1)
    if position < 0:
        raise VocabError(f"malformed BPE merge {merge!r}: expected two tokens separated by a space")
    return merge[:position], merge[position + 1 :]


class ByteLevelBPEEncoder:
    """Encodes text without special tokens into ids. Thread-safe (HF tokenizers are)."""

    def __init__(self, vocab: GGUFVocab, spec: PreTokenizerSpec) -> None:
        if not vocab.merges:
            raise VocabError("byte-level BPE vocabulary has no tokenizer.ggml.merges")
        self.spec = spec
        model = BPE(
            vocab={text: i for i, text in enumerate(vocab.tokens)},
            merges=[split_merge(m) for m in vocab.merges],
            ignore_merges=spec.ignore_merges,
        )
        hf = HFTokenizer(model)
        hf.pre_tokenizer = PreTokenizerSequence(
            [Split(Regex(p), behavior="isolated") for p in spec.patterns]
            + [ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        self._hf = hf

    @classmethod
    def from_vocab(cls, vocab: GGUFVocab) -> "ByteLevelBPEEncoder":
        try:
            spec = pre_tokenizer_spec(vocab.pre)
        except ValueError as exc:
            raise VocabError(str(exc)) from None
        return cls(vocab, spec)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text, pre-tokenized and merged independently (no BOS/EOS, no specials)."""
        if len(texts) == 1:
            return [self._hf.encode(texts[0], add_special_tokens=False).ids]
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
