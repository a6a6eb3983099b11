"""The tokenizer a served model uses: its GGUF vocabulary, or a tokenizer.json given instead.

A tokenizer.json replaces the GGUF's vocabulary entirely (ids, merges, special tokens); what it
and the tokenizer_config.json beside it do not state (BOS/EOS ids, add_bos, the chat template)
falls back to the GGUF metadata. Its ids index the model's embedding rows, so a vocabulary with
more tokens than the model has rows can never work and is refused at startup.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .gguf_loader import GGUFFile
from .tokenizer import Tokenizer, TokenizerError

GGUF_SOURCE = "gguf"
EMBEDDING_TENSOR = "token_embd.weight"


@dataclass(frozen=True)
class ModelTokenizer:
    tokenizer: Tokenizer
    source: str  # "gguf", or the path of the tokenizer.json that was loaded


def load_model_tokenizer(gguf: GGUFFile, tokenizer_file: Path | None) -> ModelTokenizer:
    """The GGUF's tokenizer when `tokenizer_file` is None, else that file's. Raises
    TokenizerError naming the file (unreadable, unsupported, or more tokens than embedding rows)."""
    if tokenizer_file is None:
        return ModelTokenizer(Tokenizer.from_gguf_metadata(gguf.metadata), GGUF_SOURCE)
    try:
        tokenizer = Tokenizer.from_tokenizer_json(tokenizer_file, gguf.metadata)
    except TokenizerError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. valid JSON of the wrong shape: still one clear line
        raise TokenizerError(f"{tokenizer_file}: not a usable tokenizer.json "
                             f"({type(exc).__name__}: {exc})") from None
    num_rows = embedding_rows(gguf)
    if num_rows is not None and tokenizer.vocab_size > num_rows:
        raise TokenizerError(
            f"tokenizer {tokenizer_file} has {tokenizer.vocab_size} tokens but the model's embedding "
            f"({EMBEDDING_TENSOR}) has {num_rows} rows; the tokenizer does not belong to this model")
    return ModelTokenizer(tokenizer, str(tokenizer_file))


def embedding_rows(gguf: GGUFFile) -> int | None:
    """Rows of the token embedding (numpy order [vocab, hidden]), None when the file has none."""
    info = gguf.tensors.get(EMBEDDING_TENSOR)
    return int(info.shape[0]) if info is not None else None
