"""CUDA `moe_ffn` and the `expert_range` argument of expert parallelism: the whole range is the
default op bit for bit; a sub-range is refused with NotImplementedError (only the NumPy backend
computes one: docs/tensor_parallel.md). Skipped without CuPy or a GPU."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from quant_samples import random_weight

pytestmark = pytest.mark.gpu

NUM_EXPERTS, HIDDEN, FFN, K = 4, 64, 32, 2


def layer_args(cuda_ops, num_tokens: int, num_local_experts: int = NUM_EXPERTS):
    """moe_ffn's arguments before k: router logits over all experts, tensors holding the first
    `num_local_experts`."""
    import cupy

    rng = np.random.default_rng(11)
    args = [cupy.asarray(rng.standard_normal((num_tokens, HIDDEN)).astype(np.float32)),
            cupy.asarray(rng.standard_normal((num_tokens, NUM_EXPERTS)).astype(np.float32))]
    for rows, cols in ((FFN, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)):
        raw = random_weight(T.MXFP4, num_local_experts * rows, cols, rng)
        bias = (rng.standard_normal((num_local_experts, rows)) * 0.3).astype(np.float32)
        args += [cuda_ops.load_experts(raw, T.MXFP4, num_local_experts, rows, cols),
                 cupy.asarray(bias)]
    return args


@pytest.mark.parametrize("num_tokens", [3, 40])  # the GEMV and the grouped path
def test_whole_expert_range_is_the_default_op(cuda_ops, num_tokens: int) -> None:
    import cupy

    args = layer_args(cuda_ops, num_tokens)
    default = cupy.asnumpy(cuda_ops.moe_ffn(*args, K))
    ranged = cupy.asnumpy(cuda_ops.moe_ffn(*args, K, expert_range=(0, NUM_EXPERTS)))
    assert np.all(np.isfinite(default))
    np.testing.assert_array_equal(ranged, default)


def test_expert_sub_range_is_refused_on_cuda(cuda_ops) -> None:
    args = layer_args(cuda_ops, 3, num_local_experts=2)
    with pytest.raises(NotImplementedError, match="NumPy backend only"):
        cuda_ops.moe_ffn(*args, K, expert_range=(2, 4))
