# Source this on the GPU machine (device tool) from the repository root: unpacks llama.cpp's CUDA
# build (.llamacpp/llama.cpp-cuda-sm90-b11434.tar.xz, git-ignored, from shared/tools) and sets
# LLB to the folder holding llama-bench and llama-batched-bench.
#     . benchmarks/llamacpp_env.sh
LL=/tmp/llcpp
mkdir -p $LL && tar xJf .llamacpp/llama.cpp-cuda-sm90-b11434.tar.xz -C $LL || return 1
LLB=$LL/llama.cpp-cuda
