#!/usr/bin/env bash
# GPU baseline for docs/benchmarks.md ("CUDA (H100)"): cupyserve vs llama.cpp b11434 (CUDA, flash
# attention on) on a random-weight GGUF of a real shape, in one device-tool call.
#
# Device tool: kind nvidia-h100-x1, carry [".whl", ".llamacpp"] where .whl holds the wheels of
# benchmarks/gpu_env.sh and .llamacpp holds llama.cpp-cuda-sm90-b11434.tar.xz (from shared/tools):
#     bash benchmarks/cuda_baseline.sh [SHAPE]      (SHAPE default smollm2-135m-q4_1)
# Every piece has its own timeout, so a slow or failing piece loses only its own numbers.
# Outputs (logs + JSON) go to $OUT (default /tmp/cuda_baseline_out).
set -u
SHAPE=${1:-smollm2-135m-q4_1}
OUT=${OUT:-/tmp/cuda_baseline_out}
mkdir -p "$OUT"
. benchmarks/gpu_env.sh || exit 1
. benchmarks/llamacpp_env.sh || exit 1

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  nproc
  python3 -c 'import sys, numpy, cupy; print(sys.version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__)'
} 2>&1 | tee "$OUT/machine.txt"

M=/tmp/models/$SHAPE.gguf
mkdir -p /tmp/models
timeout 120 python3 benchmarks/make_random_gguf.py "$SHAPE" "$M" || exit 1
ls -l "$M"

echo "== llama-bench"
timeout 120 "$LLB/llama-bench" -m "$M" -ngl 99 -fa 1 -p 512 -n 128 -o md 2>>"$OUT/llama.err" \
  | tee "$OUT/llama-bench.md"; echo "rc=$?"
echo "== llama-batched-bench"
timeout 180 "$LLB/llama-batched-bench" -m "$M" -c 40000 -b 2048 -ub 512 -npp 128 -ntg 128 \
  -npl 1,16,64,256 -ngl 99 -fa on >"$OUT/llama-batched-bench.txt" 2>>"$OUT/llama.err"
echo "rc=$?"; grep '^|' "$OUT/llama-batched-bench.txt"

echo "== cupyserve bench offline (runtime/bench.py)"
timeout 170 python3 -c 'import sys; from cupyserve.runtime.bench import main; sys.exit(main(sys.argv[1:]))' \
  offline --model "$M" --device cuda --num-seqs 1,16,64,256 --prompt-len 128 --gen-len 128 \
  --json "$OUT/ours.json" >"$OUT/ours.log" 2>&1
echo "rc=$?"; grep -v '"event"' "$OUT/ours.log" | tail -20; grep -E 'bench_progress|"error"|Error' "$OUT/ours.log" | tail -8

echo "== cupyserve per-step breakdown (benchmarks/cuda_bench.py)"
timeout 200 python3 benchmarks/cuda_bench.py --model "$M" --num-seqs 1,16,64,256 \
  --prompt-len 128 --gen-len 128 --cap-s 25,25,40,70 --json "$OUT/ours_breakdown.json" \
  >"$OUT/ours_breakdown.log" 2>&1
echo "rc=$?"; grep -v '"event"' "$OUT/ours_breakdown.log" | tail -25
