# Source this on the GPU machine (device tool) from the repository root: installs the carried
# wheels (.whl/, git-ignored: gguf, orjson, tokenizers, prometheus-client, pyyaml, jinja2, the
# server stack) into /tmp/site and makes `import cupyserve` resolve to this checkout.
#     . benchmarks/gpu_env.sh
# .whl-extra/ (optional, git-ignored): the openai client and its dependencies, for the e2e tests.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl $(ls .whl-extra/*.whl 2>/dev/null) || return 1
mkdir -p /tmp/pkg/cupyserve
for d in server runtime kernels configs; do ln -sfn "$PWD/$d" "/tmp/pkg/cupyserve/$d"; done
export PYTHONPATH=/tmp/pkg:/tmp/site
export PYTHONUNBUFFERED=1
