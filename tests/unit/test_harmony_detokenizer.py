"""A harmony (gpt-oss style) vocabulary through the engine's per-request output path: with
skip_special_tokens on (the default), the framing tokens still reach the text for the reasoning
parser, `<|return|>` ends generation without reaching it, and the parsed fields hold no framing."""
from __future__ import annotations

from cupyserve.runtime.byte_level_bpe import BYTE_TO_CHAR
from cupyserve.runtime.detokenizer import IncrementalDetokenizer, StopStringMatcher
from cupyserve.runtime.gguf_vocab import TokenType
from cupyserve.runtime.reasoning import HARMONY, HarmonyParser, ReasoningDelta, reasoning_format
from cupyserve.runtime.request_state import RequestState
from cupyserve.runtime.sampling_params import SamplingParams
from cupyserve.runtime.sequence import Sequence
from cupyserve.runtime.tokenizer import Tokenizer

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>",
            "<|constrain|>", "<|return|>", "<|call|>"]


def harmony_tokenizer() -> Tokenizer:
    """Bytes as single byte-level tokens (one merge, "hi") plus harmony's special tokens, all CONTROL as
    a gpt-oss GGUF declares them; the vocabulary rules decide what is rendered and what stops."""
    merged = BYTE_TO_CHAR[ord("h")] + BYTE_TO_CHAR[ord("i")]
    tokens = [BYTE_TO_CHAR[b] for b in range(256)] + [merged] + SPECIALS
    types = [int(TokenType.NORMAL)] * 257 + [int(TokenType.CONTROL)] * len(SPECIALS)
    ids = {t: i for i, t in enumerate(tokens)}
    return Tokenizer.from_gguf_metadata({
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["h i"],
        "tokenizer.ggml.bos_token_id": ids["<|startoftext|>"], "tokenizer.ggml.eos_token_id": ids["<|return|>"],
        "tokenizer.ggml.add_bos_token": False,
    })


def run_request(tokenizer: Tokenizer, ids: list[int], params: SamplingParams) -> tuple[str, str | None]:
    seq = Sequence(request_id="r", prompt_ids=[65], params=params)
    state = RequestState(seq=seq, detokenizer=IncrementalDetokenizer(tokenizer, params.skip_special_tokens),
                         stop_matcher=StopStringMatcher(params.stop), eos_ids=frozenset(tokenizer.eos_ids),
                         rng=None, max_model_len=4096)
    reason = None
    for token_id in ids:
        seq.output_ids.append(token_id)
        reason = state.on_token(token_id, None)
        if reason is not None:
            break
    return state.take_output().text, reason


def test_framing_tokens_reach_the_text_and_return_ends_generation():
    tokenizer = harmony_tokenizer()
    reply = ("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final"
             "<|message|>Answer.<|return|>")
    ids = tokenizer.encode(reply, add_special_tokens=False)
    return_id = tokenizer.encode("<|return|>", add_special_tokens=False)
    assert ids[-1:] == return_id and len(return_id) == 1
    assert return_id[0] in tokenizer.eos_ids
    assert tokenizer.encode("<|end|>", add_special_tokens=False)[0] not in tokenizer.eos_ids
    text, reason = run_request(tokenizer, ids + tokenizer.encode("junk", add_special_tokens=False),
                               SamplingParams(max_tokens=500, skip_special_tokens=True))
    assert reason == "stop"
    assert text == reply.removesuffix("<|return|>")
    parser = HarmonyParser()
    assert parser.feed(text) + parser.finish() == ReasoningDelta("Think.", "Answer.")


def test_other_control_tokens_are_still_skipped():
    tokenizer = harmony_tokenizer()
    ids = tokenizer.encode("<|startoftext|><|channel|>final<|message|>Hi", add_special_tokens=False)
    assert run_request(tokenizer, ids, SamplingParams(max_tokens=len(ids)))[0] == "<|channel|>final<|message|>Hi"


def test_the_vocabulary_selects_the_harmony_format():
    tokenizer = harmony_tokenizer()
    assert reasoning_format(tokenizer.chat_template, tokenizer.vocab.tokens) == HARMONY
