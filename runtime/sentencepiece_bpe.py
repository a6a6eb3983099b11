"""SentencePiece BPE (GGUF `tokenizer.ggml.model == "llama"`: llama/mistral SPM, phi-3, gemma).

The vocabulary spells a space as U+2581 ("▁") and gives every token a score. llama.cpp encodes a
text fragment (special tokens are cut out before, by the caller) like this:
- prepend one space when `add_space_prefix` (llama.cpp's default for this model kind is true;
  gemma's files turn it off), then replace every " " with "▁";
- start from one symbol per character and repeatedly merge the adjacent pair whose concatenation
  is a token with the highest score (ties: the leftmost pair), until no adjacent pair forms a token;
- each final symbol is its token, or, if it is not one (a character outside the vocabulary), the
  byte tokens `<0xNN>` of its UTF-8 bytes.
This is not rank-based BPE: the merge order comes from the scores of the *resulting* tokens, and
any token text counts (even a control token's). It is implemented here rather than on the
`tokenizers` BPE model because rank order cannot express equal scores in general (the
whitespace-run tokens all score -1e9 and must merge leftmost-first), and because deriving ranked
merges from a 262k-token vocabulary takes seconds (runtime.tokenizer_json does it for export).

Speed: a merge can never join two symbols whose adjacent characters `ab` appear together in no
token, so the text is cut before each "▁" that no token can join to its left neighbour; the
pieces (mostly words) are merged independently and memoised.
"""
from __future__ import annotations

import heapq
import re
from typing import Sequence

from .gguf_vocab import GGUFVocab, TokenType, VocabError

SPACE_MARK = "\u2581"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Pieces memoised per encoder; a bound keeps memory flat on adversarial input.
_PIECE_CACHE_LIMIT = 100_000
# Only word-sized pieces are memoised; a long run without spaces rarely repeats.
_CACHEABLE_PIECE_CHARS = 64


def byte_token_value(text: str) -> int | None:
    """The byte a `<0xNN>` token stands for, or None if `text` is not of that form."""
    match = _BYTE_TOKEN.fullmatch(text)
    return int(match.group(1), 16) if match else None


def spm_token_bytes_table(vocab: GGUFVocab) -> tuple[bytes, ...]:
    """Raw bytes of every token, as llama.cpp's `token_to_piece` renders them: NORMAL tokens with
    "▁" turned back into spaces, BYTE tokens as their one byte, control / user-defined / unknown
    tokens as their text, and unused or undefined tokens as nothing."""
    table = []
    for text, kind in zip(vocab.tokens, vocab.token_types):
        if kind == TokenType.NORMAL:
            table.append(text.replace(SPACE_MARK, " ").encode("utf-8", errors="surrogateescape"))
        elif kind == TokenType.BYTE:
            value = byte_token_value(text)
            table.append(bytes([value]) if value is not None else text.encode("utf-8", errors="surrogateescape"))
        elif kind in (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN):
            table.append(text.encode("utf-8", errors="surrogateescape"))
        else:
            table.append(b"")
    return tuple(table)


class SentencePieceBPEEncoder:
    """Encodes text without special tokens into ids, exactly as llama.cpp's SPM tokenizer.

    Thread-safe: the only mutable state is the piece memo, a dict whose single-key updates are
    atomic; two threads computing the same piece store the same value.
    """

    def __init__(self, vocab: GGUFVocab, add_space_prefix: bool) -> None:
        if len(vocab.scores) != vocab.num_tokens:
            raise VocabError("SentencePiece vocabulary has no tokenizer.ggml.scores for every token")
        self.add_space_prefix = add_space_prefix
        self._ids = {text: i for i, text in enumerate(vocab.tokens)}
        self._scores = vocab.scores
        self._byte_ids = tuple(self._byte_token_id(vocab, b) for b in range(256))
        self._piece_re = _piece_boundary_regex(vocab.tokens)
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_vocab(cls, vocab: GGUFVocab) -> "SentencePieceBPEEncoder":
        """`add_space_prefix` from `tokenizer.ggml.add_space_prefix`, llama.cpp's default true."""
        prefix = vocab.add_space_prefix if vocab.add_space_prefix is not None else True
        return cls(vocab, prefix)

    def _byte_token_id(self, vocab: GGUFVocab, byte: int) -> int | None:
        # llama.cpp's byte_to_token: "<0xNN>" (upper-case hex), else the byte itself as a token.
        found = self._ids.get(f"<0x{byte:02X}>")
        if found is None and byte < 0x80:
            found = self._ids.get(chr(byte))
        return found if found is not None else vocab.unk_id

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text fragment, each with its own space prefix (every fragment follows the
        start of the text or a special token, which is when llama.cpp adds one)."""
        return [self.encode_text(t) for t in texts]

    def encode_text(self, text: str) -> list[int]:
        if self.add_space_prefix:
            text = " " + text
        text = text.replace(" ", SPACE_MARK)
        ids: list[int] = []
        cache = self._cache
        for piece in self._piece_re.split(text):
            if not piece:
                continue
            found = cache.get(piece)
            if found is None:
                found = tuple(self._merge(piece))
                if len(piece) <= _CACHEABLE_PIECE_CHARS:
                    if len(cache) >= _PIECE_CACHE_LIMIT:
                        cache.clear()
                    cache[piece] = found
            ids.extend(found)
        return ids

    def _merge(self, text: str) -> list[int]:
        """llama.cpp's `llm_tokenizer_spm_session::tokenize` on one piece (already escaped)."""
        n = len(text)
        ids, scores = self._ids, self._scores
        if n == 1:
            return self._symbol_ids(text)
        # Symbol i covers text[start[i]:end[i]]; merged-away symbols have start == end.
        start = list(range(n))
        end = list(range(1, n + 1))
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        # Heap entries (-score, left, right, size): best score first, then the leftmost pair.
        heap = []
        for i in range(n - 1):
            token_id = ids.get(text[i : i + 2])
            if token_id is not None:
                heap.append((-scores[token_id], i, i + 1, 2))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            left_len = end[left] - start[left]
            right_len = end[right] - start[right]
            # Stale entry: one side was merged into something else since it was queued.
            if left_len == 0 or right_len == 0 or left_len + right_len != size:
                continue
            end[left] = end[right]
            start[right] = end[right]
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            before = prev[left]
            if before >= 0:
                token_id = ids.get(text[start[before] : end[left]])
                if token_id is not None:
                    push(heap, (-scores[token_id], before, left, end[left] - start[before]))
            if after >= 0:
                token_id = ids.get(text[start[left] : end[after]])
                if token_id is not None:
                    push(heap, (-scores[token_id], left, after, end[after] - start[left]))
        out: list[int] = []
        i = 0
        while i >= 0:
            out.extend(self._symbol_ids(text[start[i] : end[i]]))
            i = nxt[i]
        return out

    def _symbol_ids(self, symbol: str) -> list[int]:
        """A final symbol's token, or byte fallback for a character outside the vocabulary."""
        token_id = self._ids.get(symbol)
        if token_id is not None:
            return [token_id]
        out = []
        for byte in symbol.encode("utf-8", errors="surrogateescape"):
            byte_id = self._byte_ids[byte]
            if byte_id is None:
                raise VocabError(f"byte 0x{byte:02X} of {symbol!r} has no <0x{byte:02X}> token and there is no unknown token")
            out.append(byte_id)
        return out


def _piece_boundary_regex(tokens: Sequence[str]) -> re.Pattern[str]:
    """A regex whose split points are safe cuts: before a "▁" whose left neighbour is a character
    that no token ever joins to a following "▁" (never another "▁": runs of spaces merge)."""
    joined_left = {SPACE_MARK}
    for token in tokens:
        position = token.find(SPACE_MARK, 1)
        while position > 0:
            joined_left.add(token[position - 1])
            position = token.find(SPACE_MARK, position + 1)
    excluded = "".join(sorted(re.escape(c) for c in joined_left))
    return re.compile(f"(?<=[^{excluded}])(?={SPACE_MARK})")
