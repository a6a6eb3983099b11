# Source this on the GPU machine (device tool) from the repository root: installs the carried
# wheels (.whl/, git-ignored: gguf, orjson, tokenizers, prometheus-client, pyyaml, jinja2, the
# server stack) into /tmp/site and makes `import cupyserve` resolve to this checkout.
#     . benchmarks/gpu_env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg/cupyserve
for d in server runtime kernels configs; do ln -sfn "$PWD/$d" "/tmp/pkg/cupyserve/$d"; done
export PYTHONPATH=/tmp/pkg:/tmp/site
export PYTHONUNBUFFERED=1
