#!/usr/bin/env bash
# The GPU verification of a session, in stages that each fit one device-tool call (10 min).
#     bash benchmarks/gpu_verify.sh STAGE [STAGE ...]
# Stages (carry: always .whl; and what each names):
#   kernels   every tests/kernels GPU test that needs no model file, split over the visible GPUs
#             in parallel (2 GPUs: about 2 minutes)
#   stage-a   copy .devmodels/part_a (carry it) to /tmp/stage: the first half of the real SmolLM2
#   models    (carry .devmodels/part_b, .devmodels/shared/vocab; after stage-a on the same warm
#             machine) reassemble the real SmolLM2 into $CUPYSERVE_CACHE_DIR, then the model, graph,
#             fused-quantize and OOM tests on it, the decode kernel count, and the tensor-parallel
#             GPU tests (2 GPUs: TP=2 vs TP=1 on it and on the synthetic families, the server
#             fault tests)
#   fidelity  (carry .devmodels/shared with goldens/ and the vocab files, .whl-extra; after models)
#             the golden tests against llama.cpp and the e2e server tests on the CUDA backend
#             (CUPYSERVE_TEST_DEVICE=cuda) with the real SmolLM2
#   compare   (carry .llamacpp) the SmolLM2 shape against llama.cpp: benchmarks/cuda_compare.sh
#   tp-8b     (carry .llamacpp) benchmarks/tp_compare.sh llama3.1-8b-q4_k
#   tp-20b    (carry .llamacpp) benchmarks/tp_compare.sh gpt-oss-20b
# Logs go to $OUT (the device tool's output folder), summaries to stdout.
set -u
OUT=${OUT:-/tmp/gpu_verify_out}
mkdir -p "$OUT"
. benchmarks/gpu_env.sh || exit 1
export CUPYSERVE_CACHE_DIR=${CUPYSERVE_CACHE_DIR:-/tmp/cache} CUPYSERVE_VOCAB_DIR=$PWD/.devmodels/shared/vocab
SMOLLM2=$CUPYSERVE_CACHE_DIR/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
PYTEST="python3 -m pytest -q -p no:cacheprovider -rf --tb=short"
summary() { grep -v '"event"' "$1" | grep -E "^E |FAILED|cuda TP|passed|failed|error" | head -"${2:-20}"; }

for STAGE in "$@"; do
  echo "=== $STAGE"
  case $STAGE in
    kernels)
      NUM_GPUS=$(nvidia-smi -L | wc -l)
      mapfile -t FILES < <(ls tests/kernels/test_cuda_*.py | grep -v -E 'model|graphs|oom|memory|gpt_oss_memory')
      for ((g = 0; g < NUM_GPUS; g++)); do
        PART=()
        for ((i = g; i < ${#FILES[@]}; i += NUM_GPUS)); do PART+=("${FILES[$i]}"); done
        CUDA_VISIBLE_DEVICES=$g timeout 500 $PYTEST -m gpu "${PART[@]}" >"$OUT/kernels-gpu$g.log" 2>&1 &
      done
      wait
      for ((g = 0; g < NUM_GPUS; g++)); do summary "$OUT/kernels-gpu$g.log"; done ;;
    stage-a)
      mkdir -p /tmp/stage && cp .devmodels/part_a /tmp/stage/ && ls -l /tmp/stage ;;
    models)
      mkdir -p "$(dirname "$SMOLLM2")"
      cat /tmp/stage/part_a .devmodels/part_b >"$SMOLLM2" && sha256sum "$SMOLLM2"
      CUPYSERVE_TEST_GGUF=$SMOLLM2 timeout 200 $PYTEST -m gpu tests/kernels/test_cuda_model.py \
        tests/kernels/test_cuda_graphs.py tests/kernels/test_cuda_fused_quantize.py \
        tests/kernels/test_cuda_oom.py tests/kernels/test_cuda_memory.py >"$OUT/models.log" 2>&1
      summary "$OUT/models.log"
      timeout 60 python3 benchmarks/decode_kernel_count.py "$SMOLLM2" 2>&1 | grep -v '"event"' | tail -12
      if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
        timeout 200 $PYTEST -m gpu -s tests/unit/test_tensor_parallel_gpu.py \
          tests/unit/test_tensor_parallel_experts.py >"$OUT/tp.log" 2>&1
        summary "$OUT/tp.log"
        CUPYSERVE_TEST_DEVICE=cuda timeout 100 $PYTEST tests/unit/test_tensor_parallel_server.py >"$OUT/tp-server.log" 2>&1
        summary "$OUT/tp-server.log"
      fi ;;
    fidelity)
      CUPYSERVE_SHARED_DIR=$PWD/.devmodels/shared CUPYSERVE_TEST_DEVICE=cuda timeout 480 \
        $PYTEST tests/goldens tests/e2e >"$OUT/fidelity.log" 2>&1
      summary "$OUT/fidelity.log" 40 ;;
    compare)
      OUT=$OUT/compare timeout 200 bash benchmarks/cuda_compare.sh smollm2-135m-q4_1 2>&1 | tail -24 ;;
    tp-8b)
      NUM_SEQS=1,16,64 TP_SIZES="1 2 4" OUT=$OUT/tp-8b BUDGET_S=520 timeout 540 \
        bash benchmarks/tp_compare.sh llama3.1-8b-q4_k 2>&1 | tail -50 ;;
    tp-20b)
      NUM_SEQS=1,16,64 TP_SIZES="1 2 4" OUT=$OUT/tp-20b BUDGET_S=520 timeout 540 \
        bash benchmarks/tp_compare.sh gpt-oss-20b 2>&1 | tail -50 ;;
    *) echo "unknown stage $STAGE (kernels, stage-a, models, fidelity, compare, tp-8b, tp-20b)"; exit 2 ;;
  esac
done
