#!/usr/bin/env bash
# One device-tool call (carry .whl, .whl-extra, .llamacpp): the GEMV/MoE GPU tests, gpt-oss-20b
# `bench offline` at 1/16/64 sequences beside llama-bench tg128 and llama-batched-bench, `bench
# serving` on the SmolLM2 shape, and the batch-1 decode trace. Logs in $OUT, packed in one tar.
#     BUDGET_S=230 bash benchmarks/gpt_oss_compare.sh
set -u
BUDGET_S=${BUDGET_S:-240}
. benchmarks/budget_env.sh
. benchmarks/gpu_env.sh || exit 1
. benchmarks/llamacpp_env.sh || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/machine.txt
G=/tmp/models/gpt-oss-20b.gguf; mkdir -p /tmp/models
( timeout 100 python3 benchmarks/make_gpt_oss_gguf.py gpt-oss-20b $G > $OUT/make_oss.log 2>&1 || echo make-oss-fail ) &
BENCH="python3 -m cupyserve.server bench offline --device cuda --prompt-len 128 --gen-len 128 --max-model-len 4096"
step tests
timeout $(cap 90) python3 -m pytest -q -p no:cacheprovider -rf --tb=short -m gpu tests/kernels/test_cuda_linear.py tests/kernels/test_cuda_moe.py tests/kernels/test_cuda_moe_expert_range.py tests/kernels/test_cuda_gemv_fused.py > $OUT/tests.log 2>&1; echo tests rc=$?; grep -E "^E |FAILED|passed|failed" $OUT/tests.log | head -16 | cut -c1-250
wait
step gpt-oss
timeout $(cap 50) $BENCH --model $G --num-seqs 1,16,64 --json $OUT/oss.ours.json > $OUT/oss.ours.log 2>&1; echo ours rc=$?; grep -v '"event"' $OUT/oss.ours.log | tail -4
timeout $(cap 30) $LLB/llama-bench -m $G -ngl 99 -fa 1 -p 0 -n 128 -r 3 2>/dev/null | grep "^|" | tee $OUT/oss.llama-bench.md
step serving
S=/tmp/models/smollm2.gguf; timeout 30 python3 benchmarks/make_random_gguf.py smollm2-135m-q4_1 $S >/dev/null || echo makefail
python3 -m cupyserve.server serve --model $S --device cuda --port 8123 --max-model-len 4096 > $OUT/serve.log 2>&1 &
SP=$!; python3 -c "
import time, urllib.request
for _ in range(90):
    try:
        urllib.request.urlopen('http://127.0.0.1:8123/health', timeout=1); break
    except Exception: time.sleep(1)
" 
timeout $(cap 45) python3 -m cupyserve.server bench serving --url http://127.0.0.1:8123 --concurrency 1,16,64 --num-requests 64 --prompt-len 128 --gen-len 64 --json $OUT/serving.json > $OUT/serving.log 2>&1; echo serving rc=$?; grep -v '"event"' $OUT/serving.log | tail -5 | cut -c1-200
kill $SP; wait $SP 2>/dev/null
timeout $(cap 30) $LLB/llama-batched-bench -m $G -c 20000 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 16,64 -ngl 99 -fa on 2>/dev/null | grep '^|' | tee $OUT/oss.llama-batched.md
step trace1
timeout $(cap 40) python3 benchmarks/decode_trace.py $G --num-seqs 1 --json $OUT/oss.trace1.json > $OUT/oss.trace1.log 2>&1; echo trace rc=$?
grep -v '"event"' $OUT/oss.trace1.log | grep -v -i warn | head -12 | cut -c1-160
step done
( cd $OUT && tar czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/ )
