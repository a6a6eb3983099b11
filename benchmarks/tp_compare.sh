#!/usr/bin/env bash
# Tensor parallel on one multi-GPU machine (issue #7): cupyserve at TP=1/2/4 against llama.cpp
# b11434 (CUDA, flash attention on) with --split-mode none/layer/row, on a random-weight GGUF of
# a real layout, plus the device memory each GPU holds at each TP size.
#
# Device tool: kind nvidia-h100-x2 (or x4), carry [".whl", ".llamacpp"]:
#     bash benchmarks/tp_compare.sh llama3.1-8b-q4_k     (benchmarks/make_random_gguf.py shapes)
#     bash benchmarks/tp_compare.sh gpt-oss-20b           (benchmarks/make_gpt_oss_gguf.py)
# TP sizes: $TP_SIZES (default "1 2 4"), those above the GPU count skipped. Decode: 128-token
# prompts, 128 generated, at $NUM_SEQS concurrent sequences (default 1,16,64). Each step has its
# own timeout inside $BUDGET_S. Logs and JSON go to $OUT (default /tmp/tp_compare_out); the model
# to /tmp/models (kept if already there, so a second call skips the writing).
set -u
SHAPE=${1:?shape}
OUT=${OUT:-/tmp/tp_compare_out}
NUM_SEQS=${NUM_SEQS:-1,16,64}
M=/tmp/models/$SHAPE.gguf
mkdir -p "$OUT" /tmp/models
. benchmarks/budget_env.sh
. benchmarks/gpu_env.sh || exit 1
. benchmarks/llamacpp_env.sh || exit 1
NUM_GPUS=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
nvidia-smi topo -m >>"$OUT/machine.txt" 2>&1

step "write $M"
if [ ! -s "$M" ]; then
  if [ "$SHAPE" = gpt-oss-20b ]; then WRITER=benchmarks/make_gpt_oss_gguf.py; else WRITER=benchmarks/make_random_gguf.py; fi
  timeout "$(cap 200)" python3 "$WRITER" "$SHAPE" "$M.part" 2>&1 | tail -2
  [ "${PIPESTATUS[0]}" -eq 0 ] && mv "$M.part" "$M" || { echo "writing the model failed"; rm -f "$M.part"; exit 1; }
fi
ls -l "$M"

step "llama-bench pp512/tg128, split modes none/layer/row"
timeout "$(cap 150)" "$LLB/llama-bench" -m "$M" -ngl 99 -fa 1 -p 512 -n 128 -r 2 -sm none,layer,row \
  -o md 2>>"$OUT/llama.err" | grep -E '^\| (model|.*(pp|tg))' | tee "$OUT/$SHAPE.llama-bench.md"
for SM in none layer row; do
  step "llama-batched-bench -sm $SM (128+128 at $NUM_SEQS)"
  timeout "$(cap 90)" "$LLB/llama-batched-bench" -m "$M" -c 20000 -b 2048 -ub 512 -npp 128 -ntg 128 \
    -npl "$NUM_SEQS" -ngl 99 -fa on -sm "$SM" 2>>"$OUT/llama.err" | grep '^|' | tee "$OUT/$SHAPE.llama-batched-$SM.md"
done

for TP in ${TP_SIZES:-1 2 4}; do
  [ "$TP" -le "$NUM_GPUS" ] || continue
  step "cupyserve bench offline TP=$TP (128+128 at $NUM_SEQS)"
  timeout "$(cap 150)" python3 -m cupyserve.server bench offline --model "$M" --device cuda \
    --tensor-parallel-size "$TP" --num-seqs "$NUM_SEQS" --prompt-len 128 --gen-len 128 \
    --max-model-len 4096 --json "$OUT/$SHAPE.ours-tp$TP.json" >"$OUT/$SHAPE.ours-tp$TP.log" 2>&1
  echo "rc=$?"; grep -v '"event"' "$OUT/$SHAPE.ours-tp$TP.log" | tail -6
  grep -E '"error"|Error' "$OUT/$SHAPE.ours-tp$TP.log" | tail -3

  step "device memory per GPU at TP=$TP (server, --kv-cache-memory 1GiB)"
  python3 -m cupyserve.server serve --model "$M" --device cuda --tensor-parallel-size "$TP" --port 8123 \
    --max-model-len 4096 --kv-cache-memory 1GiB >"$OUT/$SHAPE.serve-tp$TP.log" 2>&1 &
  SERVER=$!
  for _ in $(seq "$(cap 120)"); do
    curl -sf http://127.0.0.1:8123/health >"$OUT/$SHAPE.health-tp$TP.json" 2>/dev/null && break
    kill -0 $SERVER 2>/dev/null || break
    sleep 1
  done
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader | tee "$OUT/$SHAPE.memory-tp$TP.csv"
  grep -o '"weight_bytes_per_rank":\[[0-9, ]*\]' "$OUT/$SHAPE.serve-tp$TP.log" | tee -a "$OUT/$SHAPE.memory-tp$TP.csv"
  kill -TERM $SERVER 2>/dev/null; wait $SERVER; echo "serve exit $?"
done
step "done"
