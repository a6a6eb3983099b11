"""Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) in and out.

Reading: the model part of the file (normalizer, pre-tokenizer, BPE vocabulary and merges) is run
by the `tokenizers` library itself, so a file means exactly what it means to HF. Its added tokens
are taken out of that engine and become the vocabulary's special tokens (`special: true` ->
CONTROL, else USER_DEFINED, their `lstrip`/`rstrip` kept), which `runtime.tokenizer.Tokenizer`
cuts out of the text the llama.cpp way, as for a GGUF vocabulary. BOS/EOS/unk/pad, add_bos/add_eos
and the chat template come from `tokenizer_config.json` beside the file when it has them, then
from the file's post-processor (a template starting with a special token means add_bos), then
from the GGUF metadata given.

Writing: a GGUF-built tokenizer becomes the usual HF form of its kind. Byte-level BPE: the
`tokenizer.ggml.pre` regexes as isolated Splits, a ByteLevel pre-tokenizer and decoder, the GGUF
merges. SentencePiece BPE: BPE with byte fallback, "▁" normalizers (Prepend when the space prefix
is on, Replace " "), and merges derived from the scores: every split of a token into two tokens,
ordered by the token's score (best first), then by id. Rank-ordered merges cannot express equal
scores, which SentencePiece breaks leftmost-first; on llama.cpp's fixtures and the gemma3 goldens
the two agree exactly, and tests/unit/test_tokenizer_json.py holds that line.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from .byte_level_bpe import split_merge, token_bytes_table
from .gguf_vocab import KEY_PREFIX, GGUFVocab, TokenType, VocabError
from .pretokenizer_regex import pre_tokenizer_spec
from .sentencepiece_bpe import SPACE_MARK, byte_token_value, spm_token_bytes_table

CONFIG_NAME = "tokenizer_config.json"
_SPECIAL_TOKEN_KEYS = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}


@dataclass(frozen=True)
class TokenizerJsonParts:
    """What `runtime.tokenizer.Tokenizer` needs from a tokenizer.json: the vocabulary (special
    ids, types, strip flags), the text encoder, every token's bytes and the BOS/EOS switches."""

    vocab: GGUFVocab
    encoder: "TokenizerJsonEncoder"
    token_bytes: tuple[bytes, ...]
    add_bos: bool
    add_eos: bool


class TokenizerJsonEncoder:
    """Encodes text without special tokens with the file's own model (its added tokens removed).
    Thread-safe (HF tokenizers are). `document` is the parsed file, kept for saving it again."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        engine_doc = dict(document, added_tokens=[], post_processor=None, truncation=None, padding=None)
        try:
            self._hf = HFTokenizer.from_str(json.dumps(engine_doc))
        except Exception as exc:  # the library raises a bare Exception for schema errors
            raise VocabError(f"tokenizer.json cannot be loaded by the tokenizers library: {exc}") from None

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self._hf.encode(texts[0], add_special_tokens=False).ids]
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]


# -- reading --------------------------------------------------------------------------------------

def load_tokenizer_json(path: str | os.PathLike, gguf_metadata: Mapping[str, Any] | None = None) -> TokenizerJsonParts:
    """Read `path` (a tokenizer.json, or a folder holding one) and the tokenizer_config.json
    beside it. Raises VocabError for a file that is not a BPE tokenizer.json or is inconsistent."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    config_path = path.with_name(CONFIG_NAME)
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    gguf = gguf_metadata or {}

    model = document.get("model") or {}
    if model.get("type") != "BPE":
        raise VocabError(f"tokenizer.json model {model.get('type')!r} is not supported (only BPE)")
    byte_level = _is_byte_level(document)
    added = sorted(document.get("added_tokens") or [], key=lambda t: t["id"])
    tokens, types = _tokens_and_types(model, added)

    md: dict[str, Any] = {
        KEY_PREFIX + "model": "gpt2" if byte_level else "llama",
        KEY_PREFIX + "tokens": tokens,
        KEY_PREFIX + "token_type": types,
        "general.name": gguf.get("general.name"),
    }
    ids = {text: i for i, text in enumerate(tokens)}
    for role, key in _SPECIAL_TOKEN_KEYS.items():
        token_id = _config_token_id(config, key, ids)
        if token_id is None and role == "unknown" and model.get("unk_token") in ids:
            token_id = ids[model["unk_token"]]
        if token_id is None:
            token_id = gguf.get(f"{KEY_PREFIX}{role}_token_id")
        md[f"{KEY_PREFIX}{role}_token_id"] = token_id
    for key in ("eot_token_id", "eom_token_id"):
        md[KEY_PREFIX + key] = gguf.get(KEY_PREFIX + key)
    if md[KEY_PREFIX + "unknown_token_id"] is not None:
        types[md[KEY_PREFIX + "unknown_token_id"]] = int(TokenType.UNKNOWN)
    template = _chat_template(config.get("chat_template"))
    md["tokenizer.chat_template"] = template if template is not None else gguf.get("tokenizer.chat_template")

    add_bos = _first_bool(config.get("add_bos_token"), _post_processor_adds_bos(document), _gguf_add_bos(gguf))
    add_eos = _first_bool(config.get("add_eos_token"), None, gguf.get(KEY_PREFIX + "add_eos_token"))
    md[KEY_PREFIX + "add_bos_token"] = add_bos
    md[KEY_PREFIX + "add_eos_token"] = add_eos
    md = {k: v for k, v in md.items() if v is not None}

    vocab = GGUFVocab.from_metadata(md)
    vocab = dataclasses.replace(
        vocab,
        lstrip_ids=frozenset(t["id"] for t in added if t.get("lstrip")),
        rstrip_ids=frozenset(t["id"] for t in added if t.get("rstrip")),
    )
    table = token_bytes_table(vocab) if byte_level else spm_token_bytes_table(vocab)
    return TokenizerJsonParts(vocab, TokenizerJsonEncoder(document), table, bool(add_bos), bool(add_eos))


def _is_byte_level(document: Mapping[str, Any]) -> bool:
    """True when the file spells bytes GPT-2's way (a ByteLevel pre-tokenizer or decoder)."""
    text = json.dumps([document.get("pre_tokenizer"), document.get("decoder")])
    return '"ByteLevel"' in text


def _tokens_and_types(model: Mapping[str, Any], added: list[Mapping[str, Any]]) -> tuple[list[str], list[int]]:
    by_id: dict[int, str] = {int(i): text for text, i in model.get("vocab", {}).items()}
    for token in added:
        by_id[int(token["id"])] = token["content"]
    if not by_id:
        raise VocabError("tokenizer.json has an empty vocabulary")
    size = max(by_id) + 1
    # Holes (ids no entry names) are kept as unused placeholders so ids stay where they are.
    tokens = [by_id.get(i, f"[EMPTY_{i}]") for i in range(size)]
    types = [int(TokenType.NORMAL) if i in by_id else int(TokenType.UNUSED) for i in range(size)]
    if model.get("byte_fallback"):
        for i, text in enumerate(tokens):
            if byte_token_value(text) is not None:
                types[i] = int(TokenType.BYTE)
    for token in added:
        types[int(token["id"])] = int(TokenType.CONTROL if token.get("special") else TokenType.USER_DEFINED)
    return tokens, types


def _config_token_id(config: Mapping[str, Any], key: str, ids: Mapping[str, int]) -> int | None:
    value = config.get(key)
    if isinstance(value, Mapping):  # {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    if value is None:
        return None
    if value not in ids:
        raise VocabError(f"{CONFIG_NAME} names {key} {value!r}, which is not in the vocabulary")
    return ids[value]


def _chat_template(value: Any) -> str | None:
    """A template string, or from HF's list form [{"name", "template"}] the one named default."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        return named.get("default") or next(iter(named.values()), None)
    return None


def _post_processor_adds_bos(document: Mapping[str, Any]) -> bool | None:
    processor = document.get("post_processor")
    if not isinstance(processor, Mapping):
        return None
    candidates = [processor] + list(processor.get("processors") or [])
    for candidate in candidates:
        if candidate.get("type") == "TemplateProcessing":
            single = candidate.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return None


def _gguf_add_bos(gguf: Mapping[str, Any]) -> bool | None:
    """The GGUF file's add_bos_token, else llama.cpp's default for its vocabulary kind."""
    if gguf.get(KEY_PREFIX + "add_bos_token") is not None:
        return bool(gguf[KEY_PREFIX + "add_bos_token"])
    model = gguf.get(KEY_PREFIX + "model")
    if model == "llama":
        return True
    if model == "gpt2":
        try:
            return pre_tokenizer_spec(gguf.get(KEY_PREFIX + "pre")).default_add_bos
        except ValueError:
            return None
    return None


def _first_bool(*values: Any) -> bool | None:
    return next((bool(v) for v in values if v is not None), None)


# -- writing --------------------------------------------------------------------------------------

def save_tokenizer_json(path: str | os.PathLike, vocab: GGUFVocab, add_bos: bool, add_eos: bool,
                        source_document: Mapping[str, Any] | None = None) -> Path:
    """Write `path` (tokenizer.json) and tokenizer_config.json beside it; returns `path`.
    `source_document`: the parsed file a tokenizer was read from, written back as it was."""
    path = Path(path)
    if source_document is not None:
        text = json.dumps(source_document, ensure_ascii=False)
    elif vocab.model == "gpt2":
        text = _byte_level_engine(vocab).to_str()
    elif vocab.model == "llama":
        text = _sentencepiece_engine(vocab).to_str()
    else:
        raise VocabError(f"cannot write a tokenizer.json for tokenizer.ggml.model {vocab.model!r}")
    path.write_text(text, encoding="utf-8")
    config = _config_document(vocab, add_bos, add_eos)
    path.with_name(CONFIG_NAME).write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def _byte_level_engine(vocab: GGUFVocab) -> HFTokenizer:
    spec = pre_tokenizer_spec(vocab.pre)
    model = BPE(
        vocab={text: i for i, text in enumerate(vocab.tokens)},
        merges=[split_merge(m) for m in vocab.merges],
        ignore_merges=spec.ignore_merges,
    )
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in spec.patterns]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    hf.decoder = decoders.ByteLevel()
    _add_special_tokens(hf, vocab)
    return hf


def _sentencepiece_engine(vocab: GGUFVocab) -> HFTokenizer:
    ids = {text: i for i, text in enumerate(vocab.tokens)}
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    model = BPE(vocab=ids, merges=sentencepiece_merges(vocab), byte_fallback=True, fuse_unk=True, unk_token=unk)
    hf = HFTokenizer(model)
    add_space_prefix = vocab.add_space_prefix if vocab.add_space_prefix is not None else True
    steps = [normalizers.Replace(" ", SPACE_MARK)]
    hf.normalizer = normalizers.Sequence(([normalizers.Prepend(SPACE_MARK)] if add_space_prefix else []) + steps)
    steps = [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
    hf.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    _add_special_tokens(hf, vocab)
    return hf


def sentencepiece_merges(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """Rank-ordered merges equivalent to score-ordered SentencePiece merging: each split of a
    (non-byte) token into two tokens, best score first, then by token id and split ids."""
    ids = {text: i for i, text in enumerate(vocab.tokens)}
    ranked = []
    byte_type = int(TokenType.BYTE)
    for token_id, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types)):
        if kind == byte_type or len(text) < 2:
            continue
        score = vocab.scores[token_id] if vocab.scores else 0.0
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            left_id, right_id = ids.get(left), ids.get(right)
            if left_id is not None and right_id is not None:
                ranked.append((-score, token_id, left_id, right_id, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(hf: HFTokenizer, vocab: GGUFVocab) -> None:
    """Every control / user-defined / unknown token as an added token (ids unchanged: all are in
    the model vocabulary already), with the strip flags llama.cpp gives it."""
    added = []
    for token_id, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types)):
        if kind in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED):
            added.append(AddedToken(
                text, single_word=False, normalized=False, special=kind != TokenType.USER_DEFINED,
                lstrip=token_id in vocab.lstrip_ids, rstrip=token_id in vocab.rstrip_ids,
            ))
    hf.add_tokens(added)


def _config_document(vocab: GGUFVocab, add_bos: bool, add_eos: bool) -> dict[str, Any]:
    def text(token_id: int | None) -> str | None:
        return vocab.tokens[token_id] if token_id is not None else None

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(vocab.bos_id),
        "eos_token": text(vocab.eos_id),
        "unk_token": text(vocab.unk_id),
        "pad_token": text(vocab.pad_id),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "chat_template": vocab.chat_template,
    }
