"""NumPy reference kernels: the specification the CUDA kernels in `kernels/cuda/` are tested against."""
