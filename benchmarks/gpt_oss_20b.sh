#!/usr/bin/env bash
# gpt-oss-20b (random weights, the real 12.1 GB MXFP4 layout) on the GPU in one device-tool call:
# write the GGUF, llama.cpp b11434 (CUDA, flash attention on) llama-bench and
# llama-batched-bench, `cupyserve bench offline` at the same lengths, then the memory-cap test
# (tests/kernels/test_cuda_gpt_oss_memory_cap.py), for issue #6 and docs/benchmarks.md.
#
# Device tool: kind nvidia-h100-x1, carry [".whl", ".llamacpp"] (as benchmarks/cuda_compare.sh):
#     bash benchmarks/gpt_oss_20b.sh
# Every step has its own timeout, each cut to what is left of a 530 s budget, so the whole
# call stays under 9 minutes. Logs and JSON go to $OUT (default /tmp/gpt_oss_20b_out); the model
# to /tmp/models/gpt-oss-20b.gguf (kept if already there, so a second call skips the writing).
set -u
OUT=${OUT:-/tmp/gpt_oss_20b_out}
M=/tmp/models/gpt-oss-20b.gguf
mkdir -p "$OUT" /tmp/models
. benchmarks/budget_env.sh

. benchmarks/gpu_env.sh || exit 1
. benchmarks/llamacpp_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
df -h /tmp | tail -1 | tee -a "$OUT/machine.txt"

step "write $M"
if [ ! -s "$M" ]; then
  timeout "$(cap 150)" python3 benchmarks/make_gpt_oss_gguf.py gpt-oss-20b "$M.part" 2>&1 \
    | tee "$OUT/make_gguf.log" | tail -3
  # Renamed only when complete, so a killed write never leaves a truncated model behind.
  [ "${PIPESTATUS[0]}" -eq 0 ] && mv "$M.part" "$M" || { echo "writing the model failed"; rm -f "$M.part"; exit 1; }
fi
ls -l "$M"

step "llama-bench (pp512, tg128)"
timeout "$(cap 90)" "$LLB/llama-bench" -m "$M" -ngl 99 -fa 1 -p 512 -n 128 -o md 2>>"$OUT/llama.err" \
  | grep -E '^\| (model|.*(pp|tg))' | tee "$OUT/llama-bench.md"

step "llama-batched-bench (128+128 at 1/16/64/256)"
timeout "$(cap 120)" "$LLB/llama-batched-bench" -m "$M" -c 40000 -b 2048 -ub 512 -npp 128 -ntg 128 \
  -npl 1,16,64,256 -ngl 99 -fa on 2>>"$OUT/llama.err" | grep '^|' | tee "$OUT/llama-batched.md"

step "cupyserve bench offline (128+128 at 1/16/64/256)"
timeout "$(cap 180)" python3 -m cupyserve.server bench offline --model "$M" --device cuda \
  --num-seqs 1,16,64,256 --prompt-len 128 --gen-len 128 --max-model-len 4096 \
  --json "$OUT/ours.json" >"$OUT/ours.log" 2>&1
echo "ours rc=$?"; grep -v '"event"' "$OUT/ours.log" | tail -8; grep -E '"error"|Error' "$OUT/ours.log" | tail -5

step "memory-cap test"
CUPYSERVE_GPT_OSS_20B="$M" timeout "$(cap 150)" python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/kernels/test_cuda_gpt_oss_memory_cap.py >"$OUT/memory_cap_pytest.log" 2>&1
echo "pytest rc=$?"; grep -E 'passed|failed|skipped|Error|assert' "$OUT/memory_cap_pytest.log" | tail -12
step "done"
