#!/usr/bin/env bash
# cupyserve vs llama.cpp b11434 (CUDA, flash attention on) on random-weight GGUFs of real shapes,
# side by side in one device-tool call, for docs/benchmarks.md.
#
# Device tool: kind nvidia-h100-x1, carry [".whl", ".llamacpp"] (.whl: the wheels of
# benchmarks/gpu_env.sh; .llamacpp: llama.cpp-cuda-sm90-b11434.tar.xz from shared/tools):
#     bash benchmarks/cuda_compare.sh [SHAPE ...]   (default: the three shapes of issue #4)
# Per shape: llama-bench (pp512, tg128), llama-batched-bench (128+128 at 1/16/64/256), then
# `cupyserve bench offline` (same prompts/lengths, CUDA graphs on) and a 512-token prefill.
# Every piece has its own timeout. Logs and JSON go to $OUT (default /tmp/cuda_compare_out).
set -u
OUT=${OUT:-/tmp/cuda_compare_out}
mkdir -p "$OUT" /tmp/models
. benchmarks/gpu_env.sh || exit 1
. benchmarks/llamacpp_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
SHAPES=${*:-smollm2-135m-q4_1 qwen2.5-0.5b-q4_k llama3.2-1b-q4_k}
for SHAPE in $SHAPES; do
  M=/tmp/models/$SHAPE.gguf
  timeout 200 python3 benchmarks/make_random_gguf.py "$SHAPE" "$M" >/dev/null || continue
  echo "=== $SHAPE"
  timeout 100 "$LLB/llama-bench" -m "$M" -ngl 99 -fa 1 -p 512 -n 128 -o md 2>>"$OUT/llama.err" \
    | grep -E '^\| (model|.*(pp|tg))' | tee "$OUT/$SHAPE.llama-bench.md"
  timeout 150 "$LLB/llama-batched-bench" -m "$M" -c 40000 -b 2048 -ub 512 -npp 128 -ntg 128 \
    -npl 1,16,64,256 -ngl 99 -fa on 2>>"$OUT/llama.err" | grep '^|' | tee "$OUT/$SHAPE.llama-batched.md"
  timeout 150 python3 -m cupyserve.server bench offline --model "$M" --device cuda --num-seqs 1,16,64,256 --prompt-len 128 \
    --gen-len 128 --max-model-len 4096 --json "$OUT/$SHAPE.ours.json" >"$OUT/$SHAPE.ours.log" 2>&1
  echo "ours rc=$?"; grep -v '"event"' "$OUT/$SHAPE.ours.log" | tail -6
  timeout 100 python3 -m cupyserve.server bench offline --model "$M" --device cuda --num-seqs 1 --prompt-len 512 --gen-len 2 \
    --max-model-len 4096 --json "$OUT/$SHAPE.ours-pp512.json" >"$OUT/$SHAPE.ours-pp512.log" 2>&1
  echo "ours pp512 rc=$?"; grep -v '"event"' "$OUT/$SHAPE.ours-pp512.log" | tail -2
done
