"""Tensor parallelism: sharding rules, quantized block slicing, the rank processes and their
collectives (docs/tensor_parallel.md)."""
