"""Pre-tokenizer regexes of byte-level BPE vocabularies, keyed by GGUF `tokenizer.ggml.pre`.

A GGUF file does not carry its pre-tokenizer; it names it, and every reader keeps a table. These
are the pattern lists llama.cpp applies for each name (`llm_tokenizer_bpe` in llama-vocab.cpp),
written in the Oniguruma syntax of the HF `tokenizers` library. Where llama.cpp rewrote a pattern
for its own regex engine (case-insensitive contractions, `\\p{Lu}` classes) we keep the original
HF form, which Oniguruma understands and which is what the reference ids were produced with.

Each pattern splits the pieces the previous one produced, keeping both the matches and the text
between them ("isolated"): that is llama.cpp's `unicode_regex_split` and HF's `Split` alike.
"""
from __future__ import annotations

from dataclasses import dataclass

# GPT-2's original pattern; llama.cpp omits its final `|\s+` alternative, which only ever matches
# text that would otherwise be left between matches (and so become a piece of its own anyway).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

GPT4O_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SEED_CODER_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}"
    r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Escapes where a literal would be a compatibility character that editors silently normalize.
DEEPSEEK_LLM_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚ"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec"
    "\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184"
    "Ⰰ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943"
)

CJK_RANGES = "一-龥ࠀ-一가-퟿"


@dataclass(frozen=True)
class PreTokenizerSpec:
    """How one `tokenizer.ggml.pre` family splits text before BPE, plus the two flags llama.cpp
    ties to the name: `ignore_merges` (a piece that is itself a token is not merged further) and
    `default_add_bos` (used when the file has no `tokenizer.ggml.add_bos_token`)."""

    name: str
    patterns: tuple[str, ...]
    ignore_merges: bool = False
    default_add_bos: bool = False

    def __post_init__(self) -> None:
        if not self.patterns or not all(isinstance(p, str) and p for p in self.patterns):
            raise ValueError(f"pre-tokenizer {self.name!r} needs at least one non-empty pattern")


def _spec(name: str, *patterns: str, ignore_merges: bool = False, default_add_bos: bool = False) -> PreTokenizerSpec:
    return PreTokenizerSpec(name, tuple(patterns), ignore_merges, default_add_bos)


_DEFAULT = _spec("default", r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")
_GPT2 = _spec("gpt-2", GPT2_PATTERN)
_LLAMA3 = _spec("llama-bpe", LLAMA3_PATTERN, ignore_merges=True, default_add_bos=True)
_DBRX = _spec("dbrx", LLAMA3_PATTERN)
_QWEN2 = _spec("qwen2", QWEN2_PATTERN)
_STARCODER = _spec("starcoder", r"\p{N}", GPT2_PATTERN)
_FALCON = _spec("falcon", r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, r"[0-9][0-9][0-9]")
_DEEPSEEK_LLM = _spec(
    "deepseek-llm",
    r"[\r\n]",
    r"\s?[" + DEEPSEEK_LLM_LETTERS + r"]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    "[" + CJK_RANGES + "]+",
    r"\p{N}+",
)
_DEEPSEEK_CODER = _spec(
    "deepseek-coder", r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[" + CJK_RANGES + "]+", r"\p{N}"
)
_DEEPSEEK_V3 = _spec(
    "deepseek-v3",
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_PORO = _spec("poro-chat", r" ?[^(\s|.,!?…。，、।۔،)]+")
_VIKING = _spec("viking", r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}")
_CHATGLM4 = _spec("chatglm-bpe", LLAMA3_PATTERN)
_GPT4O = _spec("gpt-4o", GPT4O_PATTERN)
_TEKKEN = _spec("tekken", TEKKEN_PATTERN, ignore_merges=True, default_add_bos=True)
_SEED_CODER = _spec("seed-coder", SEED_CODER_PATTERN)

# GGUF name -> spec; several names share one pattern list, exactly as in llama.cpp's table.
PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    "default": _DEFAULT,
    **dict.fromkeys(
        ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
         "mellum", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"],
        _GPT2,
    ),
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"], _LLAMA3
    ),
    **dict.fromkeys(["dbrx", "smaug-bpe"], _DBRX),
    **dict.fromkeys(
        ["qwen2", "deepseek-r1-qwen", "kormo", "megrez", "stablelm2", "hunyuan", "grok-2"], _QWEN2
    ),
    **dict.fromkeys(
        ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"], _STARCODER
    ),
    "falcon": _FALCON,
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _DEEPSEEK_CODER,
    **dict.fromkeys(["deepseek-v3", "hunyuan-dense"], _DEEPSEEK_V3),
    **dict.fromkeys(["poro-chat", "bloom", "gpt3-finnish"], _PORO),
    "viking": _VIKING,
    **dict.fromkeys(["glm4", "chatglm-bpe"], _CHATGLM4),
    **dict.fromkeys(["gpt-4o", "llama4", "minimax-m2"], _GPT4O),
    "tekken": _TEKKEN,
    "seed-coder": _SEED_CODER,
}

# A file without `tokenizer.ggml.pre` predates the key; llama.cpp reads it with the default list.
MISSING_PRE_NAME = "default"


def pre_tokenizer_spec(name: str | None) -> PreTokenizerSpec:
    """The spec for a `tokenizer.ggml.pre` value; None (key absent) means "default".
    Raises ValueError naming the supported values for anything else."""
    key = MISSING_PRE_NAME if name is None else name
    spec = PRE_TOKENIZERS.get(key)
    if spec is None:
        supported = ", ".join(sorted(PRE_TOKENIZERS))
        raise ValueError(f"unsupported tokenizer.ggml.pre {name!r}; supported: {supported}")
    return spec
