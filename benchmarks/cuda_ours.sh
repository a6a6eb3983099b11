#!/usr/bin/env bash
# cupyserve alone on the GPU (no llama.cpp): the offline benchmark and the per-step breakdown of
# benchmarks/cuda_baseline.sh on a random-weight GGUF of SHAPE, for comparing a change against
# the llama.cpp numbers already recorded in docs/benchmarks.md ("CUDA (H100)").
#
# Device tool: kind nvidia-h100-x1, carry [".whl"] (the wheels of benchmarks/gpu_env.sh):
#     bash benchmarks/cuda_ours.sh [SHAPE]
# Outputs (logs + JSON) go to $OUT (default /tmp/cuda_ours_out).
set -u
SHAPE=${1:-smollm2-135m-q4_1}
OUT=${OUT:-/tmp/cuda_ours_out}
mkdir -p "$OUT"
. benchmarks/gpu_env.sh || exit 1
M=/tmp/models/$SHAPE.gguf
mkdir -p /tmp/models
timeout 120 python3 benchmarks/make_random_gguf.py "$SHAPE" "$M" || exit 1

echo "== cupyserve bench offline (runtime/bench.py)"
timeout 150 python3 -c 'import sys; from cupyserve.runtime.bench import main; sys.exit(main(sys.argv[1:]))' \
  offline --model "$M" --device cuda --num-seqs 1,16,64,256 --prompt-len 128 --gen-len 128 \
  --json "$OUT/ours.json" >"$OUT/ours.log" 2>&1
echo "rc=$?"; grep -v '"event"' "$OUT/ours.log" | tail -12; grep -E '"error"|Error' "$OUT/ours.log" | tail -5

echo "== cupyserve per-step breakdown (benchmarks/cuda_bench.py)"
timeout 150 python3 benchmarks/cuda_bench.py --model "$M" --num-seqs 1,16,64,256 \
  --prompt-len 128 --gen-len 128 --cap-s 25,25,40,70 --json "$OUT/ours_breakdown.json" \
  >"$OUT/ours_breakdown.log" 2>&1
echo "rc=$?"; grep -v '"event"' "$OUT/ours_breakdown.log" | tail -25
